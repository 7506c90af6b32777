// ViewEdges: what a chart shows at the edges of its data: "Loading older bars…" while
// scroll-back history is on its way, a "Start of data" mark at the first bar once the source
// has nothing older, and a "jump to latest" button while the newest bar is off screen; and
// clampRange, the limit that keeps a dragged view from leaving its bars.

import { element } from "./dom.js";

const KEEP_SHOWN = 0.35; // a drag stops when less than this part of the view has bars

/** The logical range to show instead of `range` over `count` bars, or null when it is fine. */
export function clampRange(range, count) {
  if (count < 2) return null;
  const span = range.to - range.from;
  const keep = Math.max(2, span * KEEP_SHOWN);
  const lowest = keep - span; // the oldest bar still `keep` bars inside the right edge
  const highest = count - 1 - keep; // the newest bar still `keep` bars inside the left edge
  if (lowest > highest) return null;
  const from = Math.min(Math.max(range.from, lowest), highest);
  return Math.abs(from - range.from) < 1e-6 ? null : { from, to: from + span };
}

const SVG = "http://www.w3.org/2000/svg";

function icon(path) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  const p = document.createElementNS(SVG, "path");
  p.setAttribute("d", path);
  svg.append(p);
  return svg;
}

export class ViewEdges {
  constructor(area, chart, onJump) {
    this.chart = chart;
    this.loading = element("div", "history-loading", area, "Loading older bars…");
    this.loading.setAttribute("role", "status");
    this.loading.hidden = true;
    this.start = element("div", "start-mark", area);
    element("span", "start-label", this.start, "Start of data");
    this.start.hidden = true;
    this.jump = element("button", "jump-latest", area);
    this.jump.type = "button";
    this.jump.title = "Jump to the latest bar";
    this.jump.setAttribute("aria-label", this.jump.title);
    this.jump.append(icon("M3 3l5 5-5 5M8 3l5 5-5 5"));
    this.jump.hidden = true;
    this.jump.addEventListener("click", onJump);
  }

  setLoading(on) {
    this.loading.hidden = !on;
  }

  /** Place the start mark and show or hide the jump button for `count` bars. */
  place(count, startKnown) {
    const ts = this.chart.timeScale();
    const range = ts.getVisibleLogicalRange();
    this.jump.hidden = !range || !count || range.to >= count - 1;
    const x = count && startKnown ? ts.logicalToCoordinate(0) : null;
    const width = ts.width();
    const spacing = x === null ? 0 : (ts.logicalToCoordinate(1) ?? x + 6) - x;
    // the first bar in view, also when its middle sits a little left of the edge
    const visible = x !== null && x >= -spacing && x <= width;
    this.start.hidden = !visible;
    if (!visible) return;
    this.start.style.left = `${Math.max(0, x - spacing / 2)}px`;
  }
}
