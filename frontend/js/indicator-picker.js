// IndicatorPicker: the toolbar's Indicators button, its search box over the server's
// catalogue (search_indicators, as the user types) and the inputs dialog. Picking an entry
// adds it with its default inputs (onPick); the dialog edits an indicator's inputs (numbers
// within the catalogue's min and max).

import { element } from "./dom.js";

const DEBOUNCE_MS = 150;
const CLOSE_DELAY_MS = 150; // let a click on a result land before the box closes

export class IndicatorPicker {
  constructor({ button, box, input, list, feed, onPick }) {
    this.button = button;
    this.box = box;
    this.input = input;
    this.list = list;
    this.feed = feed;
    this.onPick = onPick;
    this.results = [];
    this.selected = 0;
    this.seq = 0;
    this.timer = null;
    this.shown = null; // the text whose results are listed
    button.addEventListener("click", () => (box.hidden ? this.open() : this.close()));
    input.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.run(), DEBOUNCE_MS);
    });
    input.addEventListener("keydown", (e) => this.onKey(e));
    input.addEventListener("blur", () => setTimeout(() => {
      if (document.activeElement !== input) this.close(); // not when it was opened again
    }, CLOSE_DELAY_MS));
    list.addEventListener("mousedown", (e) => e.preventDefault()); // keep focus in the input
    list.addEventListener("click", (e) => {
      const li = e.target.closest("li[data-i]");
      if (li) this.pick(Number(li.dataset.i));
    });
  }

  open() {
    this.box.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.input.value = "";
    this.list.replaceChildren();
    this.input.focus();
    this.run();
  }

  close() {
    clearTimeout(this.timer);
    this.seq += 1; // drop replies still on their way
    this.shown = null;
    this.box.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
  }

  async run() {
    const seq = ++this.seq;
    const text = this.input.value.trim();
    const rows = await this.feed.searchIndicators(text);
    if (seq !== this.seq) return;
    this.results = rows || [];
    this.shown = text;
    this.list.dataset.text = text; // what the list shows the results of (tests read it)
    this.selected = 0;
    this.render(rows === null);
  }

  render(offline) {
    if (!this.results.length) {
      const text = offline ? "Not connected" : "No indicator found";
      this.list.replaceChildren(element("li", "sr-note", null, text));
      return;
    }
    this.list.replaceChildren(...this.results.map((row, i) => {
      const li = element("li", i === this.selected ? "selected" : "");
      li.dataset.i = String(i);
      li.setAttribute("role", "option");
      element("span", "sr-symbol", li, row.id.split(".").pop());
      element("span", "sr-label", li, row.name || "");
      element("span", "sr-category", li, (row.details?.categories || [])[0] || "");
      return li;
    }));
  }

  onKey(event) {
    const n = this.results.length;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      if (!n) return;
      this.selected = (this.selected + (event.key === "ArrowDown" ? 1 : n - 1)) % n;
      this.render(false);
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (this.input.value.trim() !== this.shown) {
        // Enter before the results of what was typed arrived (typed fast, or within the
        // debounce): the list is still the one of the text before, so search now, then pick.
        clearTimeout(this.timer);
        const seq = this.seq + 1;
        this.run().then(() => {
          if (seq === this.seq && !this.box.hidden && this.results.length) {
            this.pick(0);
            this.button.focus();
          }
        });
      } else if (n) {
        this.pick(this.selected);
        this.button.focus(); // the keyboard carries on from the button, not from the page top
      }
    } else if (event.key === "Escape") {
      this.close();
      this.button.focus();
    }
  }

  pick(i) {
    const row = this.results[i];
    if (!row) return;
    this.close();
    this.onPick(row);
  }
}

/** The inputs dialog: one number field per input of a catalogue entry. */
export class IndicatorDialog {
  constructor(dialog) {
    this.dialog = dialog;
    this.title = dialog.querySelector("h2");
    this.fields = dialog.querySelector(".indicator-inputs");
    this.onApply = null;
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "ok" && this.onApply) this.onApply(this.values());
      this.onApply = null;
    });
  }

  /** Edit `instance` ({def, inputs, label}); onApply({name: value}) when applied. */
  open(instance, onApply) {
    this.title.textContent = instance.def?.name || instance.label;
    this.fields.replaceChildren(...(instance.def?.details?.inputs || []).map((spec) => {
      const label = element("label", "indicator-input");
      element("span", "", label, spec.name);
      const input = element("input", "", label);
      input.type = "number";
      input.name = spec.name;
      input.step = "any";
      if (spec.min !== undefined && spec.min !== null) input.min = String(spec.min);
      if (spec.max !== undefined && spec.max !== null) input.max = String(spec.max);
      input.value = String(instance.inputs[spec.name] ?? spec.default?.[0] ?? "");
      return label;
    }));
    this.onApply = onApply;
    this.dialog.returnValue = "";
    this.dialog.showModal();
  }

  values() {
    const inputs = {};
    for (const input of this.fields.querySelectorAll("input")) {
      const n = Number(input.value);
      inputs[input.name] = input.value !== "" && Number.isFinite(n) ? n : input.value;
    }
    return inputs;
  }
}
