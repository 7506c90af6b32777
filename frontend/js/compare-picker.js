// ComparePicker: the toolbar's Compare button and its search box; picking a symbol there
// draws it as a line on the active chart (ChartPanel.setCompare).

import { SymbolSearch } from "./search.js";

const CLOSE_DELAY_MS = 150; // let a click on a result land before the box closes

export class ComparePicker {
  constructor({ button, box, input, list, feed, onPick }) {
    this.button = button;
    this.box = box;
    this.input = input;
    this.search = new SymbolSearch({
      input,
      list,
      feed,
      // A pick with Enter (also one made once the results of what was typed arrived, after
      // the key) and Escape blur the input: the keyboard carries on from the button, not
      // from the top of the page. (A click on a result keeps the mouse's focus as it is.)
      onPick: (row, byKey) => {
        this.close();
        if (byKey) button.focus();
        onPick(row);
      },
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Escape") button.focus();
    });
    button.addEventListener("click", () => (this.box.hidden ? this.open() : this.close()));
    input.addEventListener("blur", () => setTimeout(() => {
      if (document.activeElement !== input) this.close(); // not when it was opened again
    }, CLOSE_DELAY_MS));
  }

  open() {
    this.box.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.input.value = "";
    this.search.focus();
  }

  close() {
    this.box.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
  }
}
