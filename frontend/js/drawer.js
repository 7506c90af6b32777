// WatchlistPanel: showing and hiding the watchlist. On a wide screen it is a column beside
// the charts that the toolbar button shows or hides; on a narrow one (below 900 px) it is a
// drawer over the charts that the button, the close button, the backdrop or Escape close.

const NARROW = "(max-width: 900px)";

export class WatchlistPanel {
  constructor({ toggle, close, backdrop }) {
    this.toggleButton = toggle;
    this.backdrop = backdrop;
    this.narrow = window.matchMedia(NARROW);
    toggle.addEventListener("click", () => this.toggle());
    close.addEventListener("click", () => this.setOpen(false));
    backdrop.addEventListener("click", () => this.setOpen(false));
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.isDrawerOpen) this.setOpen(false);
    });
    this.narrow.addEventListener("change", () => this.refresh());
    this.refresh();
  }

  get isDrawerOpen() {
    return this.narrow.matches && document.body.classList.contains("watchlist-open");
  }

  /** Whether the watchlist is on screen. */
  get isShown() {
    return this.narrow.matches
      ? document.body.classList.contains("watchlist-open")
      : !document.body.classList.contains("no-watchlist");
  }

  toggle() {
    this.setOpen(!this.isShown);
  }

  setOpen(open) {
    if (this.narrow.matches) document.body.classList.toggle("watchlist-open", open);
    else document.body.classList.toggle("no-watchlist", !open);
    this.refresh();
  }

  /** After a pick: a drawer gets out of the way of the chart. */
  picked() {
    if (this.isDrawerOpen) this.setOpen(false);
  }

  refresh() {
    this.toggleButton.setAttribute("aria-pressed", String(this.isShown));
    this.toggleButton.setAttribute("aria-expanded", String(this.isShown));
    this.backdrop.hidden = !this.isDrawerOpen;
  }
}
