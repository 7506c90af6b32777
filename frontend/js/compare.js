// CompareLine: another symbol drawn as a line on a chart's price pane, fed by its own
// subscription on the shared Feed at the chart's interval. Its points are kept only at the
// times the chart's own bars have, so the chart's logical indices (history loading, jump to
// latest, the view limits) stay those of its own bars.

import { LineSeries } from "/vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import { closeOf, convertAll, converter, mergeBars } from "./bars.js";
import { displayName } from "./format.js";

export const COMPARE_COLOR = "#f5a524";

export class CompareLine {
  constructor({ chart, feed, source, name, details, interval, count }) {
    this.chart = chart;
    this.feed = feed;
    this.source = source;
    this.name = name;
    this.details = details;
    this.interval = interval;
    this.bars = [];
    this.times = new Set(); // the chart's own bar times
    this.lastShown = null;
    this.series = chart.addSeries(LineSeries, {
      color: COMPARE_COLOR, lineWidth: 2, priceLineVisible: false, title: this.label,
    });
    this.consumer = {
      onInit: (m) => this.onInit(m),
      onUpdate: (m) => this.onUpdate(m),
    };
    feed.subscribe(source, name, interval, this.consumer, count);
  }

  get label() {
    return displayName(this.name, this.details);
  }

  convert() {
    const kind = this.details?.type === "line" ? "line" : "candlestick";
    return converter(this.source, this.name, this.interval, kind);
  }

  onInit(message) {
    if (message.metadata && typeof message.metadata === "object") {
      this.details = message.metadata;
      this.series.applyOptions({ title: this.label });
    }
    const incoming = convertAll(message.data, this.convert()).filter((b) => closeOf(b) !== null);
    this.bars = mergeBars(this.bars, incoming);
    this.render();
  }

  onUpdate(message) {
    const bar = this.convert()(message.data);
    if (!bar || closeOf(bar) === null) return;
    this.bars = mergeBars(this.bars, [bar]);
    if (this.times.has(bar.time) && (this.lastShown === null || bar.time >= this.lastShown)) {
      this.series.update({ time: bar.time, value: closeOf(bar) });
      this.lastShown = bar.time;
    }
  }

  /** Draw only at the times of the chart's `bars` (called when they change). */
  follow(bars) {
    this.times = new Set(bars.map((b) => b.time));
    this.render();
  }

  render() {
    const points = this.bars.filter((b) => this.times.has(b.time))
      .map((b) => ({ time: b.time, value: closeOf(b) }));
    this.series.setData(points);
    this.lastShown = points.length ? points[points.length - 1].time : null;
  }

  destroy() {
    this.feed.unsubscribe(this.source, this.name, this.interval, this.consumer);
    this.chart.removeSeries(this.series);
  }
}
