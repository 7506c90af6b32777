// PanelHead: the header line of a chart: symbol (readable name), interval, description and
// exchange/source, the compared symbol with its remove button (and the interval it is drawn
// at when not the chart's, or why nothing is drawn), the countdown to the bar close, and the
// quote (last price and change vs the previous daily close). DOM only.

import { element, keepFocus } from "./dom.js";
import { displayName } from "./format.js";
import { label as intervalLabel } from "./intervals.js";
import { renderQuote } from "./legend.js";
import { REFERENCE_TEXT } from "./quotes.js";

export class PanelHead {
  constructor(parent) {
    const head = element("header", "panel-head", parent);
    this.symbolEl = element("span", "panel-symbol", head);
    this.intervalEl = element("span", "panel-interval", head);
    this.labelEl = element("span", "panel-label", head);
    this.compareEl = element("span", "panel-compare", head);
    this.countdownEl = element("span", "countdown", head);
    this.countdownEl.title = "Time left until this bar closes";
    this.quoteEl = element("span", "quote", head);
  }

  /** Symbol, interval, description and exchange/source. */
  show({ source, name, interval, details }) {
    const shown = displayName(name, details);
    this.symbolEl.textContent = shown || "No symbol";
    this.symbolEl.title = name || ""; // in full: the header cuts a long one
    const description = details?.name_label && details.name_label !== name
      && details.name_label !== shown ? details.name_label : null;
    const exchange = details?.source_label || source;
    const parts = [description, exchange].filter(Boolean);
    this.labelEl.textContent = parts.join(" · ");
    this.labelEl.title = [description && `Description: ${description}`,
      exchange && `Exchange / source: ${exchange}`].filter(Boolean).join("\n");
    this.intervalEl.textContent = interval ? intervalLabel(interval) : "";
  }

  /** The quote: a shared one ({price, change}) or, until it comes, the chart's last close. */
  showQuote({ shared, last, precision }) {
    const quote = shared?.price
      ? renderQuote(this.quoteEl, { price: shared.price, change: shared.change })
      : renderQuote(this.quoteEl, { last, precision });
    this.quoteEl.title = `Last price; ${REFERENCE_TEXT.toLowerCase()}`;
    return quote;
  }

  showCountdown(text) {
    if (this.countdownEl.textContent !== text) this.countdownEl.textContent = text;
  }

  /** The compared symbol ({name, details}) with a remove button, or nothing; `note`
   * ({text, title, problem}, or null) says at which interval it is drawn, or why not. */
  showCompare(target, onRemove, note = null) {
    // Its × used from the keyboard: it goes on to the toolbar's Compare button (keepFocus).
    keepFocus(this.compareEl, "button", () => this.renderCompare(target, onRemove, note),
      document.getElementById("compare-button"));
  }

  renderCompare(target, onRemove, note) {
    if (!target) {
      this.compareEl.replaceChildren();
      return;
    }
    const remove = element("button", "compare-remove", null, "×");
    remove.type = "button";
    remove.title = `Stop comparing with ${target.name}`;
    remove.setAttribute("aria-label", remove.title);
    remove.addEventListener("click", (e) => {
      e.stopPropagation();
      onRemove();
    });
    const text = `vs ${displayName(target.name, target.details)}`;
    const parts = [element("span", "compare-swatch"), element("span", "compare-name", null, text)];
    if (note) {
      const noteEl = element("span", `compare-note${note.problem ? " problem" : ""}`, null,
        note.text);
      noteEl.title = note.title;
      parts.push(noteEl);
    }
    this.compareEl.classList.toggle("problem", Boolean(note?.problem));
    this.compareEl.title = note?.title || "";
    this.compareEl.replaceChildren(...parts, remove);
  }

  clear() {
    this.quoteEl.replaceChildren();
    this.quoteEl.className = "quote";
    this.showCountdown("");
  }
}
