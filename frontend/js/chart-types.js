// Chart types and price scales: which lightweight-charts series draws a chart type (candles,
// hollow candles, bars, line, area, Heikin-Ashi), its colours, and how the panel's bars
// become that series' points (Heikin-Ashi bars are computed from the real ones).

import {
  AreaSeries, BarSeries, CandlestickSeries, LineSeries,
} from "../vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import { isWhitespace } from "./bars.js";
import { PALETTES, candleOptions, lineOptions } from "./theme.js";

export const CHART_TYPES = {
  candles: "Candles",
  hollow: "Hollow candles",
  bars: "Bars",
  line: "Line",
  area: "Area",
  heikin: "Heikin-Ashi",
};

// lightweight-charts PriceScaleMode: Normal 0, Logarithmic 1, Percentage 2.
export const PRICE_SCALES = { normal: "Linear", log: "Log", percent: "Percent" };
const SCALE_MODE = { normal: 0, log: 1, percent: 2 };

export const isChartType = (type) => Object.hasOwn(CHART_TYPES, type);
export const isPriceScale = (scale) => Object.hasOwn(PRICE_SCALES, scale);
export const scaleMode = (scale) => SCALE_MODE[scale] ?? 0;

/** The type actually drawn: a series of single values (kind "line") has no candles. */
export function drawnType(type, kind) {
  if (kind !== "line") return isChartType(type) ? type : "candles";
  return type === "area" ? "area" : "line";
}

/** The chart types offered for a series kind. */
export const typesFor = (kind) => (kind === "line" ? ["line", "area"] : Object.keys(CHART_TYPES));

const DEFINITION = {
  candles: CandlestickSeries,
  hollow: CandlestickSeries,
  heikin: CandlestickSeries,
  bars: BarSeries,
  line: LineSeries,
  area: AreaSeries,
};

/** Colours of a chart type in a theme. */
export function typeOptions(type, theme) {
  const p = PALETTES[theme] || PALETTES.dark;
  switch (type) {
    case "hollow":
      return { ...candleOptions(theme), upColor: "rgba(0, 0, 0, 0)" };
    case "bars":
      return { upColor: p.up, downColor: p.down, thinBars: false };
    case "line":
      return { ...lineOptions(theme), lineWidth: 2 };
    case "area":
      return {
        lineColor: p.line, lineWidth: 2, topColor: `${p.line}55`, bottomColor: `${p.line}05`,
      };
    default:
      return candleOptions(theme);
  }
}

/** Add the series of `type` to `chart`. */
export function addTypeSeries(chart, type, theme) {
  return chart.addSeries(DEFINITION[type], { ...typeOptions(type, theme), priceLineVisible: true });
}

const isSingleValue = (type) => type === "line" || type === "area";

/** One bar as a point of a series of `type` (not Heikin-Ashi, see `heikinAshi`). */
export function pointOf(bar, type) {
  if (isWhitespace(bar)) return { time: bar.time };
  if (isSingleValue(type)) return { time: bar.time, value: bar.value ?? bar.close };
  return { time: bar.time, open: bar.open, high: bar.high, low: bar.low, close: bar.close };
}

/** The Heikin-Ashi bar of `bar`, given the previous Heikin-Ashi bar (or null). */
export function heikinAshi(bar, previous) {
  if (isWhitespace(bar)) return { time: bar.time };
  const close = (bar.open + bar.high + bar.low + bar.close) / 4;
  const open = previous ? (previous.open + previous.close) / 2 : (bar.open + bar.close) / 2;
  return {
    time: bar.time, open, close, high: Math.max(bar.high, open, close),
    low: Math.min(bar.low, open, close),
  };
}

/** All points of a series of `type` for `bars`. */
export function pointsOf(bars, type) {
  if (type !== "heikin") return bars.map((b) => pointOf(b, type));
  const out = [];
  let previous = null;
  for (const bar of bars) {
    const point = heikinAshi(bar, previous);
    if (!isWhitespace(point)) previous = point;
    out.push(point);
  }
  return out;
}

/** The point of the last bar of `bars` (the one just updated or appended). */
export function lastPointOf(bars, type) {
  const bar = bars[bars.length - 1];
  if (type !== "heikin") return pointOf(bar, type);
  const window = bars.slice(-60); // Heikin-Ashi forgets its start within a few dozen bars
  return pointsOf(window, type).at(-1);
}
