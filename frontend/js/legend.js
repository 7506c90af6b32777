// Legend and quote: the text of the crosshair legend (open, high, low, close, volume and
// change of one bar) and of a panel's quote (last price and change). Pure DOM building.

import { change, formatPrice, formatVolume } from "./format.js";
import { closeOf } from "./bars.js";

function item(labelText, valueText, cls = "") {
  const span = document.createElement("span");
  span.className = `lg-item ${cls}`.trim();
  if (labelText) {
    const label = document.createElement("span");
    label.className = "lg-label";
    label.textContent = labelText;
    span.append(label);
  }
  const value = document.createElement("span");
  value.className = "lg-value";
  value.textContent = valueText;
  span.append(value);
  return span;
}

/**
 * Fill `el` with the values of `bar`; `previous` is the bar before it (for the change).
 * `timeText` is the bar's formatted time.
 */
export function renderLegend(el, { bar, previous, kind, precision, timeText }) {
  const nodes = [];
  if (!bar || closeOf(bar) === null) {
    el.replaceChildren(...(timeText ? [item("", timeText, "lg-time")] : []));
    return;
  }
  const ch = change(closeOf(bar), closeOf(previous), precision);
  const dir = `dir-${ch.direction}`;
  if (timeText) nodes.push(item("", timeText, "lg-time"));
  if (kind === "line") {
    nodes.push(item("", formatPrice(bar.value, precision), dir));
  } else {
    nodes.push(item("O", formatPrice(bar.open, precision), dir));
    nodes.push(item("H", formatPrice(bar.high, precision), dir));
    nodes.push(item("L", formatPrice(bar.low, precision), dir));
    nodes.push(item("C", formatPrice(bar.close, precision), dir));
    nodes.push(item("V", formatVolume(bar.volume), "lg-volume"));
  }
  if (ch.text) nodes.push(item("", `${ch.text} (${ch.pct})`, `${dir} lg-change`));
  el.replaceChildren(...nodes);
  el.title = "Change vs the previous bar's close";
}

/**
 * The quote of a panel header: a price text and its change ({text, pct, direction}), or the
 * last bar's close alone (`last`, `precision`) while the change is not known.
 */
export function renderQuote(el, { price, change: ch = null, last = null, precision = 2 }) {
  const text = price ?? (closeOf(last) === null ? null : formatPrice(closeOf(last), precision));
  if (text === null) {
    el.replaceChildren();
    el.className = "quote";
    return null;
  }
  const priceEl = document.createElement("span");
  priceEl.className = "quote-price";
  priceEl.textContent = text;
  const changeEl = document.createElement("span");
  changeEl.className = "quote-change";
  changeEl.textContent = ch?.text ? `${ch.text} (${ch.pct})` : "";
  const refEl = document.createElement("span");
  refEl.className = "quote-ref";
  refEl.textContent = ch?.text ? "1D" : "";
  el.replaceChildren(priceEl, changeEl, refEl);
  el.className = `quote dir-${ch?.direction ?? "flat"}`;
  return { price: text, change: ch ?? { text: "", pct: "", direction: "flat" } };
}
