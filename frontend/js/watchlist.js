// Watchlist: the symbols opened in any chart (kept in localStorage), each with its last price
// and its change vs the previous daily close, updating live from the shared Quotes (the same
// figures as the chart headers), or what stands in their way (a symbol gone, a source down,
// one the token may not read, no bars). Clicking a row opens the symbol in the active chart.

import { keepFocus, span } from "./dom.js";
import { displayName, sentence, unservedText } from "./format.js";
import { quoteId } from "./quotes.js";

const STORAGE_KEY = "candlewire.watchlist";
const MAX_ENTRIES = 30;
const FLASH_MS = 800; // a price that moved keeps the colour of its move this long

const idOf = quoteId;

export class Watchlist {
  constructor({ list, quotes, onPick }) {
    this.list = list;
    this.quotes = quotes;
    this.onPick = onPick;
    this.entries = new Map();
    this.current = null;
    list.addEventListener("click", (e) => this.onClick(e));
    list.addEventListener("keydown", (e) => this.onKey(e));
    quotes.addEventListener("quote", (e) => {
      const entry = this.entries.get(e.detail);
      if (entry) this.renderEntry(entry);
    });
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
    const entry = { id, source, name, details, el: null, shown: null };
    this.entries.set(id, entry);
    this.quotes.watch(source, name, details);
    if (persist) {
      this.save();
      this.render();
    }
  }

  remove(id) {
    const entry = this.entries.get(id);
    if (!entry) return;
    this.quotes.unwatch(entry.source, entry.name);
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

  /** Enter or Space on a focused row opens it, as a click does. */
  onKey(event) {
    if (event.key !== "Enter" && event.key !== " ") return;
    const row = event.target.closest("li[data-id]");
    if (!row || event.target !== row) return; // the remove button handles its own keys
    event.preventDefault();
    row.click();
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
    // A row or its × used from the keyboard: it stays on the rows (keepFocus; a row, as its
    // × is hidden until its row has focus).
    keepFocus(this.list, "li[data-id]", () => this.renderRows(),
      document.getElementById("watchlist-toggle"));
  }

  renderRows() {
    const rows = [...this.entries.values()].map((entry) => {
      const li = document.createElement("li");
      li.dataset.id = entry.id;
      li.tabIndex = 0; // reachable with Tab; Enter or Space opens it (onKey)
      const label = entry.details?.name_label || "";
      const source = entry.details?.source_label || entry.source;
      entry.title = [entry.name, label, source].filter(Boolean).join(" · ");
      li.title = entry.title;
      entry.lastEl = span("wl-last");
      entry.changeEl = span("wl-change");
      const remove = document.createElement("button");
      remove.className = "wl-remove";
      remove.type = "button";
      remove.title = `Remove ${entry.name} from the watchlist`;
      remove.setAttribute("aria-label", remove.title);
      remove.textContent = "×";
      li.append(span("wl-symbol", displayName(entry.name, entry.details)), entry.lastEl,
        span("wl-label", label && label !== displayName(entry.name, entry.details)
          && label !== entry.name ? `${label} · ${source}` : source),
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

  /** The row's price in the colour of its move for FLASH_MS: a class set, then removed.
   * Not a CSS animation, which restyled and repainted the page at every frame while it ran,
   * so a watchlist that ticked a few times a second cost the browser a fifth of a core. */
  flash(entry, name) {
    const { el } = entry;
    el.classList.remove(name === "flash-up" ? "flash-down" : "flash-up");
    el.classList.add(name);
    clearTimeout(entry.flashTimer);
    entry.flashTimer = setTimeout(() => el.classList.remove(name), FLASH_MS);
  }

  renderEntry(entry) {
    if (!entry.el) return;
    const { lastEl, changeEl } = entry;
    const quote = this.quotes.get(entry.source, entry.name);
    // A failed request is said in the row's tooltip, and instead of the price when there is
    // none (not found, no access, unavailable, no data); "…" only while the answer is due.
    const problem = quote?.problem ? sentence(quote.problem.message) : "";
    entry.el.title = [entry.title, problem].filter(Boolean).join("\n");
    const state = quote?.price === null || !quote ? quote?.state || "loading" : "ok";
    entry.el.dataset.state = state;
    if (state !== "ok") {
      lastEl.textContent = { failed: unservedText(quote?.problem?.code), nodata: "no data" }[state]
        || "…";
      lastEl.title = state === "loading" ? "Waiting for the server" : problem || "No bars";
      changeEl.textContent = "";
      return;
    }
    lastEl.title = "";
    if (entry.shown !== null && entry.shown !== quote.value) {
      this.flash(entry, quote.value > entry.shown ? "flash-up" : "flash-down");
    }
    entry.shown = quote.value;
    lastEl.textContent = quote.price;
    changeEl.textContent = quote.change.pct || "0.00%";
    changeEl.className = `wl-change dir-${quote.change.direction}`;
  }
}
