// Toolbar controls: the interval picker (14 intervals, only the symbol's own enabled; a row
// of buttons, or a menu where they do not all fit), the chart type and price scale menus, and the
// connection badge. The layout, theme, time-zone and compare buttons are plain buttons in
// index.html wired by main.js.

import { INTERVALS, label, title } from "./intervals.js";

/** A <select> of `choices` ({value: label}); onPick(value) when the user picks one. */
export class ChoiceMenu {
  constructor(select, choices, onPick) {
    this.select = select;
    for (const [value, text] of Object.entries(choices)) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = text;
      select.append(option);
    }
    select.addEventListener("change", () => onPick(select.value));
  }

  /** Select `current`; enable only `offered` (all when not given). */
  show(current, offered = null) {
    for (const option of this.select.options) {
      option.disabled = offered !== null && !offered.includes(option.value);
    }
    this.select.value = current;
  }
}

// The buttons when they all fit in the toolbar's row, else the menu in their place (never a
// clipped or scrolling strip): the toolbar gets .interval-fold. Checked again whenever the
// window or a toolbar item resizes (the badge's text, the alert count), and after each show
// (the current interval's button is bold). The observed sizes never depend on the fold, so
// folding inside the observer's callback cannot loop.
export class IntervalPicker {
  constructor(root, menu, onPick) {
    this.root = root;
    this.toolbar = root.parentElement;
    this.menu = new ChoiceMenu(menu, Object.fromEntries(INTERVALS.map((iv) => [iv, label(iv)])),
      onPick);
    this.buttons = new Map();
    for (const iv of INTERVALS) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "iv";
      button.textContent = label(iv);
      button.dataset.interval = iv;
      button.title = title(iv);
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => onPick(iv));
      this.buttons.set(iv, button);
      root.append(button);
    }
    const observer = new ResizeObserver(() => this.fit());
    observer.observe(document.documentElement);
    for (const el of this.toolbar.querySelectorAll(":scope > .badge, :scope > .tool, .alerts")) {
      observer.observe(el);
    }
  }

  /** Fold the buttons into the menu when, with them, the toolbar's items need a second row. */
  fit() {
    const bar = this.toolbar;
    bar.classList.remove("interval-fold");
    if (!this.root.checkVisibility()) return; // phones show the menu anyway
    const [first, ...rest] = [...bar.children].filter((el) => el.checkVisibility());
    const rowEnd = first.getBoundingClientRect().bottom;
    const wraps = rest.some((el) => el.getBoundingClientRect().top >= rowEnd);
    bar.classList.toggle("interval-fold", wraps);
  }

  /** Mark `current` and enable only `offered` (all when the symbol is not known yet). */
  show(current, offered) {
    for (const [iv, button] of this.buttons) {
      const enabled = !offered || offered.includes(iv);
      button.disabled = !enabled;
      button.title = enabled ? title(iv) : `${title(iv)}: not offered for this symbol`;
      const on = iv === current;
      button.classList.toggle("on", on);
      button.setAttribute("aria-pressed", String(on));
    }
    this.menu.show(current || "", offered || null);
    this.fit();
  }
}

const BADGE_TEXT = {
  connecting: "Connecting",
  live: "Live",
  reconnecting: "Reconnecting",
  offline: "Offline",
  refused: "Refused",
};

export const REFUSED_TEXT = "The server refuses this page's connection: its access token is"
  + " missing, wrong or expired. Open the page as `/?token=<key>`.";

export class Badge {
  constructor(el) {
    this.el = el;
    this.textEl = el.querySelector(".badge-text") || el;
  }

  show(state, connection) {
    this.el.dataset.state = state;
    this.textEl.textContent = BADGE_TEXT[state] || state;
    if (state === "live") {
      this.el.title = "Connected to the server; charts update live";
    } else if (state === "refused") {
      this.el.title = REFUSED_TEXT.replaceAll("`", "");
    } else if (connection && connection.retryAt) {
      const secs = Math.max(0, Math.round((connection.retryAt - Date.now()) / 1000));
      this.el.title = `Connection lost; next attempt in ${secs} s (charts resume by themselves)`;
    } else {
      this.el.title = "Connecting to the server";
    }
  }
}
