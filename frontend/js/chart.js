// ChartPanel: one chart (header, legend, lightweight-charts canvas, message overlay) showing
// one series key. It consumes the Feed: data_init (first load, or the latest bars after a
// reconnect: merged in when they continue the series, else replacing it), data_update
// (series.update: the forming bar or a new one), and data_history (older bars prepended
// while scrolling left, without moving the view).

import {
  CandlestickSeries, HistogramSeries, LineSeries, createChart,
} from "/vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import {
  continues, convertAll, converter, formatDate, indexOfTime, isWhitespace, mergeBars,
  previousReal,
} from "./bars.js";
import { element, richText } from "./dom.js";
import { decimalsOf, formatTime, precisionFor, sentence, tickMark } from "./format.js";
import { isIntraday, label as intervalLabel, seconds as intervalSeconds } from "./intervals.js";
import { renderLegend, renderQuote } from "./legend.js";
import { candleOptions, chartOptions, lineOptions, volumeColor } from "./theme.js";

const INIT_COUNT = 300;
const HISTORY_COUNT = 300;
const EDGE = 10; // request older bars when fewer than this many are left of the view
const INITIAL_BARS = 150; // bars shown after the first load

export class ChartPanel extends EventTarget {
  constructor({ index, feed, theme, zone }) {
    super();
    this.index = index;
    this.feed = feed;
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
    this.historyPending = false;
    this.historyDone = false;
    this.hovering = false;
    this.message = null;
    this.errorText = null;
    this.updates = 0;
    this.quote = null;
    this.precisionApplied = false;
    this.consumer = {
      onInit: (m) => this.onInit(m),
      onUpdate: (m) => this.onUpdate(m),
      onHistory: (m) => this.onHistory(m),
      onError: (m) => this.onError(m),
      onLost: () => { this.historyPending = false; },
    };
    this.build();
  }

  build() {
    this.el = element("section", "panel");
    this.el.dataset.index = String(this.index);
    const head = element("header", "panel-head", this.el);
    this.symbolEl = element("span", "panel-symbol", head);
    this.labelEl = element("span", "panel-label", head);
    this.intervalEl = element("span", "panel-interval", head);
    this.quoteEl = element("span", "quote", head);
    const body = element("div", "panel-body", this.el);
    this.legendEl = element("div", "legend", body);
    this.host = element("div", "chart-host", body);
    this.messageEl = element("div", "panel-message", body);
    this.messageEl.hidden = true;
    this.chart = createChart(this.host, {
      ...chartOptions(this.theme),
      autoSize: true,
      localization: { timeFormatter: (t) => this.timeText(t) },
      timeScale: {
        ...chartOptions(this.theme).timeScale,
        rightOffset: 6,
        maxBarSpacing: 40,
        timeVisible: true,
        secondsVisible: false,
        tickMarkFormatter: (t, type) => tickMark(t, type, this.zone, this.step()),
      },
    });
    this.chart.timeScale().subscribeVisibleLogicalRangeChange(() => this.onRange());
    this.chart.subscribeCrosshairMove((param) => this.onCrosshair(param));
    this.el.addEventListener("pointerdown", () => this.emit("activate"), { capture: true });
  }

  step() {
    return intervalSeconds(this.interval || "1h");
  }

  timeText(t) {
    return formatTime(t, this.zone, this.step());
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
    this.feed.subscribe(source, name, interval, this.consumer, INIT_COUNT);
    this.emit("change");
  }

  reset() {
    for (const s of [this.series, this.volume]) if (s) this.chart.removeSeries(s);
    this.series = null;
    this.volume = null;
    this.bars = [];
    this.historyPending = false;
    this.historyDone = false;
    this.errorText = null;
    this.updates = 0;
    this.quote = null;
    this.precisionApplied = false;
    this.legendEl.replaceChildren();
    this.quoteEl.replaceChildren();
  }

  unsubscribe() {
    if (this.source) this.feed.unsubscribe(this.source, this.name, this.interval, this.consumer);
  }

  destroy() {
    this.unsubscribe();
    this.chart.remove();
    this.el.remove();
  }

  convert() {
    return converter(this.source, this.name, this.interval, this.kind);
  }

  createSeries() {
    if (this.kind === "line") {
      this.series = this.chart.addSeries(LineSeries, {
        ...lineOptions(this.theme), lineWidth: 2, priceLineVisible: true,
      });
      this.series.priceScale().applyOptions({ scaleMargins: { top: 0.1, bottom: 0.1 } });
      return;
    }
    this.series = this.chart.addSeries(CandlestickSeries, candleOptions(this.theme));
    this.series.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.24 } });
    this.volume = this.chart.addSeries(HistogramSeries, {
      priceScaleId: "volume",
      priceFormat: { type: "volume" },
      lastValueVisible: false,
      priceLineVisible: false,
    });
    this.chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  }

  seriesBar(bar) {
    if (isWhitespace(bar)) return { time: bar.time };
    if (this.kind === "line") return { time: bar.time, value: bar.value };
    return { time: bar.time, open: bar.open, high: bar.high, low: bar.low, close: bar.close };
  }

  volumeBar(bar) {
    if (isWhitespace(bar)) return { time: bar.time };
    return { time: bar.time, value: bar.volume, color: volumeColor(bar, this.theme) };
  }

  setSeriesData() {
    this.series.setData(this.bars.map((b) => this.seriesBar(b)));
    if (this.volume) this.volume.setData(this.bars.map((b) => this.volumeBar(b)));
  }

  // ---------------------------------------------------------------- feed messages

  onInit(message) {
    if (message.metadata && typeof message.metadata === "object") {
      this.details = message.metadata;
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
    this.emit("data");
    this.emit("change");
  }

  onUpdate(message) {
    if (!this.series || !this.bars.length) return;
    const bar = this.convert()(message.data);
    const last = this.bars[this.bars.length - 1];
    if (!bar || bar.time < last.time) return; // never move back in time
    if (bar.time === last.time) this.bars[this.bars.length - 1] = bar;
    else this.bars.push(bar);
    this.series.update(this.seriesBar(bar));
    if (this.volume) this.volume.update(this.volumeBar(bar));
    this.updates += 1;
    const close = bar.close ?? bar.value;
    if (close !== undefined && decimalsOf(close) > this.precision) this.applyPrecision();
    this.refreshText();
    this.emit("tick");
  }

  onHistory(message) {
    if (!this.historyPending || !this.bars.length) return;
    this.historyPending = false;
    const oldest = this.bars[0].time;
    const older = convertAll(message.data, this.convert()).filter((b) => b.time < oldest);
    if (!older.length) {
      this.historyDone = true; // the source has nothing older
      this.emit("change");
      return;
    }
    this.replaceBars(older.concat(this.bars));
    this.emit("history");
  }

  onError(message) {
    this.errorText = sentence(message.message || message.code);
    // A failed history request was answered with an empty data_history just before this
    // error: that was not the start of the data, so scrolling left may try again.
    if (message.request?.type === "data_history") this.historyDone = false;
    if (!this.bars.length && message.request?.type === "data") {
      this.showMessage(this.errorText, "error", "Pick another symbol with the search box above.");
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

  initialView() {
    const n = this.bars.length;
    const ts = this.chart.timeScale();
    if (n <= INITIAL_BARS) ts.fitContent();
    else ts.setVisibleLogicalRange({ from: n - INITIAL_BARS, to: n - 1 + 6 });
  }

  onRange() {
    if (this.historyPending || this.historyDone || !this.bars.length) return;
    const range = this.chart.timeScale().getVisibleLogicalRange();
    if (range && range.from < EDGE) this.requestHistory();
  }

  requestHistory() {
    const end = formatDate(this.bars[0].time);
    if (this.feed.history(this.source, this.name, this.interval, end, HISTORY_COUNT)) {
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
    const idx = param && param.time !== undefined && param.point
      ? indexOfTime(this.bars, param.time) : -1;
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
    const n = this.bars.length;
    const last = previousReal(this.bars, n - 1);
    const at = last ? indexOfTime(this.bars, last.time) : -1;
    this.quote = renderQuote(this.quoteEl, {
      last, previous: at > 0 ? previousReal(this.bars, at - 1) : null, precision: this.precision,
    });
    if (!this.hovering) this.renderLegendAt(n - 1);
  }

  renderHead() {
    this.symbolEl.textContent = this.name || "No symbol";
    const d = this.details;
    const label = d?.name_label !== this.name ? d?.name_label : null;
    const parts = [label, d?.source_label || this.source].filter(Boolean);
    this.labelEl.textContent = parts.join(" · ");
    this.labelEl.title = parts.join(" · ");
    this.intervalEl.textContent = this.interval ? intervalLabel(this.interval) : "";
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
    if (this.series) {
      this.series.applyOptions(this.kind === "line" ? lineOptions(theme) : candleOptions(theme));
    }
    if (this.volume) this.volume.setData(this.bars.map((b) => this.volumeBar(b)));
  }

  setZone(zone) {
    this.zone = zone;
    this.chart.applyOptions({
      localization: { timeFormatter: (t) => this.timeText(t) },
      timeScale: { tickMarkFormatter: (t, type) => tickMark(t, type, this.zone, this.step()) },
    });
    this.refreshText();
  }

  setActive(active) {
    this.el.classList.toggle("active", active);
  }
}
