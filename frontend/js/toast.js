// Toasts: small, unobtrusive notices (server errors) that fade out by themselves. The same
// text shown again within a few seconds bumps a counter instead of stacking a copy.

const LIFETIME_MS = 6000;
const MAX_TOASTS = 4;

export class Toasts {
  constructor(root) {
    this.root = root;
    this.live = new Map(); // text -> {el, timer, count}
  }

  show(text, kind = "error") {
    const existing = this.live.get(text);
    if (existing) {
      existing.count += 1;
      existing.el.dataset.count = `×${existing.count}`;
      clearTimeout(existing.timer);
      existing.timer = setTimeout(() => this.dismiss(text), LIFETIME_MS);
      return;
    }
    while (this.live.size >= MAX_TOASTS) this.dismiss(this.live.keys().next().value);
    const el = document.createElement("div");
    el.className = `toast toast-${kind}`;
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    el.textContent = text;
    el.addEventListener("click", () => this.dismiss(text));
    this.root.append(el);
    const timer = setTimeout(() => this.dismiss(text), LIFETIME_MS);
    this.live.set(text, { el, timer, count: 1 });
  }

  dismiss(text) {
    const toast = this.live.get(text);
    if (!toast) return;
    this.live.delete(text);
    clearTimeout(toast.timer);
    toast.el.classList.add("leaving");
    setTimeout(() => toast.el.remove(), 200);
  }
}
