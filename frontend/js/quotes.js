// Quotes: the last price of a symbol and its change vs the previous daily close, shared by
// the chart headers and the watchlist so that both show the same figure for one symbol.
// A quote comes from the 1d series (or the offered interval closest to a day): last = the
// forming bar's close, reference = the close of the bar before it (the forming bar's open
// when the source has no previous bar). Emits "quote" (detail: the symbol's id) on change.
// A symbol watched before its intervals are known (a chart opened from a link) waits for
// them (`learn`, from the chart's data_init) rather than asking for a 1d series it may not
// offer (the server's refusal showed as a toast); after GUESS_AFTER_MS it asks for 1d.
// A quote's `state` says what there is to show: "loading" (no answer yet), "ok" (a price),
// "nodata" (the source has no bars) or "failed" (`problem`: the server refused or could not
// serve it: unknown symbol, no access, source unavailable). The refusal is the row's to show
// (no toast). What may pass (a source down, a budget spent) is asked again after a while.

import { closeOf, convertAll, converter } from "./bars.js";
import { NOT_SERVED, change, formatPrice, precisionFor } from "./format.js";
import { nearest } from "./intervals.js";

export const quoteId = (source, name) => `${source}:${name}`;

export const REFERENCE_TEXT = "Change vs the previous daily close";

const GUESS_AFTER_MS = 5000;
// Failures that may pass: asked again after RETRY_MS, doubling up to RETRY_MAX_MS (a
// rate_limited refusal says when itself).
const PASSING = new Set([
  "provider_unavailable", "provider_error", "internal_error", "rate_limited", "max_connections",
]);
const RETRY_MS = 5000;
const RETRY_MAX_MS = 300000;

export class Quotes extends EventTarget {
  constructor(feed) {
    super();
    this.feed = feed;
    this.entries = new Map(); // id -> {source, name, details, interval, bars, users, ...}
  }

  /** Start following a symbol (reference counted). */
  watch(source, name, details) {
    const id = quoteId(source, name);
    const known = this.entries.get(id);
    if (known) {
      known.users += 1;
      if (details) this.learn(source, name, details);
      return;
    }
    const entry = {
      id, source, name, details: null, interval: null, bars: [], users: 1, problem: null,
      answered: false, convert: null, timer: null, retryTimer: null, retries: 0,
    };
    entry.consumer = {
      onInit: (m) => this.onInit(entry, m),
      onUpdate: (m) => this.onUpdate(entry, m),
      onError: (m) => this.onError(entry, m),
    };
    this.entries.set(id, entry);
    if (details) this.learn(source, name, details);
    else entry.timer = setTimeout(() => this.follow(entry, "1d"), GUESS_AFTER_MS);
  }

  /** The symbol's details (its intervals) are known now: follow its daily interval, or the
   * offered one closest to a day. */
  learn(source, name, details) {
    const entry = this.entries.get(quoteId(source, name));
    if (!entry || !details || typeof details !== "object") return;
    if (!entry.details) entry.details = details;
    this.follow(entry, nearest("1d", details.intervals));
  }

  /** Subscribe `entry` to `interval` (leaving the one it followed, if another). */
  follow(entry, interval) {
    clearTimeout(entry.timer);
    entry.timer = null;
    if (entry.interval === interval) return;
    if (entry.interval) {
      this.feed.unsubscribe(entry.source, entry.name, entry.interval, entry.consumer);
    }
    entry.interval = interval;
    entry.bars = [];
    this.settle(entry);
    entry.answered = false;
    entry.convert = converter(entry.source, entry.name, interval,
      entry.details?.type || "candlestick");
    this.feed.subscribe(entry.source, entry.name, interval, entry.consumer, 2);
  }

  unwatch(source, name) {
    const entry = this.entries.get(quoteId(source, name));
    if (!entry) return;
    entry.users -= 1;
    if (entry.users > 0) return;
    this.entries.delete(entry.id);
    clearTimeout(entry.timer);
    clearTimeout(entry.retryTimer);
    if (entry.interval) {
      this.feed.unsubscribe(entry.source, entry.name, entry.interval, entry.consumer);
    }
  }

  /**
   * {state, problem, price, value, change: {text, pct, direction}} of a symbol, or null;
   * without a price (price null) the state says why. `problem` ({code, message}) may stand
   * beside a price held from before (the last request failed).
   */
  get(source, name) {
    const entry = this.entries.get(quoteId(source, name));
    if (!entry) return null;
    const last = entry.bars[entry.bars.length - 1];
    const { problem } = entry;
    if (!last) {
      const state = problem ? "failed" : entry.answered ? "nodata" : "loading";
      return { state, problem, price: null };
    }
    const base = entry.bars.length > 1 ? closeOf(entry.bars[0]) : last.open ?? null;
    const precision = precisionFor(entry.details, entry.bars);
    return {
      state: "ok",
      problem,
      value: closeOf(last),
      price: formatPrice(closeOf(last), precision),
      change: change(closeOf(last), base, precision),
    };
  }

  onInit(entry, message) {
    if (message.interval && message.interval !== entry.interval) return; // one it left
    if (!entry.details && message.metadata && typeof message.metadata === "object") {
      entry.details = message.metadata; // guessed 1d: the kind is known only now
      entry.convert = converter(entry.source, entry.name, entry.interval,
        entry.details.type || "candlestick");
    }
    const bars = convertAll(message.data, entry.convert).filter((b) => closeOf(b) !== null);
    const first = !entry.answered;
    entry.answered = true;
    if (!bars.length) {
      if (first) this.emit(entry); // "nodata", unless a refusal says more (it comes next)
      return;
    }
    this.settle(entry);
    entry.bars = bars.slice(-2);
    this.emit(entry);
  }

  /**
   * The server did not serve the quote's series: the row says why (true: taken in hand, no
   * toast). Only refusals of its own `data` request: a chart's scroll-back on the same
   * series failing says nothing about the quote.
   */
  onError(entry, message) {
    const request = message.request;
    if (request?.type !== "data" || request.interval !== entry.interval) return false;
    const code = message.code || "error";
    entry.problem = { code, message: message.message || code };
    if (NOT_SERVED.has(code)) entry.bars = []; // stale
    clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
    if (PASSING.has(code)) {
      const wait = code === "rate_limited" && Number.isFinite(message.retry_after)
        ? Math.max(message.retry_after * 1000, 1000)
        : Math.min(RETRY_MS * 2 ** entry.retries, RETRY_MAX_MS);
      entry.retryTimer = setTimeout(() => this.retry(entry), wait);
    }
    this.emit(entry);
    return true;
  }

  /** Ask again for a series whose request failed in a way that may pass. */
  retry(entry) {
    entry.retryTimer = null;
    if (this.entries.get(entry.id) !== entry || !entry.problem || !entry.interval) return;
    entry.retries += 1;
    this.feed.subscribe(entry.source, entry.name, entry.interval, entry.consumer, 2);
  }

  /** Bars came: whatever failed before is over. */
  settle(entry) {
    entry.problem = null;
    entry.retries = 0;
    clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
  }

  onUpdate(entry, message) {
    if (message.interval && message.interval !== entry.interval) return;
    const bar = entry.convert(message.data);
    const last = entry.bars[entry.bars.length - 1];
    if (!bar || closeOf(bar) === null || (last && bar.time < last.time)) return;
    this.settle(entry);
    if (last && bar.time === last.time) entry.bars[entry.bars.length - 1] = bar;
    else entry.bars = [...entry.bars, bar].slice(-2);
    this.emit(entry);
  }

  emit(entry) {
    this.dispatchEvent(new CustomEvent("quote", { detail: entry.id }));
  }
}
