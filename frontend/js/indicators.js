// IndicatorLayer: the server-computed indicators of one chart. Each indicator is a catalogue
// entry (search_indicators) with its inputs; it is drawn as one line per output, on the
// price pane when every output is on the `price` axis (an overlay), else in a pane of its
// own below (lightweight-charts 5 panes). It is requested (`indicator`, streamed) after each
// data_init of the chart's series, so also after a reconnect or a symbol change, with the
// range of the chart's bars; scroll-back asks `indicator_history` for the older page. The
// chips above the chart name each indicator and edit or remove it.

import { LineSeries } from "../vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import { formatDate, parseDate } from "./bars.js";
import { element, keepFocus } from "./dom.js";

const COLORS = ["#2962ff", "#e91e63", "#00bcd4", "#ff9800", "#9c27b0", "#4caf50", "#795548"];
const INIT_COUNT = 300;

const MAX_KEY = 96; // an indicator's request id: the server quotes no longer one whole

/** A 53-bit hash of `text` in hex (at most 14 characters; cyrb53). */
function hash(text) {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(16);
}

const numberOrNull = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** The defaults of a catalogue entry's inputs: {name: value}. */
export function defaultInputs(def) {
  const inputs = {};
  for (const input of def?.details?.inputs || []) inputs[input.name] = input.default?.[0];
  return inputs;
}

/** A short label: the entry's short name (the id's last part) and its input values. */
export function indicatorLabel(id, inputs) {
  const short = id.split(".").pop();
  const values = Object.values(inputs || {}).filter((v) => v !== undefined && v !== null);
  return values.length ? `${short} ${values.join(" ")}` : short;
}

/** Whether an entry draws on the price pane (every output on the `price` axis). */
export function isOverlay(def) {
  const outputs = def?.details?.outputs || [];
  return outputs.length > 0 && outputs.every((o) => o.y_axis === "price");
}

class Instance {
  constructor(id, inputs, color) {
    this.id = id; // the catalogue id, e.g. talib.momentum.RSI
    this.inputs = inputs;
    this.color = color;
    this.def = null; // the catalogue entry, once known
    this.key = null; // the chart id of the current request
    this.series = new Map(); // output name -> ISeriesApi
    this.points = new Map(); // output name -> [{time, value?}]
    this.error = null;
    this.received = 0; // replies so far (init, updates, history)
  }

  get label() {
    return indicatorLabel(this.id, this.inputs);
  }
}

export class IndicatorLayer {
  constructor({ panel, feed, host, onChange, onEdit }) {
    this.panel = panel;
    this.feed = feed;
    this.onChange = onChange;
    this.onEdit = onEdit;
    this.list = [];
    this.colorIndex = 0;
    this.chipsEl = element("div", "indicator-chips", host);
    this.defs = new Map(); // catalogue id -> entry (shared lookups)
  }

  get chart() {
    return this.panel.chart;
  }

  /** What the URL keeps: [{id, inputs}]. */
  saved() {
    return this.list.map((i) => ({ id: i.id, inputs: { ...i.inputs } }));
  }

  /** Add an indicator: `def` (a catalogue entry) or just its `id` (looked up). */
  add(idOrDef, inputs = null) {
    const def = typeof idOrDef === "object" ? idOrDef : null;
    const id = def ? def.id : idOrDef;
    const instance = new Instance(id, inputs || defaultInputs(def), this.nextColor());
    this.list.push(instance);
    if (def) this.defined(instance, def);
    else this.lookup(instance);
    this.renderChips();
    this.onChange();
    return instance;
  }

  nextColor() {
    const color = COLORS[this.colorIndex % COLORS.length];
    this.colorIndex += 1;
    return color;
  }

  async lookup(instance) {
    const known = this.defs.get(instance.id);
    if (known) {
      this.defined(instance, known);
      return;
    }
    const rows = await this.feed.searchIndicators(instance.id);
    if (!this.list.includes(instance)) return;
    const def = (rows || []).find((r) => r.id === instance.id);
    if (def) this.defined(instance, def);
    else if (rows === null) this.retryOnOpen(instance);
    else instance.error = `unknown indicator ${instance.id}`;
    this.renderChips();
  }

  retryOnOpen(instance) {
    const again = () => {
      this.feed.connection.removeEventListener("open", again);
      if (this.list.includes(instance) && !instance.def) this.lookup(instance);
    };
    this.feed.connection.addEventListener("open", again);
  }

  defined(instance, def) {
    this.defs.set(def.id, def);
    instance.def = def;
    const inputs = { ...defaultInputs(def), ...instance.inputs };
    for (const name of Object.keys(inputs)) {
      if (!def.details?.inputs?.some((i) => i.name === name)) delete inputs[name];
    }
    instance.inputs = inputs;
    this.request(instance);
  }

  /** Replace the inputs of `instance` (the edit dialog). */
  edit(instance, inputs) {
    if (!this.list.includes(instance)) return;
    this.stop(instance);
    instance.inputs = { ...inputs };
    instance.error = null;
    this.request(instance);
    this.renderChips();
    this.onChange();
  }

  remove(instance) {
    this.stop(instance);
    this.list = this.list.filter((i) => i !== instance);
    this.renderChips();
    this.onChange();
  }

  /** Remove the series of every indicator (the chart's own series are being rebuilt). */
  clear() {
    for (const instance of this.list) this.stop(instance);
  }

  destroy() {
    this.clear();
    this.chipsEl.remove();
  }

  stop(instance) {
    if (instance.key) this.feed.dropIndicator(instance.key);
    instance.key = null;
    this.removeSeries(instance);
  }

  /** Take the instance's lines off the chart (a failed one keeps its chip, not a pane). */
  removeSeries(instance) {
    for (const series of instance.series.values()) this.chart.removeSeries(series);
    instance.series.clear();
    instance.points.clear();
    this.dropEmptyPanes();
    this.sizePanes();
  }

  dropEmptyPanes() {
    const panes = this.chart.panes();
    for (let i = panes.length - 1; i > 0; i -= 1) {
      if (!panes[i].getSeries().length) this.chart.removePane(i);
    }
  }

  // ---------------------------------------------------------------- requests

  /** Ask again for every indicator (after a data_init of the chart's series). */
  requestAll() {
    for (const instance of this.list) if (instance.def) this.request(instance);
  }

  dataMap() {
    const { source, name, interval, kind } = this.panel;
    const base = `${source}-${name}-${interval}`;
    const map = {};
    for (const column of ["open", "high", "low", "close", "volume"]) {
      map[column] = {
        source, name, interval, value: kind === "line" ? base : `${base}-${column}`, dataKey: column,
      };
    }
    return map;
  }

  chartKey(instance) {
    const { source, name, interval } = this.panel;
    const inputs = Object.entries(instance.inputs).map(([k, v]) => `${k}-${v}`).join("_");
    // The chart's index keeps two charts of the grid with the same indicator apart.
    const key = `${instance.id.replace(/\./g, "-")}_${inputs}_${source}-${name}-${interval}`
      + `_chart-${this.panel.index + 1}`;
    // A long one (long inputs or names) is cut and made unique by its hash: the server
    // refuses an id over 1,000 characters, and quotes one over 96 clipped in an error, which
    // then reached no chip (it stayed empty without a word).
    return key.length <= MAX_KEY ? key : `${key.slice(0, MAX_KEY - 15)}~${hash(key)}`;
  }

  request(instance) {
    const { bars, source } = this.panel;
    if (!source || !instance.def || !bars.length) return;
    const columns = instance.def.details?.columns || ["close"];
    const all = this.dataMap();
    const dataMap = Object.fromEntries(columns.map((c) => [c, all[c] || all.close]));
    const key = this.chartKey(instance);
    if (instance.key && instance.key !== key) this.feed.dropIndicator(instance.key);
    instance.key = key;
    instance.error = null;
    const range = [formatDate(bars[0].time), formatDate(bars[bars.length - 1].time)];
    this.feed.indicator({
      type: "indicator",
      id: key,
      indicator: { id: instance.id, type: "indicator" },
      inputs: instance.inputs,
      dataMap,
      range,
      count: Math.max(INIT_COUNT, bars.length),
      stream: true,
    }, this.consumer(instance, key, dataMap));
  }

  /** Older values for the bars scroll-back just added (`oldest` was the first bar before). */
  requestHistory(oldest) {
    const { bars } = this.panel;
    for (const instance of this.list) {
      if (!instance.key || !instance.def) continue;
      const columns = instance.def.details?.columns || ["close"];
      const all = this.dataMap();
      this.feed.enqueue({
        type: "indicator_history",
        id: instance.key,
        indicator: { id: instance.id, type: "indicator" },
        inputs: instance.inputs,
        dataMap: Object.fromEntries(columns.map((c) => [c, all[c] || all.close])),
        range: [formatDate(bars[0].time), formatDate(oldest)],
        end: formatDate(oldest),
      });
    }
  }

  consumer(instance, key) {
    const current = () => instance.key === key && this.list.includes(instance);
    return {
      onInit: (m) => { if (current()) this.onInit(instance, m); },
      onUpdate: (m) => { if (current()) this.onUpdate(instance, m); },
      onHistory: (m) => { if (current()) this.onHistory(instance, m); },
      onError: (m) => {
        if (!current()) return;
        instance.error = m.message || m.code;
        this.removeSeries(instance);
        this.renderChips();
      },
    };
  }

  // ---------------------------------------------------------------- replies

  outputNames(instance, rows) {
    const names = (instance.def.details?.outputs || []).map((o) => o.name);
    if (names.length) return names;
    const prefix = `${instance.key}-`;
    return Object.keys(rows[0] || {}).filter((k) => k.startsWith(prefix))
      .map((k) => k.slice(prefix.length));
  }

  pointsOf(instance, rows, output) {
    const field = `${instance.key}-${output}`;
    const points = [];
    for (const row of rows || []) {
      const time = typeof row?.date === "string" ? parseDate(row.date) : null;
      if (time === null) continue;
      const value = numberOrNull(row[field]);
      points.push(value === null ? { time } : { time, value });
    }
    return points.sort((a, b) => a.time - b.time);
  }

  ensureSeries(instance, output, index) {
    let series = instance.series.get(output);
    if (series) return series;
    const overlay = isOverlay(instance.def);
    const pane = overlay ? 0 : this.paneOf(instance);
    series = this.chart.addSeries(LineSeries, {
      color: index === 0 ? instance.color : COLORS[(COLORS.indexOf(instance.color) + index * 2)
        % COLORS.length],
      lineWidth: 2,
      priceLineVisible: false,
      lastValueVisible: !overlay,
      crosshairMarkerVisible: false,
      title: overlay ? "" : output,
    }, pane);
    if (!overlay) {
      // A new pane's scale starts from the chart's last "right" scale options, which the
      // price pane's log or percent mode and volume margin set: an oscillator's is linear.
      series.priceScale().applyOptions({ mode: 0, scaleMargins: { top: 0.1, bottom: 0.1 } });
    }
    instance.series.set(output, series);
    return series;
  }

  /** The pane of an oscillator: the one its first series is in, else a new one. */
  paneOf(instance) {
    const first = instance.series.values().next().value;
    if (first) return first.getPane().paneIndex();
    return this.chart.panes().length;
  }

  onInit(instance, message) {
    instance.received += 1;
    const rows = Array.isArray(message.data) ? message.data : [];
    if (!rows.length && instance.error) {
      // the empty reply of a refusal (its error came first): no blank pane for it
      this.removeSeries(instance);
      this.renderChips();
      this.onChange();
      return;
    }
    this.outputNames(instance, rows).forEach((output, i) => {
      const points = this.pointsOf(instance, rows, output);
      instance.points.set(output, points);
      this.ensureSeries(instance, output, i).setData(this.panel.toChartAll(points));
    });
    this.sizePanes();
    this.renderChips();
    this.onChange();
  }

  onUpdate(instance, message) {
    const row = message.data;
    if (!row || typeof row.date !== "string") return;
    instance.received += 1;
    const time = parseDate(row.date);
    for (const [output, series] of instance.series) {
      const points = instance.points.get(output) || [];
      const last = points[points.length - 1];
      if (time === null || (last && time < last.time)) continue;
      const value = numberOrNull(row[`${instance.key}-${output}`]);
      const point = value === null ? { time } : { time, value };
      if (last && last.time === time) points[points.length - 1] = point;
      else points.push(point);
      series.update(this.panel.toChart(point));
    }
  }

  onHistory(instance, message) {
    instance.received += 1;
    const rows = Array.isArray(message.data) ? message.data : [];
    for (const [output, series] of instance.series) {
      const points = instance.points.get(output) || [];
      const first = points.length ? points[0].time : Infinity;
      const older = this.pointsOf(instance, rows, output).filter((p) => p.time < first);
      if (!older.length) continue;
      const merged = older.concat(points);
      instance.points.set(output, merged);
      series.setData(this.panel.toChartAll(merged));
    }
  }

  /** Drop the values older than `time` (the chart dropped its bars before it). */
  dropBefore(time) {
    for (const instance of this.list) {
      for (const [output, series] of instance.series) {
        const points = instance.points.get(output) || [];
        const kept = points.filter((p) => p.time >= time);
        if (kept.length === points.length) continue;
        instance.points.set(output, kept);
        series.setData(this.panel.toChartAll(kept));
      }
    }
  }

  /** Give every series its points again (the chart's times changed: another zone). */
  redraw() {
    for (const instance of this.list) {
      for (const [output, series] of instance.series) {
        series.setData(this.panel.toChartAll(instance.points.get(output) || []));
      }
    }
  }

  /** Oscillator panes a quarter of the price pane's height each. */
  sizePanes() {
    const panes = this.chart.panes();
    if (panes.length < 2) return;
    panes[0].setStretchFactor(3);
    for (let i = 1; i < panes.length; i += 1) panes[i].setStretchFactor(1);
  }

  // ---------------------------------------------------------------- chips

  renderChips() {
    // A chip's ✎ or × used from the keyboard: it stays on the chips (keepFocus), or goes
    // to the Indicators button once no chip is left.
    keepFocus(this.chipsEl, "button", () => {
      const chips = this.list.map((instance) => this.chip(instance));
      this.chipsEl.replaceChildren(...chips);
      this.chipsEl.hidden = !chips.length;
    }, document.getElementById("indicator-button"));
  }

  chip(instance) {
    const chip = element("span", "indicator-chip");
    chip.dataset.id = instance.id;
    const swatch = element("span", "indicator-swatch", chip);
    swatch.style.background = instance.color;
    const name = element("span", "indicator-name", chip, instance.label);
    name.title = instance.def?.name || instance.id;
    if (instance.error) {
      const problem = element("span", "indicator-error", chip, "!");
      problem.title = instance.error;
      chip.classList.add("failed");
    }
    chip.append(this.button("✎", `Edit ${instance.label}`, "indicator-edit",
      () => this.onEdit(instance)));
    chip.append(this.button("×", `Remove ${instance.label}`, "indicator-remove",
      () => this.remove(instance)));
    return chip;
  }

  button(text, title, className, onClick) {
    const button = element("button", className, null, text);
    button.type = "button";
    button.title = title;
    button.setAttribute("aria-label", title);
    button.addEventListener("click", (e) => {
      e.stopPropagation();
      onClick();
    });
    return button;
  }
}
