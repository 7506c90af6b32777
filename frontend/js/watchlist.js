// Watchlist: the symbols opened in any chart (kept in localStorage), each with its last price
// and its change vs the previous daily close, updating live. The quote comes from the 1d
// series (or the offered interval closest to a day): last = the forming bar's close,
// change = vs the close of the bar before it (or vs the forming bar's open when the source
// has no previous bar). Clicking a row opens the symbol in the active chart.

import { closeOf, convertAll, converter } from "./bars.js";
import { span } from "./dom.js";
import { change, formatPrice, precisionFor } from "./format.js";
import { nearest } from "./intervals.js";

const STORAGE_KEY = "candlewire.watchlist";
const MAX_ENTRIES = 30;

const idOf = (source, name) => `${source}:${name}`;

export class Watchlist {
  constructor({ list, feed, onPick }) {
    this.list = list;
    this.feed = feed;
    this.onPick = onPick;
    this.entries = new Map();
    this.current = null;
    list.addEventListener("click", (e) => this.onClick(e));
  }

  load() {
    let saved = [];
    try {
      saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]");
    } catch {
      saved = [];
    }
    for (const s of Array.isArray(saved) ? saved : []) {
      if (s && s.source && s.name) this.add(s.source, s.name, s.details || null, false);
    }
    this.render();
  }

  save() {
    const rows = [...this.entries.values()].map((e) => ({
      source: e.source, name: e.name, details: e.details,
    }));
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(rows));
    } catch {
      // private mode or quota: the watchlist simply is not remembered
    }
  }

  has(source, name) {
    return this.entries.has(idOf(source, name));
  }

  add(source, name, details, persist = true) {
    const id = idOf(source, name);
    if (this.entries.has(id)) return;
    if (this.entries.size >= MAX_ENTRIES) this.remove(this.entries.keys().next().value);
    const interval = nearest("1d", details?.intervals);
    const entry = {
      id, source, name, details, interval, bars: [], unavailable: false, el: null, shown: null,
    };
    entry.convert = converter(source, name, interval, details?.type || "candlestick");
    entry.consumer = {
      onInit: (m) => this.onInit(entry, m),
      onUpdate: (m) => this.onUpdate(entry, m),
      onError: () => { entry.unavailable = true; this.renderEntry(entry); },
    };
    this.entries.set(id, entry);
    this.feed.subscribe(source, name, interval, entry.consumer, 2);
    if (persist) {
      this.save();
      this.render();
    }
  }

  remove(id) {
    const entry = this.entries.get(id);
    if (!entry) return;
    this.feed.unsubscribe(entry.source, entry.name, entry.interval, entry.consumer);
    this.entries.delete(id);
    this.save();
    this.render();
  }

  setCurrent(source, name) {
    this.current = source ? idOf(source, name) : null;
    for (const entry of this.entries.values()) {
      entry.el?.classList.toggle("current", entry.id === this.current);
    }
  }

  onInit(entry, message) {
    const bars = convertAll(message.data, entry.convert).filter((b) => closeOf(b) !== null);
    if (!bars.length) return;
    entry.unavailable = false;
    entry.bars = bars.slice(-2);
    this.renderEntry(entry);
  }

  onUpdate(entry, message) {
    const bar = entry.convert(message.data);
    const last = entry.bars[entry.bars.length - 1];
    if (!bar || closeOf(bar) === null || (last && bar.time < last.time)) return;
    entry.unavailable = false;
    if (last && bar.time === last.time) entry.bars[entry.bars.length - 1] = bar;
    else entry.bars = [...entry.bars, bar].slice(-2);
    this.renderEntry(entry);
  }

  onClick(event) {
    const row = event.target.closest("li[data-id]");
    if (!row) return;
    const entry = this.entries.get(row.dataset.id);
    if (!entry) return;
    if (event.target.closest(".wl-remove")) {
      event.stopPropagation();
      this.remove(entry.id);
      return;
    }
    this.onPick(entry.source, entry.name, entry.details);
  }

  render() {
    const rows = [...this.entries.values()].map((entry) => {
      const li = document.createElement("li");
      li.dataset.id = entry.id;
      const label = entry.details?.name_label || "";
      const source = entry.details?.source_label || entry.source;
      li.title = [entry.name, label, source].filter(Boolean).join(" · ");
      entry.lastEl = span("wl-last");
      entry.changeEl = span("wl-change");
      const remove = document.createElement("button");
      remove.className = "wl-remove";
      remove.type = "button";
      remove.title = `Remove ${entry.name} from the watchlist`;
      remove.setAttribute("aria-label", remove.title);
      remove.textContent = "×";
      li.append(span("wl-symbol", entry.name), entry.lastEl,
        span("wl-label", label && label !== entry.name ? `${label} · ${source}` : source),
        entry.changeEl, remove);
      li.classList.toggle("current", entry.id === this.current);
      entry.el = li;
      entry.shown = null;
      this.renderEntry(entry);
      return li;
    });
    if (!rows.length) {
      const empty = document.createElement("li");
      empty.className = "wl-empty";
      empty.textContent = "Symbols you open appear here.";
      rows.push(empty);
    }
    this.list.replaceChildren(...rows);
  }

  renderEntry(entry) {
    if (!entry.el) return;
    const { lastEl, changeEl } = entry;
    const last = entry.bars[entry.bars.length - 1];
    if (entry.unavailable || !last) {
      lastEl.textContent = entry.unavailable ? "n/a" : "…";
      changeEl.textContent = "";
      return;
    }
    const base = entry.bars.length > 1 ? closeOf(entry.bars[0]) : last.open ?? null;
    const precision = precisionFor(entry.details, entry.bars);
    const ch = change(closeOf(last), base, precision);
    const text = formatPrice(closeOf(last), precision);
    if (entry.shown !== null && entry.shown !== closeOf(last)) {
      const flash = closeOf(last) > entry.shown ? "flash-up" : "flash-down";
      entry.el.classList.remove("flash-up", "flash-down");
      void entry.el.offsetWidth; // restart the animation
      entry.el.classList.add(flash);
    }
    entry.shown = closeOf(last);
    lastEl.textContent = text;
    changeEl.textContent = ch.pct || "0.00%";
    changeEl.className = `wl-change dir-${ch.direction}`;
  }
}
