// DOM helpers shared by the widgets; text is always set as text, never as HTML.

export function element(tag, className = "", parent = null, text = null) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== null) el.textContent = text;
  if (parent) parent.append(el);
  return el;
}

export const span = (className, text = "") => element("span", className, null, text);

/**
 * Run `rebuild`, which replaces the elements matching `selector` in `root`, without losing
 * the keyboard: when one of them had focus (or something inside it), the one now at its
 * place gets it (the same one when it was only redrawn, the next one when its item went,
 * the last one when the last went), else `fallback` (none left). Otherwise the focus would
 * fall back to the page's start and the next Tab begin again at the top of the toolbar.
 */
export function keepFocus(root, selector, rebuild, fallback = null) {
  const focused = document.activeElement;
  const at = [...root.querySelectorAll(selector)].findIndex((el) => el.contains(focused));
  rebuild();
  if (at < 0) return;
  const now = [...root.querySelectorAll(selector)];
  (now[Math.min(at, now.length - 1)] || fallback)?.focus();
}

/** Set `text` into `el`, rendering `backquoted` parts as <code>. */
export function richText(el, text) {
  el.replaceChildren(...String(text).split("`").map((part, i) => (
    i % 2 === 0 ? document.createTextNode(part) : element("code", "", null, part))));
}
