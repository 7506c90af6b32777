// ChartPanel: one chart (header, legend, lightweight-charts canvas, message overlay) showing
// one series key. It consumes the Feed: data_init (first load, or the latest bars after a
// reconnect: merged in when they continue the series, else replacing it), data_update
// (series.update: the forming bar or a new one), and data_history (older bars prepended
// while scrolling left, without moving the view).
// It draws its bars as the chosen chart type on the chosen price scale, optionally with a
// compared symbol, keeps the view on its data (ViewEdges, the drag limits), and shows the
// shared quote and the countdown to the bar close in its header. Its indicators
// (IndicatorLayer) are asked for after each data_init and follow scroll-back.

import {
  HistogramSeries, createChart,
} from "../vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import {
  continues, convertAll, converter, formatDate, indexOfTime, isWhitespace, mergeBars,
  previousReal,
} from "./bars.js";
import {
  addTypeSeries, drawnType, lastPointOf, pointsOf, scaleMode, typeOptions,
} from "./chart-types.js";
import { CompareLine, compareNote } from "./compare.js";
import { IndicatorLayer } from "./indicators.js";
import { formatLeft, secondsLeft } from "./countdown.js";
import { element, richText } from "./dom.js";
import { ViewEdges, clampRange } from "./edges.js";
import {
  NOT_SERVED, decimalsOf, formatTime, precisionFor, sentence, tickMark,
} from "./format.js";
import { isIntraday, nearest, seconds as intervalSeconds } from "./intervals.js";
import { renderLegend } from "./legend.js";
import { PanelHead } from "./panel-head.js";
import { quoteId } from "./quotes.js";
import { chartOptions, volumeColor } from "./theme.js";
import { chartClock } from "./wall-clock.js";

const INIT_COUNT = 300;
const HISTORY_COUNT = 300;
const EDGE = 10; // request older bars when fewer than this many are left of the view
const INITIAL_BARS = 150; // bars shown after the first load
// A chart left streaming for hours (a 1m chart of a 60x replay gains 3,600 bars an hour)
// keeps at most `max` bars: past it, while the view is on the newest `keep` bars, the oldest
// are dropped (with their indicator values) and scrolling back loads them again. Exported,
// and mutable, for the browser tests.
export const BAR_LIMITS = { max: 5000, keep: 4000 };

export class ChartPanel extends EventTarget {
  constructor({ index, feed, quotes, theme, zone }) {
    super();
    this.index = index;
    this.feed = feed;
    this.quotes = quotes;
    this.chartType = "candles";
    this.drawn = "candles";
    this.scale = "normal";
    this.compareWanted = null; // {source, name, details}
    this.compare = null;
    this.theme = theme;
    this.zone = zone;
    this.source = null;
    this.name = null;
    this.interval = null;
    this.details = null;
    this.bars = [];
    this.series = null;
    this.volume = null;
    this.precision = 2;
    this.pending = false;
    this.done = false;
    this.hovering = false;
    this.message = null;
    this.errorText = null;
    this.updates = 0;
    this.quote = null;
    this.precisionApplied = false;
    this.consumer = {
      onInit: (m) => this.onInit(m),
      onUpdate: (m) => this.onUpdate(m),
      onHistory: (m, request) => this.onHistory(m, request),
      onError: (m) => this.onError(m),
      onLost: () => { this.historyPending = false; },
    };
    this.onQuote = (e) => {
      if (this.source && e.detail === quoteId(this.source, this.name)) this.refreshQuote();
    };
    quotes.addEventListener("quote", this.onQuote);
    this.build();
  }

  // Scroll-back state, shown by ViewEdges as it changes.
  get historyPending() {
    return this.pending;
  }

  set historyPending(on) {
    this.pending = on;
    this.edges?.setLoading(on);
  }

  get historyDone() {
    return this.done;
  }

  set historyDone(on) {
    this.done = on;
    this.chart?.applyOptions({ timeScale: { fixLeftEdge: on } });
    this.placeEdges();
    // fixLeftEdge moves the view on one of the chart's next frames, not always with a range
    // event: place the marks again after the next frame and the one after it, and once more
    // a little later (a loaded machine draws late).
    requestAnimationFrame(() => {
      this.placeEdges();
      requestAnimationFrame(() => this.placeEdges());
    });
    setTimeout(() => this.placeEdges(), 300);
  }

  build() {
    this.el = element("section", "panel");
    this.el.dataset.index = String(this.index);
    this.head = new PanelHead(this.el);
    const body = element("div", "panel-body", this.el);
    this.legendEl = element("div", "legend", body);
    this.indicators = new IndicatorLayer({
      panel: this,
      feed: this.feed,
      host: body,
      onChange: () => this.emit("change"),
      onEdit: (instance) => this.dispatchEvent(
        new CustomEvent("indicator-edit", { detail: instance })),
    });
    const area = element("div", "chart-area", body);
    this.host = element("div", "chart-host", area);
    this.messageEl = element("div", "panel-message", body);
    this.messageEl.hidden = true;
    this.chart = createChart(this.host, {
      ...chartOptions(this.theme),
      autoSize: true,
      // Touch: drag to pan, pinch to zoom; a vertical swipe is left to the page.
      handleScroll: {
        mouseWheel: true, pressedMouseMove: true, horzTouchDrag: true, vertTouchDrag: false,
      },
      handleScale: { mouseWheel: true, pinch: true, axisPressedMouseMove: true },
      localization: { timeFormatter: (t) => this.chartTimeText(t) },
      timeScale: {
        ...chartOptions(this.theme).timeScale,
        rightOffset: 6,
        maxBarSpacing: 40,
        timeVisible: true,
        secondsVisible: false,
        tickMarkFormatter: (t, type) => this.tickText(t, type),
      },
    });
    this.chart.timeScale().subscribeVisibleLogicalRangeChange(() => this.onRange());
    this.viewPending = false; // the first view waits for a width (initialView)
    this.chart.timeScale().subscribeSizeChange((width) => this.onResize(width));
    this.chart.subscribeCrosshairMove((param) => this.onCrosshair(param));
    this.edges = new ViewEdges(area, this.chart, () => this.toLatest());
    this.el.addEventListener("pointerdown", () => this.emit("activate"), { capture: true });
  }

  step() {
    return intervalSeconds(this.interval || "1h");
  }

  timeText(t) {
    return formatTime(t, this.zone, this.step());
  }

  /** The map from bar times to the times the series are given (wall-clock.js). */
  get clock() {
    return chartClock(this.zone, this.step());
  }

  /** `point` at its chart time (the time its series is given). */
  toChart(point) {
    const clock = this.clock;
    return { ...point, time: clock(point.time) };
  }

  /** Each of `points` at its chart time. */
  toChartAll(points) {
    const clock = this.clock;
    return points.map((p) => ({ ...p, time: clock(p.time) }));
  }

  /** The bar time of a time the series were given (that of a bar), or null. */
  realTime(chartTime) {
    const clock = this.clock;
    let lo = 0;
    let hi = this.bars.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const t = clock(this.bars[mid].time);
      if (t === chartTime) return this.bars[mid].time;
      if (t < chartTime) lo = mid + 1;
      else hi = mid - 1;
    }
    return null;
  }

  /** The crosshair's time label: the bar's own time in the chosen zone. */
  chartTimeText(chartTime) {
    const real = this.realTime(chartTime);
    return real === null ? formatTime(chartTime, "utc", this.step()) : this.timeText(real);
  }

  /** A time-axis mark: chart times are the wall-clock times of the zone already. */
  tickText(chartTime, type) {
    return tickMark(chartTime, type, "utc", this.step());
  }

  get kind() {
    return this.details?.type === "line" ? "line" : "candlestick";
  }

  emit(type) {
    this.dispatchEvent(new Event(type));
  }

  /** Show `name` from `source` at `interval`; `details` (the search row) when known. */
  open(source, name, interval, details = null) {
    if (source === this.source && name === this.name && interval === this.interval) return;
    this.unsubscribe();
    const sameSymbol = source === this.source && name === this.name;
    this.source = source;
    this.name = name;
    this.interval = interval;
    this.details = details || (sameSymbol ? this.details : null);
    this.reset();
    this.showMessage("Loading…", "loading");
    this.chart.applyOptions({ timeScale: { timeVisible: isIntraday(interval) } });
    this.renderHead();
    this.quotes.watch(source, name, this.details);
    this.feed.subscribe(source, name, interval, this.consumer, INIT_COUNT);
    this.openCompare();
    this.emit("change");
  }

  reset() {
    this.indicators.clear();
    this.compare?.destroy();
    this.compare = null;
    for (const s of [this.series, this.volume]) if (s) this.chart.removeSeries(s);
    this.series = null;
    this.volume = null;
    this.bars = [];
    this.historyPending = false;
    this.historyDone = false;
    this.historyRequest = null; // the data_history request sent last
    this.errorText = null;
    this.updates = 0;
    this.quote = null;
    this.precisionApplied = false;
    this.legendEl.replaceChildren();
    this.head.clear();
  }

  unsubscribe() {
    if (!this.source) return;
    this.feed.unsubscribe(this.source, this.name, this.interval, this.consumer);
    this.quotes.unwatch(this.source, this.name);
  }

  destroy() {
    this.destroyed = true; // late callbacks (placeEdges) leave the removed chart alone
    this.unsubscribe();
    this.compare?.destroy();
    this.indicators.destroy();
    this.quotes.removeEventListener("quote", this.onQuote);
    this.chart.remove();
    this.el.remove();
  }

  convert() {
    return converter(this.source, this.name, this.interval, this.kind);
  }

  createSeries() {
    this.drawn = drawnType(this.chartType, this.kind);
    this.series = addTypeSeries(this.chart, this.drawn, this.theme);
    const margins = this.kind === "line" ? { top: 0.1, bottom: 0.1 } : { top: 0.08, bottom: 0.24 };
    this.series.priceScale().applyOptions({ mode: scaleMode(this.scale), scaleMargins: margins });
    if (this.kind === "line" || this.volume) return;
    this.volume = this.chart.addSeries(HistogramSeries, {
      priceScaleId: "volume",
      priceFormat: { type: "volume" },
      lastValueVisible: false,
      priceLineVisible: false,
    });
    this.chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  }

  volumeBar(bar) {
    if (isWhitespace(bar)) return this.toChart({ time: bar.time });
    return this.toChart({ time: bar.time, value: bar.volume, color: volumeColor(bar, this.theme) });
  }

  setSeriesData() {
    this.series.setData(this.toChartAll(pointsOf(this.bars, this.drawn)));
    if (this.volume) this.volume.setData(this.bars.map((b) => this.volumeBar(b)));
    this.compare?.follow(this.bars);
    this.placeEdges();
  }

  // ---------------------------------------------------------------- feed messages

  onInit(message) {
    if (message.metadata && typeof message.metadata === "object") {
      this.details = message.metadata;
      this.quotes.learn(this.source, this.name, this.details);
      this.renderHead();
    }
    const incoming = convertAll(message.data, this.convert());
    if (!incoming.length) {
      if (!this.bars.length) {
        const what = `${this.name} (${this.source}, ${this.interval})`;
        this.showMessage(this.errorText || `No data for ${what}`, "error",
          "Pick another symbol with the search box above.");
      }
      this.emit("change");
      return;
    }
    this.hideMessage();
    this.errorText = null;
    if (!this.series) this.createSeries();
    if (!this.bars.length) {
      this.bars = incoming;
      this.setSeriesData();
      this.initialView();
    } else {
      this.mergeLatest(incoming);
    }
    this.applyPrecision();
    this.refreshText();
    this.indicators.requestAll(); // a first load, a new symbol or a reconnect: ask again
    this.emit("data");
    this.emit("change");
  }

  onUpdate(message) {
    if (!this.series || !this.bars.length) return;
    const bar = this.convert()(message.data);
    const last = this.bars[this.bars.length - 1];
    if (!bar || bar.time < last.time) return; // never move back in time
    const appended = bar.time !== last.time;
    if (appended) this.bars.push(bar);
    else this.bars[this.bars.length - 1] = bar;
    this.series.update(this.toChart(lastPointOf(this.bars, this.drawn)));
    if (this.volume) this.volume.update(this.volumeBar(bar));
    if (appended) this.compare?.follow(this.bars);
    this.updates += 1;
    if (appended && this.bars.length > BAR_LIMITS.max) this.dropOldest();
    const close = bar.close ?? bar.value;
    if (close !== undefined && decimalsOf(close) > this.precision) this.applyPrecision();
    this.refreshText();
    this.emit("tick");
  }

  /** The reply to `request` (this chart's own: the feed routes each reply to its asker). */
  onHistory(message, request) {
    if (!this.historyPending || !this.bars.length || request !== this.historyRequest) return;
    this.historyPending = false;
    const oldest = this.bars[0].time;
    const older = convertAll(message.data, this.convert()).filter((b) => b.time < oldest);
    if (!older.length) {
      this.historyDone = true; // the source has nothing older
      this.emit("change");
      return;
    }
    this.replaceBars(older.concat(this.bars));
    this.indicators.requestHistory(oldest);
    this.emit("history");
  }

  onError(message) {
    this.errorText = sentence(message.message || message.code);
    // A failed history request was answered with an empty data_history just before this
    // error: that was not the start of the data, so scrolling left may try again.
    const failed = message.request;
    if (failed?.type === "data_history" && failed.end === this.historyRequest?.end) {
      this.historyDone = false;
    }
    if (!this.bars.length && message.request?.type === "data") {
      // Taken in hand (no toast): the chart reopens at what the link meant, or says why not.
      if (message.code === "unknown_interval" && message.request.interval === this.interval) {
        this.openNearestInterval(message);
        return true;
      }
      if (message.code === "unknown_symbol" && message.request.name === this.name) {
        this.openOtherCase(message);
        return true;
      }
      this.showMessage(this.errorText, "error", "Pick another symbol with the search box above.");
    }
    if (this.bars.length && failed?.type === "data" && failed.name === this.name
      && failed.interval === this.interval && NOT_SERVED.has(message.code)) {
      // Its bars held from before (a reconnect after a repopulate without the symbol, a
      // token that may no longer read it) are not the symbol's any more: say so over them.
      this.showMessage(`${this.name} is no longer served here`, "error",
        `${this.errorText}. Pick another symbol with the search box above.`);
      return true; // said on the chart: no toast
    }
    return false;
  }

  /**
   * A link (the URL, a grid chart) named an interval this symbol does not offer: open the
   * offered interval closest to it, as a pick from the search box does, rather than an
   * error telling the user to pick another symbol. Only a link gets here (a pick knows the
   * symbol's intervals), so they are looked up by searching for the symbol's name.
   */
  async openNearestInterval(refusal) {
    const { source, name, interval } = this;
    const rows = this.details?.intervals
      ? [{ details: this.details }] : await this.feed.search(name);
    if (this.destroyed || source !== this.source || name !== this.name
      || interval !== this.interval || this.bars.length) return; // moved on meanwhile
    const row = (rows || []).find((r) => r.details?.source === source && r.details?.name === name);
    const offered = row?.details?.intervals;
    if (offered?.length && !offered.includes(interval)) {
      this.open(source, name, nearest(interval, offered), row.details);
    } else {
      this.showMessage(this.errorText, "error", "Pick another interval or symbol.");
      this.feed.announce(refusal); // the refusal stands: its toast too
    }
  }

  /**
   * A link named the symbol in another case (`?s=btcusd`): symbols are exact on the wire, but
   * search finds the symbol ignoring case, so open the one spelled so in the same source (at
   * the nearest interval it offers), as the search box would; else the refusal stands.
   */
  async openOtherCase(refusal) {
    const { source, name, interval } = this;
    const rows = await this.feed.search(name);
    if (this.destroyed || source !== this.source || name !== this.name
      || interval !== this.interval || this.bars.length) return; // moved on meanwhile
    const wanted = name.toLowerCase();
    const row = (rows || []).find((r) => r.details?.source === source
      && r.details?.name !== name && String(r.details?.name).toLowerCase() === wanted);
    const offered = row?.details?.intervals;
    if (row) {
      const at = !offered?.length || offered.includes(interval) ? interval : nearest(interval, offered);
      this.open(source, row.details.name, at, row.details);
    } else {
      this.showMessage(this.errorText, "error", "Pick another symbol with the search box above.");
      this.feed.announce(refusal); // the refusal stands: its toast too
    }
  }

  // ---------------------------------------------------------------- merging and the view

  /**
   * After a reconnect: merge the latest bars so the gap is filled, when they continue the
   * series. Otherwise (a gap longer than one data_init, or a source whose newest bar is older
   * than ours, as after a restarted replay) start again from them: merging would keep bars
   * the source no longer has, and every update older than those would be ignored.
   */
  mergeLatest(incoming) {
    if (!continues(this.bars, incoming)) {
      this.bars = incoming;
      this.historyDone = false;
      this.historyPending = false;
      this.setSeriesData();
      this.initialView();
      return;
    }
    this.replaceBars(mergeBars(this.bars, incoming));
  }

  /** Replace the bars keeping the view on the same bars (or on the live edge). */
  replaceBars(merged) {
    const ts = this.chart.timeScale();
    const range = ts.getVisibleLogicalRange();
    const old = this.bars;
    this.bars = merged;
    this.setSeriesData();
    if (!range || !old.length) return;
    const following = range.to >= old.length - 1; // the newest bar was on screen
    let shift;
    if (following) {
      shift = merged.length - old.length;
    } else {
      const anchor = Math.min(Math.max(Math.round(range.from), 0), old.length - 1);
      shift = indexOfTime(merged, old[anchor].time) - anchor;
    }
    ts.setVisibleLogicalRange({ from: range.from + shift, to: range.to + shift });
  }

  /** Keep the newest BAR_LIMITS.keep bars, unless the view shows older ones (then later). */
  dropOldest() {
    const range = this.chart.timeScale().getVisibleLogicalRange();
    const first = this.bars.length - BAR_LIMITS.keep;
    if (!range || range.from < first) return; // the user looks at bars that would go
    this.replaceBars(this.bars.slice(first));
    this.historyPending = false; // a reply about the old left edge is not wanted any more
    this.historyRequest = null;
    this.historyDone = false; // scrolling back loads them again
    this.indicators.dropBefore(this.bars[0].time);
  }

  initialView() {
    if (!this.host.clientWidth) {
      // hidden: a range set now would squeeze every bar into no width (the least bar
      // spacing), and show hundreds of bars zoomed out once visible; it waits (onResize)
      this.viewPending = true;
      return;
    }
    this.viewPending = false;
    const n = this.bars.length;
    const ts = this.chart.timeScale();
    if (n <= INITIAL_BARS) ts.fitContent();
    else ts.setVisibleLogicalRange({ from: n - INITIAL_BARS, to: n - 1 + 6 });
  }

  /** A chart that comes into view (a grid cell shown by a wider window or a rotated phone)
   * gets the first view it could not have while hidden: its newest bars at the usual zoom. */
  onResize(width) {
    if (width > 0 && this.viewPending && this.bars.length) this.initialView();
    this.placeEdges();
  }

  onRange() {
    if (this.clampView()) return; // the clamped range comes back here
    this.placeEdges();
    if (this.historyPending || this.historyDone || !this.bars.length) return;
    // hidden (a grid cell a phone does not show): no width, every bar "visible"; scroll-back
    // history is for what the user sees
    if (!this.host.clientWidth) return;
    const range = this.chart.timeScale().getVisibleLogicalRange();
    if (range && range.from < EDGE) this.requestHistory();
  }

  /** Keep a part of the view on bars: a drag stops before the chart is almost empty. */
  clampView() {
    const ts = this.chart.timeScale();
    const range = ts.getVisibleLogicalRange();
    const clamped = range ? clampRange(range, this.bars.length) : null;
    if (clamped) ts.setVisibleLogicalRange(clamped);
    return clamped !== null;
  }

  placeEdges() {
    if (this.destroyed) return;
    this.edges?.place(this.bars.length, this.historyDone);
  }

  /** Show the newest bars (the jump-to-latest button, a layout change). */
  toLatest() {
    if (!this.bars.length) return;
    const ts = this.chart.timeScale();
    ts.scrollToPosition(ts.options().rightOffset, false); // at once: scrollToRealTime animates
  }

  requestHistory() {
    const end = formatDate(this.bars[0].time);
    const request = this.feed.history(this.source, this.name, this.interval, end, HISTORY_COUNT,
      this.consumer);
    if (request) {
      this.historyRequest = request;
      this.historyPending = true;
    }
  }

  // ---------------------------------------------------------------- text

  applyPrecision() {
    const precision = precisionFor(this.details, this.bars);
    if (precision === this.precision && this.precisionApplied) return;
    this.precision = precision;
    this.precisionApplied = true;
    this.series.applyOptions({
      priceFormat: { type: "price", precision, minMove: 1 / 10 ** precision },
    });
  }

  onCrosshair(param) {
    const real = param && param.time !== undefined && param.point
      ? this.realTime(param.time) : null;
    const idx = real === null ? -1 : indexOfTime(this.bars, real);
    this.hovering = idx >= 0;
    this.renderLegendAt(idx >= 0 ? idx : this.bars.length - 1);
  }

  renderLegendAt(idx) {
    if (idx < 0 || !this.bars.length) {
      this.legendEl.replaceChildren();
      return;
    }
    const bar = this.bars[idx];
    renderLegend(this.legendEl, {
      bar,
      previous: previousReal(this.bars, idx - 1),
      kind: this.kind,
      precision: this.precision,
      timeText: this.timeText(bar.time),
    });
  }

  refreshText() {
    this.refreshQuote();
    if (!this.hovering) this.renderLegendAt(this.bars.length - 1);
    this.tickClock(Date.now() / 1000);
  }

  /** The header quote: the shared quote (as in the watchlist), else the last close alone. */
  refreshQuote() {
    this.quote = this.head.showQuote({
      shared: this.source ? this.quotes.get(this.source, this.name) : null,
      last: previousReal(this.bars, this.bars.length - 1),
      precision: this.precision,
    });
    this.emit("tick");
  }

  /** The countdown to the close of the forming bar (`now` in UTC seconds). */
  tickClock(now) {
    const last = this.bars[this.bars.length - 1];
    const left = last ? secondsLeft(last.time, this.interval, now) : null;
    this.head.showCountdown(left === null ? "" : formatLeft(left));
  }

  renderHead() {
    this.head.show(this);
  }

  showMessage(text, kind = "info", hint = "") {
    this.message = text;
    this.messageEl.hidden = false;
    this.messageEl.className = `panel-message msg-${kind}`;
    const title = element("div", "msg-title");
    richText(title, text);
    const children = [title];
    if (hint) {
      const hintEl = element("div", "msg-hint");
      richText(hintEl, hint);
      children.push(hintEl);
    }
    this.messageEl.replaceChildren(...children);
  }

  hideMessage() {
    this.message = null;
    this.messageEl.hidden = true;
  }

  // ---------------------------------------------------------------- settings

  setTheme(theme) {
    this.theme = theme;
    this.chart.applyOptions(chartOptions(theme));
    if (this.series) this.series.applyOptions(typeOptions(this.drawn, theme));
    if (this.volume) this.volume.setData(this.bars.map((b) => this.volumeBar(b)));
  }

  setZone(zone) {
    this.zone = zone;
    this.chart.applyOptions({
      localization: { timeFormatter: (t) => this.chartTimeText(t) },
      timeScale: { tickMarkFormatter: (t, type) => this.tickText(t, type) },
    });
    if (this.series) {
      // the series' times are the zone's wall-clock times: given again, keeping the view
      const range = this.chart.timeScale().getVisibleLogicalRange();
      this.setSeriesData();
      this.indicators.redraw();
      if (range) this.chart.timeScale().setVisibleLogicalRange(range);
    }
    this.refreshText();
  }

  setActive(active) {
    this.el.classList.toggle("active", active);
  }

  /** Draw the bars as `type` (see chart-types.js). */
  setChartType(type) {
    this.chartType = type;
    if (this.series && drawnType(type, this.kind) !== this.drawn) {
      this.chart.removeSeries(this.series);
      this.createSeries();
      this.setSeriesData();
      this.precisionApplied = false;
      this.applyPrecision();
    }
    this.emit("change");
  }

  /** The price scale: "normal", "log" or "percent". */
  setScale(scale) {
    this.scale = scale;
    this.chart.priceScale("right").applyOptions({ mode: scaleMode(scale) });
    this.emit("change");
  }

  /** Compare with another symbol ({source, name, details}) drawn as a line, or null. */
  setCompare(target) {
    this.compareWanted = target && target.source && target.name ? target : null;
    this.openCompare();
    if (this.compareWanted && this.scale === "normal") this.setScale("percent");
    this.emit("change");
  }

  openCompare() {
    const c = this.compareWanted;
    // What the last line learnt of the symbol (its intervals) serves the next one.
    const learnt = this.compare?.details;
    if (c && !c.details && learnt && this.compare.source === c.source
      && this.compare.name === c.name) c.details = learnt;
    this.compare?.destroy();
    this.compare = null;
    if (c && this.source && this.interval) {
      this.compare = new CompareLine({
        chart: this.chart, feed: this.feed, source: c.source, name: c.name, details: c.details,
        interval: this.interval, count: INIT_COUNT, toChart: (points) => this.toChartAll(points),
        onState: () => this.renderCompareChip(),
      });
      this.compare.follow(this.bars);
    }
    this.renderCompareChip();
  }

  renderCompareChip() {
    this.head.showCompare(this.compareWanted, () => this.setCompare(null),
      compareNote(this.compare));
  }
}
