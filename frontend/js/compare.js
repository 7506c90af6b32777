// CompareLine: another symbol drawn as a line on a chart's price pane, fed by its own
// subscription on the shared Feed at the chart's interval. Its points are kept only at the
// times the chart's own bars have, so the chart's logical indices (history loading, jump to
// latest, the view limits) stay those of its own bars. It asks data_history for older bars
// of its own until it reaches back to the chart's first bar (after the first load, whose
// latest bars of another symbol may cover less time, and as the chart scrolls back).

import { LineSeries } from "/vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import { closeOf, convertAll, converter, formatDate, mergeBars } from "./bars.js";
import { displayName } from "./format.js";
import { seconds } from "./intervals.js";

export const COMPARE_COLOR = "#f5a524";
const MAX_HISTORY = 1000; // bars per data_history request (more come in further requests)

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
    this.reachBack = null; // the chart's first bar time: older bars are wanted down to it
    this.historyRequest = null; // the data_history request on its way
    this.historyDone = false; // the source has nothing older
    this.series = chart.addSeries(LineSeries, {
      color: COMPARE_COLOR, lineWidth: 2, priceLineVisible: false, title: this.label,
    });
    this.consumer = {
      onInit: (m) => this.onInit(m),
      onUpdate: (m) => this.onUpdate(m),
      onHistory: (m, request) => this.onHistory(m, request),
      onLost: () => { this.historyRequest = null; }, // asked again after the data_init
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
    this.extend();
  }

  onHistory(message, request) {
    if (request !== this.historyRequest) return;
    this.historyRequest = null;
    const oldest = this.bars.length ? this.bars[0].time : Infinity;
    const older = convertAll(message.data, this.convert())
      .filter((b) => b.time < oldest && closeOf(b) !== null);
    if (!older.length) {
      this.historyDone = true;
      return;
    }
    this.bars = mergeBars(this.bars, older);
    this.render();
    this.extend();
  }

  /** Ask for older bars while the line starts after the chart's first bar. */
  extend() {
    if (this.historyRequest || this.historyDone || !this.bars.length) return;
    const oldest = this.bars[0].time;
    if (this.reachBack === null || oldest <= this.reachBack) return;
    const count = Math.min(Math.ceil((oldest - this.reachBack) / seconds(this.interval)) + 1,
      MAX_HISTORY);
    this.historyRequest = this.feed.history(this.source, this.name, this.interval,
      formatDate(oldest), count, this.consumer);
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
    this.reachBack = bars.length ? bars[0].time : null;
    this.render();
    this.extend();
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
