// SymbolSearch: a search box (the symbol search, the compare box). Sends search_data as the
// user types (debounced), lists symbol, description, category and source, each once (see
// rowText), and is driven by the keyboard (up, down, enter, escape) or the mouse. Picking a
// row calls onPick(row).

import { element, span } from "./dom.js";
import { displayName } from "./format.js";

const DEBOUNCE_MS = 150;
const LIMIT = 100; // the hub returns at most this many rows

const same = (a, b) => String(a ?? "").toLowerCase() === String(b ?? "").toLowerCase();

/**
 * The texts of a result row, none repeating another: a line series is listed by its label
 * (`macro dollar_index`) with its symbol beside it; a label equal to the symbol and a
 * category equal to the source are left out ("BTCUSD · CSV", not "BTCUSD BTCUSD CSV CSV").
 */
export function rowText(row) {
  const d = row.details || {};
  const name = d.name || row.name || row.id || "";
  const symbol = displayName(name, d);
  const source = d.source_label || d.source || "";
  const labels = [d.name_label, name].filter((t) => t && !same(t, symbol));
  const categories = (d.categories || [])
    .filter((c) => !same(c, source) && !same(c, d.source) && !same(c, symbol));
  return {
    symbol,
    label: labels[0] || "",
    category: categories.join(", "),
    type: d.type === "line" ? "line" : "",
    source,
  };
}

export class SymbolSearch {
  constructor({ input, list, feed, onPick }) {
    this.input = input;
    this.list = list;
    this.feed = feed;
    this.onPick = onPick;
    this.results = [];
    this.selected = -1;
    this.seq = 0;
    this.timer = null;
    this.shown = null; // the query whose results are listed
    input.setAttribute("role", "combobox");
    input.setAttribute("aria-autocomplete", "list");
    input.setAttribute("aria-expanded", "false");
    input.setAttribute("aria-controls", list.id);
    list.setAttribute("role", "listbox");
    input.addEventListener("input", () => this.schedule());
    input.addEventListener("focus", () => { input.select(); this.run(input.value); });
    input.addEventListener("blur", () => setTimeout(() => {
      if (document.activeElement !== input) this.close(); // not when it was focused again
    }, 120));
    input.addEventListener("keydown", (e) => this.onKey(e));
    list.addEventListener("mousedown", (e) => e.preventDefault()); // keep focus in the input
    list.addEventListener("click", (e) => {
      const li = e.target.closest("li[data-i]");
      if (li) this.pick(Number(li.dataset.i));
    });
  }

  focus() {
    this.input.focus();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(this.input.value), DEBOUNCE_MS);
  }

  async run(text) {
    const seq = ++this.seq;
    if (!this.feed.connected && document.activeElement === this.input) {
      // Say so now: the search waits for the reconnect, and its matches replace this note.
      this.results = [];
      this.shown = null;
      this.selected = -1;
      this.render(text.trim(), true);
    }
    const results = await this.feed.search(text.trim());
    if (seq !== this.seq || document.activeElement !== this.input) return;
    this.results = results || [];
    this.shown = text.trim();
    this.selected = this.results.length ? 0 : -1;
    this.render(text.trim(), results === null);
  }

  render(text, offline) {
    const items = this.results.map((row, i) => this.row(row, i));
    if (offline) {
      items.push(this.note("Not connected to the server; retrying…"));
    } else if (!this.results.length) {
      items.push(text
        ? this.note(`No symbol matches “${text}”`)
        : this.note("No symbols yet: run ", "python populate.py"));
    } else if (this.results.length >= LIMIT) {
      items.push(this.note(`Showing the first ${LIMIT} matches; type more to narrow`));
    }
    this.list.replaceChildren(...items);
    this.list.dataset.text = text; // what the list shows the results of (tests read it)
    this.list.hidden = false;
    this.input.setAttribute("aria-expanded", "true");
    this.highlight();
  }

  row(row, i) {
    const li = document.createElement("li");
    li.dataset.i = String(i);
    li.id = `${this.list.id}-opt-${i}`;
    li.setAttribute("role", "option");
    const text = rowText(row);
    li.append(
      span("sr-symbol", text.symbol),
      span("sr-label", text.label),
      span("sr-category", text.category),
      span("sr-type", text.type),
      span("sr-source", text.source),
    );
    return li;
  }

  note(text, code = "") {
    const li = element("li", "sr-note", null, text);
    if (code) element("code", "", li, code);
    return li;
  }

  highlight() {
    for (const li of this.list.querySelectorAll("li[data-i]")) {
      const on = Number(li.dataset.i) === this.selected;
      li.classList.toggle("selected", on);
      li.setAttribute("aria-selected", String(on));
      if (on) li.scrollIntoView({ block: "nearest" });
    }
    this.input.setAttribute("aria-activedescendant",
      this.selected >= 0 ? `${this.list.id}-opt-${this.selected}` : "");
  }

  onKey(event) {
    const n = this.results.length;
    switch (event.key) {
      case "ArrowDown":
        event.preventDefault();
        if (this.list.hidden) this.run(this.input.value);
        else if (n) this.selected = (this.selected + 1) % n;
        break;
      case "ArrowUp":
        event.preventDefault();
        if (n) this.selected = (this.selected - 1 + n) % n;
        break;
      case "Enter":
        event.preventDefault();
        if (this.input.value.trim() !== this.shown) {
          // Enter before the results of what was typed arrived: search now, then open.
          clearTimeout(this.timer);
          this.run(this.input.value).then(() => this.pick(this.selected, true));
          return;
        }
        this.pick(this.selected, true);
        return;
      case "Escape":
        event.preventDefault();
        this.close();
        this.input.blur();
        return;
      default:
        return;
    }
    this.highlight();
  }

  /** `byKey`: picked with Enter (onPick may move the keyboard on), not with the mouse. */
  pick(i, byKey = false) {
    const row = this.results[i];
    if (!row) return;
    this.close();
    this.input.value = "";
    this.input.blur();
    this.onPick(row, byKey);
  }

  close() {
    clearTimeout(this.timer);
    this.seq += 1; // drop replies still on their way
    this.shown = null;
    this.list.hidden = true;
    this.input.setAttribute("aria-expanded", "false");
  }
}
