// DOM helpers shared by the widgets; text is always set as text, never as HTML.

export function element(tag, className = "", parent = null, text = null) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== null) el.textContent = text;
  if (parent) parent.append(el);
  return el;
}

export const span = (className, text = "") => element("span", className, null, text);

/** Set `text` into `el`, rendering `backquoted` parts as <code>. */
export function richText(el, text) {
  el.replaceChildren(...String(text).split("`").map((part, i) => (
    i % 2 === 0 ? document.createTextNode(part) : element("code", "", null, part))));
}
