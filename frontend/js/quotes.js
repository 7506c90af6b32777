// Quotes: the last price of a symbol and its change vs the previous daily close, shared by
// the chart headers and the watchlist so that both show the same figure for one symbol.
// A quote comes from the 1d series (or the offered interval closest to a day): last = the
// forming bar's close, reference = the close of the bar before it (the forming bar's open
// when the source has no previous bar). Emits "quote" (detail: the symbol's id) on change.
// A symbol watched before its intervals are known (a chart opened from a link) waits for
// them (`learn`, from the chart's data_init) rather than asking for a 1d series it may not
// offer (the server's refusal showed as a toast); after GUESS_AFTER_MS it asks for 1d.

import { closeOf, convertAll, converter } from "./bars.js";
import { change, formatPrice, precisionFor } from "./format.js";
import { nearest } from "./intervals.js";

export const quoteId = (source, name) => `${source}:${name}`;

export const REFERENCE_TEXT = "Change vs the previous daily close";

const GUESS_AFTER_MS = 5000;

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
      id, source, name, details: null, interval: null, bars: [], users: 1, unavailable: false,
      convert: null, timer: null,
    };
    entry.consumer = {
      onInit: (m) => this.onInit(entry, m),
      onUpdate: (m) => this.onUpdate(entry, m),
      onError: () => { entry.unavailable = true; this.emit(entry); },
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
    entry.unavailable = false;
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
    if (entry.interval) {
      this.feed.unsubscribe(entry.source, entry.name, entry.interval, entry.consumer);
    }
  }

  /** {price, value, change: {text, pct, direction}, unavailable} of a symbol, or null. */
  get(source, name) {
    const entry = this.entries.get(quoteId(source, name));
    if (!entry) return null;
    const last = entry.bars[entry.bars.length - 1];
    if (entry.unavailable || !last) return { unavailable: entry.unavailable, price: null };
    const base = entry.bars.length > 1 ? closeOf(entry.bars[0]) : last.open ?? null;
    const precision = precisionFor(entry.details, entry.bars);
    return {
      unavailable: false,
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
    if (!bars.length) return;
    entry.unavailable = false;
    entry.bars = bars.slice(-2);
    this.emit(entry);
  }

  onUpdate(entry, message) {
    if (message.interval && message.interval !== entry.interval) return;
    const bar = entry.convert(message.data);
    const last = entry.bars[entry.bars.length - 1];
    if (!bar || closeOf(bar) === null || (last && bar.time < last.time)) return;
    entry.unavailable = false;
    if (last && bar.time === last.time) entry.bars[entry.bars.length - 1] = bar;
    else entry.bars = [...entry.bars, bar].slice(-2);
    this.emit(entry);
  }

  emit(entry) {
    this.dispatchEvent(new CustomEvent("quote", { detail: entry.id }));
  }
}
