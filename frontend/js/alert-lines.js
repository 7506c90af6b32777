// AlertLines: each active "price crosses level" alert drawn as a dashed price line on every
// chart showing its symbol (at any interval: a level is a price). Lines belong to a chart's
// main series; when the chart makes a new series (new symbol, chart type, reload), the
// lines are drawn again on it.

import { LineStyle } from "../vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import { crossLevel } from "./alerts.js";

const COLOR = "#f5a524";

export class AlertLines {
  constructor(book, workspace) {
    this.book = book;
    this.workspace = workspace;
    this.drawn = new Map(); // panel -> {series, signature, lines: [{id, level, line}]}
    book.addEventListener("change", () => this.sync());
    for (const type of ["change", "panel-change", "panel-data", "panel-tick"]) {
      workspace.addEventListener(type, () => this.sync());
    }
  }

  wanted(panel) {
    return this.book.items
      .map((alert) => ({ alert, cross: crossLevel(alert) }))
      .filter(({ cross }) => cross && cross.source === panel.source && cross.name === panel.name)
      .map(({ alert, cross }) => ({ id: alert.id, level: cross.level }));
  }

  sync() {
    for (const panel of [...this.drawn.keys()]) {
      if (!this.workspace.panels.includes(panel)) this.drawn.delete(panel);
    }
    for (const panel of this.workspace.panels) this.syncPanel(panel);
  }

  syncPanel(panel) {
    const wanted = panel.series ? this.wanted(panel) : [];
    const signature = JSON.stringify(wanted);
    const drawn = this.drawn.get(panel);
    if (drawn && drawn.series === panel.series && drawn.signature === signature) return;
    if (drawn && drawn.series === panel.series) {
      for (const { line } of drawn.lines) panel.series.removePriceLine(line);
    }
    if (!panel.series) {
      this.drawn.delete(panel);
      return;
    }
    const lines = wanted.map(({ id, level }) => ({
      id,
      level,
      line: panel.series.createPriceLine({
        price: level, color: COLOR, lineWidth: 1, lineStyle: LineStyle.Dashed,
        axisLabelVisible: true, title: "alert",
      }),
    }));
    this.drawn.set(panel, { series: panel.series, signature, lines });
  }

  /** The levels drawn on `panel` (for tests): [{id, level}]. */
  levels(panel) {
    return (this.drawn.get(panel)?.lines || []).map(({ id, level, line }) => ({
      id, level, price: line.options().price,
    }));
  }
}
