// The alerts UI: the bell in the toolbar opens a box with "price crosses [level] [Add]" for
// the active chart (prefilled with its last price) and the list of this browser's active
// alerts, each with × to delete; a right-click (a long press on phones) on a chart opens a
// one-item menu "Alert when price crosses <level at the pointer>".

import { crossLevel } from "./alerts.js";
import { element, keepFocus } from "./dom.js";
import { displayName } from "./format.js";

function describe(alert) {
  const cross = crossLevel(alert);
  if (!cross) return alert.message;
  return `${displayName(cross.name)} crosses ${cross.level}`;
}

export class AlertPanel {
  constructor({ button, box, form, level, list, count, book, workspace }) {
    Object.assign(this, { button, box, form, level, list, count, book, workspace });
    button.addEventListener("click", () => this.toggle());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.createFor(workspace.active, Number(level.value));
    });
    document.addEventListener("pointerdown", (event) => {
      if (!box.hidden && !box.parentElement.contains(event.target)) this.close();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || box.hidden) return;
      const inside = box.contains(document.activeElement);
      this.close();
      if (inside) button.focus(); // the keyboard carries on from the bell, not the page top
    });
    book.addEventListener("change", () => this.render());
    this.render();
  }

  toggle() {
    if (this.box.hidden) this.open();
    else this.close();
  }

  open() {
    this.box.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    const panel = this.workspace.active;
    const last = panel.bars.length ? panel.bars[panel.bars.length - 1].close : null;
    if (Number.isFinite(last)) this.level.value = last.toFixed(panel.precision);
    this.book.publicKey(); // ask early: the push subscription needs it at the first alert
    this.book.refresh();
  }

  close() {
    this.box.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
  }

  /** An alert "close crosses `level`" on `panel`'s series. */
  createFor(panel, level) {
    if (!panel.source || !Number.isFinite(level)) return;
    const rounded = Number(level.toFixed(panel.precision));
    this.book.create({
      source: panel.source, name: panel.name, interval: panel.interval,
      label: displayName(panel.name, panel.details), level: rounded,
    });
  }

  render() {
    // A × used from the keyboard (or any refresh, e.g. after a firing, while one has focus):
    // it stays on the list (keepFocus), or goes to the level once no alert is left.
    keepFocus(this.list, ".alert-delete", () => this.renderItems(), this.level);
  }

  renderItems() {
    const items = this.book.items;
    this.count.textContent = items.length ? String(items.length) : "";
    this.count.hidden = !items.length;
    if (!items.length) {
      this.list.replaceChildren(element("li", "alert-empty", null, "No active alerts"));
      return;
    }
    this.list.replaceChildren(...items.map((alert) => {
      const li = element("li", "alert-item");
      li.dataset.id = String(alert.id);
      element("span", "alert-text", li, describe(alert)).title = alert.message;
      if (alert.fired) element("span", "alert-fired", li, "fired");
      const del = element("button", "tool icon alert-delete", li, "×");
      del.type = "button";
      del.title = "Delete this alert";
      del.setAttribute("aria-label", `Delete alert ${alert.message}`);
      del.addEventListener("click", () => this.book.remove(alert.id));
      return li;
    }));
  }
}

/** Right-click on a chart: a menu offering an alert at the price under the pointer. */
export class AlertMenu {
  constructor({ grid, workspace, onPick }) {
    this.workspace = workspace;
    this.onPick = onPick;
    this.el = element("div", "alert-menu", document.body);
    this.el.hidden = true;
    this.el.setAttribute("role", "menu");
    this.item = element("button", "alert-menu-item", this.el);
    this.item.type = "button";
    this.item.setAttribute("role", "menuitem");
    this.item.addEventListener("click", () => {
      this.hide();
      if (this.pending) this.onPick(this.pending.panel, this.pending.level);
    });
    grid.addEventListener("contextmenu", (event) => this.show(event));
    document.addEventListener("pointerdown", (event) => {
      if (!this.el.contains(event.target)) this.hide();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.hide();
    });
  }

  show(event) {
    const section = event.target.closest?.(".panel");
    const panel = section && this.workspace.panels[Number(section.dataset.index)];
    if (!panel?.series) return;
    const rect = panel.host.getBoundingClientRect();
    const price = panel.series.coordinateToPrice(event.clientY - rect.top);
    if (price === null || !Number.isFinite(price)) return;
    event.preventDefault();
    const level = Number(price.toFixed(panel.precision));
    this.pending = { panel, level };
    this.item.textContent = `Alert when ${displayName(panel.name, panel.details)} crosses ${level}`;
    this.el.hidden = false;
    const x = Math.min(event.clientX, window.innerWidth - this.el.offsetWidth - 4);
    const y = Math.min(event.clientY, window.innerHeight - this.el.offsetHeight - 4);
    this.el.style.left = `${Math.max(4, x)}px`;
    this.el.style.top = `${Math.max(4, y)}px`;
  }

  hide() {
    this.el.hidden = true;
  }
}
