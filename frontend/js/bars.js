// Bars: convert the hub's wire bars to lightweight-charts bars and merge bar arrays.
// Wire: {date: "YYYY-MM-DD HH:MM:SS" (UTC bar open), "{src}-{name}-{iv}-open": n, ...}
// Chart: {time: UTC seconds, open, high, low, close, volume} or {time, value} for a line;
// a bar whose values are null becomes whitespace ({time}) so the time scale stays intact.

export function parseDate(text) {
  const ms = Date.UTC(+text.slice(0, 4), +text.slice(5, 7) - 1, +text.slice(8, 10),
    +text.slice(11, 13) || 0, +text.slice(14, 16) || 0, +text.slice(17, 19) || 0);
  return Number.isFinite(ms) ? ms / 1000 : null;
}

const pad = (n) => String(n).padStart(2, "0");

export function formatDate(seconds) {
  const d = new Date(seconds * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

// Numbers may arrive as decimal strings from some upstreams; anything else is "no value".
function num(v) {
  if (typeof v === "number") return Number.isFinite(v) ? v : null;
  if (v === null || v === undefined || v === "") return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

/** A converter for one series: wire bar -> chart bar (or null when the date is bad). */
export function converter(source, name, interval, kind) {
  const prefix = `${source}-${name}-${interval}`;
  if (kind === "line") {
    return (point) => {
      const time = typeof point?.date === "string" ? parseDate(point.date) : null;
      if (time === null) return null;
      const value = num(point[prefix]);
      return value === null ? { time } : { time, value };
    };
  }
  const keys = ["open", "high", "low", "close", "volume"].map((f) => `${prefix}-${f}`);
  return (point) => {
    const time = typeof point?.date === "string" ? parseDate(point.date) : null;
    if (time === null) return null;
    const [open, high, low, close, volume] = keys.map((k) => num(point[k]));
    if (open === null || high === null || low === null || close === null) return { time };
    return { time, open, high, low, close, volume: volume ?? 0 };
  };
}

/** Convert a wire array, sorted ascending and de-duplicated (the last one of a time wins). */
export function convertAll(points, convert) {
  const bars = [];
  for (const point of points || []) {
    const bar = convert(point);
    if (bar) bars.push(bar);
  }
  bars.sort((a, b) => a.time - b.time);
  return dedupe(bars);
}

function dedupe(bars) {
  const out = [];
  for (const bar of bars) {
    if (out.length && out[out.length - 1].time === bar.time) out[out.length - 1] = bar;
    else out.push(bar);
  }
  return out;
}

/** Merge two ascending arrays; on equal times the bar from `incoming` wins. */
export function mergeBars(existing, incoming) {
  const out = [];
  let i = 0;
  let j = 0;
  while (i < existing.length || j < incoming.length) {
    const a = existing[i];
    const b = incoming[j];
    if (b === undefined || (a !== undefined && a.time < b.time)) {
      out.push(a);
      i += 1;
    } else {
      if (a !== undefined && a.time === b.time) i += 1;
      out.push(b);
      j += 1;
    }
  }
  return out;
}

/**
 * Whether `incoming` (the latest bars, as a reconnect's data_init brings them) continues
 * `existing`: it reaches back to the newest bar held and no further forward than a gap-free
 * merge allows. It does not when it starts after that bar (a gap: more bars were missed than
 * one data_init holds) or ends before it (the source went back, e.g. a restarted replay).
 */
export function continues(existing, incoming) {
  if (!existing.length || !incoming.length) return false;
  const last = existing[existing.length - 1].time;
  return incoming[0].time <= last && incoming[incoming.length - 1].time >= last;
}

export const isWhitespace = (bar) => bar.close === undefined && bar.value === undefined;

/** The closing value of a bar (candle close or line value), or null for whitespace. */
export const closeOf = (bar) => (bar ? bar.close ?? bar.value ?? null : null);

/** Index of the bar with `time` (binary search), or -1. */
export function indexOfTime(bars, time) {
  let lo = 0;
  let hi = bars.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const t = bars[mid].time;
    if (t === time) return mid;
    if (t < time) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/** The last real (non-whitespace) bar at or before index `from`, or null. */
export function previousReal(bars, from) {
  for (let i = from; i >= 0; i -= 1) if (!isWhitespace(bars[i])) return bars[i];
  return null;
}
