// CompareLine: another symbol drawn as a line on a chart's price pane, fed by its own
// subscription on the shared Feed. Its points are kept only at the times the chart's own
// bars have, so the chart's logical indices (history loading, jump to latest, the view
// limits) stay those of its own bars. It asks data_history for older bars of its own until
// it reaches back to the chart's first bar (after the first load, whose latest bars of
// another symbol may cover less time, and as the chart scrolls back).
// It is subscribed at the chart's interval when the symbol offers it, else at the offered
// interval closest to it (a daily-only series beside a 1m chart): each of the chart's bars
// then shows the close of the compared bar that covers it (the day's close on every minute
// of the day; a week's last daily close on a weekly chart). When the symbol's intervals are
// not known (a compare opened from a link) it asks at the chart's interval and, refused,
// looks them up by a search for the symbol. `state` says what the chip shows: "loading",
// "ready", "nodata" (the source has no bars), "outside" (none at the times the chart
// shows) or "failed" (`problem`: the server's refusal).

import { LineSeries } from "../vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import {
  closeOf, convertAll, converter, formatDate, indexOfTime, mergeBars,
} from "./bars.js";
import { displayName, formatTime, sentence, unservedText } from "./format.js";
import {
  label as intervalLabel, nearest, seconds, title as intervalTitle,
} from "./intervals.js";

export const COMPARE_COLOR = "#f5a524";
const MAX_HISTORY = 1000; // bars per data_history request (more come in further requests)

/**
 * The compared points at the chart's bar `times` (ascending): at each time t, the close of
 * the last compared bar opening before the chart bar ends (the next chart bar, or t plus the
 * chart's interval) whose own span (`step` seconds) reaches past t; none where no bar does.
 * With one interval on both sides this is the compared bar opening at t.
 */
export function pointsAt(times, bars, chartStep, step) {
  const points = [];
  let j = -1; // the last compared bar opening before the current chart bar's end
  for (let i = 0; i < times.length; i += 1) {
    const t = times[i];
    const end = Math.min(i + 1 < times.length ? times[i + 1] : Infinity, t + chartStep);
    while (j + 1 < bars.length && bars[j + 1].time < end) j += 1;
    const bar = j >= 0 ? bars[j] : null;
    const value = bar && bar.time + step > t ? closeOf(bar) : null;
    if (value !== null) points.push({ time: t, value });
  }
  return points;
}

export class CompareLine {
  constructor({
    chart, feed, source, name, details, interval, count, onState = () => {},
    toChart = (points) => points,
  }) {
    this.chart = chart;
    this.toChart = toChart; // [points] at the chart's own times (its zone's wall clock)
    this.feed = feed;
    this.source = source;
    this.name = name;
    this.details = details;
    this.chartInterval = interval;
    this.count = count;
    this.onState = onState;
    this.interval = nearest(interval, details?.intervals);
    this.times = []; // the chart's own bar times, ascending
    this.lastShown = null;
    this.drawn = 0; // points drawn
    this.reachBack = null; // the chart's first bar time: older bars are wanted down to it
    this.series = chart.addSeries(LineSeries, {
      color: COMPARE_COLOR, lineWidth: 2, priceLineVisible: false, title: this.label,
    });
    this.consumer = {
      onInit: (m) => this.onInit(m),
      onUpdate: (m) => this.onUpdate(m),
      onHistory: (m, request) => this.onHistory(m, request),
      onError: (m) => this.onError(m),
      onLost: () => { this.historyRequest = null; }, // asked again after the data_init
    };
    this.start();
  }

  /** Subscribe at `this.interval` (again, after looking up the symbol's intervals). */
  start() {
    this.bars = [];
    this.historyRequest = null; // the data_history request on its way
    this.historyDone = false; // the source has nothing older
    this.problem = null; // {code, message} of a refusal
    this.answered = false; // a data_init came
    this.setState("loading");
    this.feed.subscribe(this.source, this.name, this.interval, this.consumer, this.count);
  }

  get label() {
    return displayName(this.name, this.details);
  }

  /** Drawn at another interval than the chart's (the symbol does not offer the chart's). */
  get resampled() {
    return this.interval !== this.chartInterval;
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState();
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
    if (this.state === "resolving") return; // the refused interval's empty reply
    const incoming = convertAll(message.data, this.convert()).filter((b) => closeOf(b) !== null);
    if (this.state === "failed" && !incoming.length) return; // the refusal's empty reply
    this.recover();
    this.answered = true;
    this.bars = mergeBars(this.bars, incoming);
    this.render();
    this.extend();
    this.updateState();
  }

  onHistory(message, request) {
    if (request !== this.historyRequest) return;
    this.historyRequest = null;
    const oldest = this.bars.length ? this.bars[0].time : Infinity;
    const older = convertAll(message.data, this.convert())
      .filter((b) => b.time < oldest && closeOf(b) !== null);
    if (!older.length) this.historyDone = true;
    else this.bars = mergeBars(this.bars, older);
    this.render();
    this.extend();
    this.updateState();
  }

  /**
   * A refusal of the subscription: at an interval the symbol lacks, look its intervals up
   * and subscribe at the nearest one; else the chip says why. Taken in hand (true: no
   * toast) when the chip shows it.
   */
  onError(message) {
    const request = message.request;
    if (request?.type !== "data" || request.interval !== this.interval || this.bars.length) {
      if (request?.type === "data_history") this.historyRequest = null;
      return false;
    }
    if (message.code === "unknown_interval" && !this.details?.intervals) {
      this.resolveInterval(message);
      return true;
    }
    this.fail(message);
    return true;
  }

  async resolveInterval(refusal) {
    this.setState("resolving");
    const rows = await this.feed.search(this.name);
    if (this.destroyed) return;
    const row = (rows || []).find((r) => r.details?.source === this.source
      && r.details?.name === this.name);
    const offered = row?.details?.intervals;
    if (!offered?.length || offered.includes(this.interval)) {
      this.fail(refusal);
      return;
    }
    this.details = row.details;
    this.feed.unsubscribe(this.source, this.name, this.interval, this.consumer);
    this.interval = nearest(this.chartInterval, offered);
    this.start();
  }

  /** Bars came after all (a source back after it was unavailable): the refusal is over. */
  recover() {
    if (this.state !== "failed") return;
    this.problem = null;
    this.setState("loading");
  }

  fail(message) {
    this.problem = { code: message.code, message: message.message || message.code };
    this.setState("failed");
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
    if (this.state === "resolving") return;
    const bar = this.convert()(message.data);
    if (!bar || closeOf(bar) === null) return;
    this.recover();
    const known = indexOfTime(this.bars, bar.time) >= 0;
    this.bars = mergeBars(this.bars, [bar]);
    const last = this.times[this.times.length - 1];
    if (last === undefined) return;
    // The chart's newest bar moves with the compared bar that covers it; a compared bar
    // new amid the chart's bars (the chart ran ahead) is drawn with the rest.
    const [point] = pointsAt([last], this.bars, this.chartStep, this.step);
    if (point && (this.lastShown === null || point.time >= this.lastShown)) {
      this.series.update(this.toChart([point])[0]);
      this.lastShown = point.time;
      this.drawn = Math.max(this.drawn, 1);
    } else if (!known && bar.time < last) {
      this.render();
    }
    this.updateState();
  }

  get chartStep() {
    return seconds(this.chartInterval);
  }

  get step() {
    return seconds(this.interval);
  }

  /** Draw only at the times of the chart's `bars` (called when they change). */
  follow(bars) {
    this.times = bars.map((b) => b.time);
    this.reachBack = bars.length ? bars[0].time : null;
    this.dropBefore(this.reachBack);
    this.render();
    this.extend();
    this.updateState();
  }

  /**
   * Forget the compared bars no chart bar needs: those before the one covering `time` (the
   * chart's first bar, which moves on as a chart left streaming drops its oldest bars).
   * Scrolling back asks for them again (extend).
   */
  dropBefore(time) {
    if (time === null) return;
    let first = 0; // the last bar opening at or before `time` is kept
    while (first + 1 < this.bars.length && this.bars[first + 1].time <= time) first += 1;
    if (first > 0) this.bars = this.bars.slice(first);
  }

  render() {
    const points = pointsAt(this.times, this.bars, this.chartStep, this.step);
    this.series.setData(this.toChart(points));
    this.lastShown = points.length ? points[points.length - 1].time : null;
    this.drawn = points.length;
  }

  /** "ready" with points drawn; "nodata" / "outside" once no more bars are coming. */
  updateState() {
    if (this.state === "failed" || this.state === "resolving") return;
    if (this.drawn > 0) this.setState("ready");
    else if (!this.answered || this.historyRequest || !this.times.length) this.setState("loading");
    else this.setState(this.bars.length ? "outside" : "nodata");
  }

  destroy() {
    this.destroyed = true;
    this.feed.unsubscribe(this.source, this.name, this.interval, this.consumer);
    this.chart.removeSeries(this.series);
  }
}

/**
 * What the compare chip adds to "vs NAME" for `line` (a CompareLine, or null): {text, title,
 * problem} or null (nothing to add). Drawn at another interval: that interval. Nothing
 * drawn: why.
 */
export function compareNote(line) {
  if (!line) return null;
  const name = line.label;
  switch (line.state) {
    case "failed":
      return { text: unservedText(line.problem.code), title: sentence(line.problem.message),
        problem: true };
    case "nodata":
      return { text: "no data", title: `${name} has no ${intervalTitle(line.interval)} bars`,
        problem: true };
    case "outside": {
      const [first, last] = [line.bars[0], line.bars[line.bars.length - 1]]
        .map((b) => formatTime(b.time, "utc", line.step));
      return { text: "no bars here", problem: true,
        title: `${name} has no bars at the times this chart shows (the bars loaded run from ${first}`
          + ` to ${last} UTC)` };
    }
    default:
      if (!line.resampled) return null;
      return { text: intervalLabel(line.interval), problem: false,
        title: `${name} has no ${intervalTitle(line.chartInterval)} bars: each bar of the `
          + `chart shows the close of ${name}'s ${intervalTitle(line.interval)} bar that covers it` };
  }
}
