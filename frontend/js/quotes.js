// Quotes: the last price of a symbol and its change vs the previous daily close, shared by
// the chart headers and the watchlist so that both show the same figure for one symbol.
// A quote comes from the 1d series (or the offered interval closest to a day): last = the
// forming bar's close, reference = the close of the bar before it (the forming bar's open
// when the source has no previous bar). Emits "quote" (detail: the symbol's id) on change.

import { closeOf, convertAll, converter } from "./bars.js";
import { change, formatPrice, precisionFor } from "./format.js";
import { nearest } from "./intervals.js";

export const quoteId = (source, name) => `${source}:${name}`;

export const REFERENCE_TEXT = "Change vs the previous daily close";

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
      if (!known.details && details) known.details = details;
      return;
    }
    const interval = nearest("1d", details?.intervals);
    const entry = {
      id, source, name, details, interval, bars: [], users: 1, unavailable: false,
      convert: converter(source, name, interval, details?.type || "candlestick"),
    };
    entry.consumer = {
      onInit: (m) => this.onInit(entry, m),
      onUpdate: (m) => this.onUpdate(entry, m),
      onError: () => { entry.unavailable = true; this.emit(entry); },
    };
    this.entries.set(id, entry);
    this.feed.subscribe(source, name, interval, entry.consumer, 2);
  }

  unwatch(source, name) {
    const entry = this.entries.get(quoteId(source, name));
    if (!entry) return;
    entry.users -= 1;
    if (entry.users > 0) return;
    this.entries.delete(entry.id);
    this.feed.unsubscribe(entry.source, entry.name, entry.interval, entry.consumer);
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
    if (!entry.details && message.metadata && typeof message.metadata === "object") {
      entry.details = message.metadata; // opened from the URL: the kind is known only now
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
