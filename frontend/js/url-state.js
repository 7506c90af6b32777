// URL state: what the page shows, in the query string, so a view can be shared and reloaded.
//   ?source=counting&s=AAA&i=1h     chart 1 (`s` alone: the first search match of that name)
//   &layout=4&c2=csv:BTCUSD:1d     layout (1 or 4) and charts 2..4 as source:name:interval
//   &a=2&t=light&tz=local          active chart, theme (dark|light), time zone (utc|local)
//   &ct=heikin&ps=log&cmp=csv:ACME chart 1's chart type, price scale and compared symbol;
//   &ct2=... &ps3=... &cmp4=...    the same for charts 2..4 (defaults are left out; a
//                                  compare without `ps` is on the percent scale)
//   &ind=talib.momentum.RSI:timeperiod:14&ind=talib.overlap.SMA:timeperiod:50
//                                  chart 1's indicators (catalogue id, then input name:value
//                                  pairs), one `ind` per indicator; ind2..ind4 for the others

import { isChartType, isPriceScale } from "./chart-types.js";
import { INTERVALS } from "./intervals.js";

export const MAX_CHARTS = 4;

const suffix = (i) => (i === 0 ? "" : String(i + 1));

const MAX_NAME = 200; // the longest source or symbol the server takes

/** An interval as written in a link: as the buttons say it too (`1D`, `1W`, `1H`); `1M`
 * stays a month. */
function readInterval(text) {
  if (!text || INTERVALS.includes(text)) return text || null;
  // Longer, the server refuses the request as malformed ("'interval' must be a string of 1
  // to 200 characters") and the chart stays empty; as an unknown interval it is replaced by
  // the symbol's nearest one, as any interval the symbol lacks.
  if (text.length > MAX_NAME) return text.slice(0, MAX_NAME);
  return /^\d+[DWH]$/.test(text) ? text.toLowerCase() : text;
}

function parseChart(text) {
  if (!text) return null;
  const first = text.indexOf(":");
  const last = text.lastIndexOf(":");
  if (first < 0 || last === first) return null;
  const source = text.slice(0, first).slice(0, MAX_NAME);
  const name = text.slice(first + 1, last).slice(0, MAX_NAME);
  const interval = readInterval(text.slice(last + 1));
  return source && name ? { source, name, interval } : null;
}

function parseSymbol(text) {
  const at = text ? text.indexOf(":") : -1;
  if (at <= 0 || at === text.length - 1) return null;
  return { source: text.slice(0, at), name: text.slice(at + 1) };
}

const INDICATOR_ID = /^[A-Za-z0-9_.]{1,200}$/;
const INPUT_NAME = /^[A-Za-z0-9_]{1,60}$/;

/** `id:name:value:name:value` -> {id, inputs} (numbers as numbers), or null. */
export function parseIndicator(text) {
  const [id, ...pairs] = String(text || "").split(":");
  if (!INDICATOR_ID.test(id) || pairs.length % 2) return null;
  const inputs = {};
  for (let k = 0; k < pairs.length; k += 2) {
    if (!INPUT_NAME.test(pairs[k])) return null;
    const n = Number(pairs[k + 1]);
    inputs[pairs[k]] = pairs[k + 1] !== "" && Number.isFinite(n) ? n : pairs[k + 1];
  }
  return { id, inputs };
}

export function encodeIndicator({ id, inputs }) {
  return [id, ...Object.entries(inputs || {}).flat()].join(":");
}

/** Chart type, price scale, compared symbol and indicators of chart `i` (null: defaults). */
function readLook(q, i) {
  const type = q.get(`ct${suffix(i)}`);
  const scale = q.get(`ps${suffix(i)}`);
  return {
    type: isChartType(type) ? type : null,
    scale: isPriceScale(scale) ? scale : null,
    compare: parseSymbol(q.get(`cmp${suffix(i)}`)),
    indicators: q.getAll(`ind${suffix(i)}`).map(parseIndicator).filter(Boolean),
  };
}

export function readState(search = window.location.search) {
  const q = new URLSearchParams(search);
  const charts = Array.from({ length: MAX_CHARTS }, () => null);
  if (q.get("s")) {
    charts[0] = {
      source: q.get("source")?.slice(0, MAX_NAME) || null,
      name: q.get("s").slice(0, MAX_NAME), // longer, the server's answer would not match it
      interval: readInterval(q.get("i")),
    };
  }
  for (let i = 1; i < MAX_CHARTS; i += 1) charts[i] = parseChart(q.get(`c${i + 1}`));
  for (let i = 0; i < MAX_CHARTS; i += 1) {
    const look = readLook(q, i);
    const any = look.type || look.scale || look.compare || look.indicators.length;
    if (any) charts[i] = { ...(charts[i] || {}), ...look };
  }
  const layout = q.get("layout") === "4" ? 4 : 1;
  const active = Math.min(Math.max(Number(q.get("a") || 1) - 1, 0), layout - 1);
  return {
    layout,
    active: Number.isFinite(active) ? active : 0,
    theme: q.get("t") === "light" ? "light" : "dark",
    zone: q.get("tz") === "local" ? "local" : "utc",
    charts,
  };
}

function writeLook(q, chart, i) {
  if (chart.type && chart.type !== "candles") q.set(`ct${suffix(i)}`, chart.type);
  // Beside a compare (percent unless said otherwise) even the linear scale is written.
  if (chart.scale && (chart.scale !== "normal" || chart.compare)) {
    q.set(`ps${suffix(i)}`, chart.scale);
  }
  if (chart.compare) q.set(`cmp${suffix(i)}`, `${chart.compare.source}:${chart.compare.name}`);
  for (const ind of chart.indicators || []) q.append(`ind${suffix(i)}`, encodeIndicator(ind));
}

/** The query string of a state (charts: [{source, name, interval, type, scale, compare}]). */
export function encodeState({ layout, active, theme, zone, charts }) {
  const q = new URLSearchParams();
  const [first, ...rest] = charts;
  if (first?.name) {
    if (first.source) q.set("source", first.source);
    q.set("s", first.name);
    if (first.interval) q.set("i", first.interval);
  }
  if (layout === 4) q.set("layout", "4");
  rest.forEach((c, i) => {
    if (c?.name) q.set(`c${i + 2}`, `${c.source}:${c.name}:${c.interval}`);
  });
  charts.forEach((c, i) => { if (c) writeLook(q, c, i); });
  if (layout === 4 && active > 0) q.set("a", String(active + 1));
  q.set("t", theme === "light" ? "light" : "dark");
  if (zone === "local") q.set("tz", "local");
  return q.toString().replace(/%3A/g, ":");
}

export function writeState(state) {
  const query = encodeState(state);
  const url = `${window.location.pathname}${query ? `?${query}` : ""}${window.location.hash}`;
  if (url !== `${window.location.pathname}${window.location.search}${window.location.hash}`) {
    window.history.replaceState(null, "", url);
  }
}
