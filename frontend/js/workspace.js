// Workspace: the chart grid. One chart or a 2x2 grid of independent ChartPanels (each with
// its own symbol, interval, chart type, price scale and compared symbol, all on the one
// shared Feed), which one is active, and what each shows; it remembers the charts hidden by
// the one-chart layout for when the grid comes back (indicators included). It owns the clock that moves the
// countdowns of the chart headers.

import { ChartPanel } from "./chart.js";

const CLOCK_MS = 1000;

const viewOf = (p) => ({
  source: p.source,
  name: p.name,
  interval: p.interval,
  type: p.chartType,
  scale: p.scale,
  compare: p.compareWanted ? { source: p.compareWanted.source, name: p.compareWanted.name } : null,
  indicators: p.indicators.saved(),
});

export class Workspace extends EventTarget {
  constructor({ grid, feed, quotes, theme, zone, layout, active, charts }) {
    super();
    this.grid = grid;
    this.feed = feed;
    this.quotes = quotes;
    this.theme = theme;
    this.zone = zone;
    this.layout = layout;
    this.wanted = charts.slice(); // per chart: {source, name, interval} | null
    this.panels = [];
    this.activeIndex = 0;
    this.setLayout(layout);
    this.activate(active);
    this.clock = setInterval(() => this.tick(), CLOCK_MS);
  }

  tick() {
    const now = Date.now() / 1000;
    for (const p of this.panels) p.tickClock(now);
  }

  get active() {
    return this.panels[this.activeIndex];
  }

  /** What each chart shows (hidden charts keep what they showed). */
  get charts() {
    return this.wanted.map((w, i) => {
      const p = this.panels[i];
      return p && p.source ? viewOf(p) : w;
    });
  }

  setLayout(layout) {
    this.wanted = this.charts;
    this.layout = layout === 4 ? 4 : 1;
    while (this.panels.length > this.layout) this.panels.pop().destroy();
    while (this.panels.length < this.layout) this.addPanel();
    this.grid.dataset.layout = String(this.layout);
    if (this.activeIndex >= this.layout) this.activate(0);
    for (const p of this.panels) p.toLatest(); // a new layout starts at the newest bars
    this.emit("change");
  }

  addPanel() {
    const index = this.panels.length;
    const panel = new ChartPanel({
      index, feed: this.feed, quotes: this.quotes, theme: this.theme, zone: this.zone,
    });
    panel.addEventListener("activate", () => this.activate(panel.index));
    panel.addEventListener("indicator-edit", (e) => this.dispatchEvent(
      new CustomEvent("indicator-edit", { detail: { panel, instance: e.detail } })));
    for (const type of ["change", "tick", "data"]) {
      panel.addEventListener(type, () => this.dispatchEvent(
        new CustomEvent(`panel-${type}`, { detail: panel })));
    }
    this.panels.push(panel);
    this.grid.append(panel.el);
    const wanted = this.wanted[index];
    if (wanted?.type) panel.chartType = wanted.type;
    // A compare without a scale of its own is on the percent scale, as when picked.
    const scale = wanted?.scale || (wanted?.compare ? "percent" : null);
    if (scale) panel.setScale(scale);
    if (wanted?.compare) panel.compareWanted = { ...wanted.compare, details: null };
    for (const ind of wanted?.indicators || []) panel.indicators.add(ind.id, ind.inputs);
    if (wanted && wanted.source && wanted.interval) {
      panel.open(wanted.source, wanted.name, wanted.interval);
    }
  }

  activate(index) {
    const i = Math.min(Math.max(index, 0), this.panels.length - 1);
    const changed = i !== this.activeIndex;
    this.activeIndex = i;
    this.panels.forEach((p) => p.setActive(this.layout > 1 && p.index === i));
    if (changed) this.emit("active");
    this.emit("change");
  }

  setTheme(theme) {
    this.theme = theme;
    for (const p of this.panels) p.setTheme(theme);
  }

  setZone(zone) {
    this.zone = zone;
    for (const p of this.panels) p.setZone(zone);
  }

  /** Panels with nothing to show (no usable symbol in the URL). */
  emptyPanels() {
    return this.panels.filter((p) => !p.source);
  }

  emit(type) {
    this.dispatchEvent(new Event(type));
  }
}
