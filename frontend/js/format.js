// Formatting: price precision (from the symbol or inferred from the data), prices, volumes,
// changes, and the time formatters for UTC or local display. Bar times are UTC seconds.

const MAX_DECIMALS = 8;
// A price far below 1 (a meme token's 0.000000001234, a pair quoted in BTC) keeps this many
// significant digits past the 8 decimals, which would show it as 0.00000000, up to the
// decimals a double still holds.
const SIGNIFICANT = 4;
const MOST_DECIMALS = 15;

/** The most decimals `decimalsOf` gives a value of magnitude `abs`. */
function mostDecimals(abs) {
  if (!(abs > 0 && abs < 1)) return MAX_DECIMALS;
  const wanted = SIGNIFICANT - 1 - Math.floor(Math.log10(abs));
  return Math.min(Math.max(MAX_DECIMALS, wanted), MOST_DECIMALS);
}

/** Decimals needed to show `value` exactly (up to 8, or 4 significant digits of a tiny
 * value), ignoring float noise. */
export function decimalsOf(value) {
  if (!Number.isFinite(value)) return 0;
  const abs = Math.abs(value);
  const most = mostDecimals(abs);
  for (let d = 0; d < most; d += 1) {
    const scaled = abs * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-9 * Math.max(1, scaled)) return d;
  }
  return most;
}

// lightweight-charts 5.2.1 formats every price wrongly at precision 11 (100.5 as
// "100.99999.99804", 0.000000015 as "0.99999999998") and throws at every frame from 17 on
// ("invalid length", "unexpected base"), drawing nothing; toLocaleString throws below 0.
const MOST_PRECISION = 16;

/** `precision` as one the chart library and the page draw: 0 to 16, never 11. */
export function drawablePrecision(precision) {
  const p = Math.min(Math.max(Math.round(precision), 0), MOST_PRECISION);
  return p === 11 ? 12 : p;
}

/**
 * The symbol's precision: `details.precision`, the tick size's decimals a Binance row states
 * (`price_precision`), `details.pricescale`, or from the bars.
 */
export function precisionFor(details, bars) {
  if (details && Number.isInteger(details.precision)) return drawablePrecision(details.precision);
  if (details && Number.isInteger(details.price_precision)) {
    return drawablePrecision(details.price_precision);
  }
  if (details && Number.isFinite(details.pricescale) && details.pricescale > 0) {
    return drawablePrecision(Math.log10(details.pricescale));
  }
  let decimals = 0;
  for (let i = Math.max(0, bars.length - 500); i < bars.length; i += 1) {
    const b = bars[i];
    for (const v of [b.open, b.high, b.low, b.close, b.value]) {
      if (v !== undefined) decimals = Math.max(decimals, decimalsOf(v));
    }
  }
  return drawablePrecision(decimals);
}

/** A server message as a sentence: "unknown symbol x" -> "Unknown symbol x". */
export const sentence = (text) => String(text).charAt(0).toUpperCase() + String(text).slice(1);

// One formatter per precision: toLocaleString with options builds a new one on every call,
// and legends, headers and watchlist rows format prices on every update.
const PRICE_FORMATS = new Map();

export function formatPrice(value, precision) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  let format = PRICE_FORMATS.get(precision);
  if (format === undefined) {
    format = new Intl.NumberFormat("en-US", {
      minimumFractionDigits: precision, maximumFractionDigits: precision,
    });
    PRICE_FORMATS.set(precision, format);
  }
  return format.format(value);
}

export function formatVolume(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  const abs = Math.abs(value);
  for (const [limit, suffix] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
    if (abs >= limit) return `${(value / limit).toFixed(abs / limit >= 100 ? 0 : 2)}${suffix}`;
  }
  return String(Math.round(value * 100) / 100);
}

/** {text, pct, direction} of `last` vs `base`. */
export function change(last, base, precision) {
  if (last === null || base === null || !Number.isFinite(last) || !Number.isFinite(base)) {
    return { text: "", pct: "", direction: "flat" };
  }
  const delta = last - base;
  const sign = delta > 0 ? "+" : delta < 0 ? "−" : "";
  const pct = base !== 0 ? `${sign}${Math.abs((delta / base) * 100).toFixed(2)}%` : "";
  return {
    text: `${sign}${formatPrice(Math.abs(delta), precision)}`,
    pct,
    direction: delta > 0 ? "up" : delta < 0 ? "down" : "flat",
  };
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
  "Dec"];
const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const pad = (n) => String(n).padStart(2, "0");

/** Calendar fields of a UTC timestamp, read in UTC or in the browser's zone. */
export function parts(seconds, zone) {
  const d = new Date(seconds * 1000);
  if (zone === "local") {
    return { y: d.getFullYear(), mo: d.getMonth(), d: d.getDate(), wd: d.getDay(),
      h: d.getHours(), mi: d.getMinutes(), s: d.getSeconds() };
  }
  return { y: d.getUTCFullYear(), mo: d.getUTCMonth(), d: d.getUTCDate(), wd: d.getUTCDay(),
    h: d.getUTCHours(), mi: d.getUTCMinutes(), s: d.getUTCSeconds() };
}

// Daily and longer bars are session dates: their time of day means nothing, so they are
// always shown as the UTC date the server gave them, whatever the zone setting.
const zoneFor = (zone, intervalSeconds) => (intervalSeconds >= 86400 ? "utc" : zone);

/** The crosshair / legend label of a bar time. */
export function formatTime(seconds, zone, intervalSeconds) {
  const p = parts(seconds, zoneFor(zone, intervalSeconds));
  if (intervalSeconds >= 2592000 - 86400 * 3) return `${MONTHS[p.mo]} ${p.y}`;
  const day = `${DAYS[p.wd]} ${p.d} ${MONTHS[p.mo]} '${String(p.y).slice(2)}`;
  if (intervalSeconds >= 86400) return day;
  return `${day}  ${pad(p.h)}:${pad(p.mi)}${intervalSeconds < 60 ? `:${pad(p.s)}` : ""}`;
}

// lightweight-charts TickMarkType: Year 0, Month 1, DayOfMonth 2, Time 3, TimeWithSeconds 4.
// The chart places day/month/year ticks at UTC boundaries; in local time each tick is
// labelled with its own local date or time (the crosshair label shows the exact time).
export function tickMark(seconds, type, zone, intervalSeconds) {
  const p = parts(seconds, zoneFor(zone, intervalSeconds));
  switch (type) {
    case 0: return String(p.y);
    case 1: return MONTHS[p.mo];
    case 2: return String(p.d);
    case 4: return `${pad(p.h)}:${pad(p.mi)}:${pad(p.s)}`;
    default: return `${pad(p.h)}:${pad(p.mi)}`;
  }
}

/** The name a person reads: a line series' label (`macro dollar_index`), else the symbol. */
export function displayName(name, details) {
  return details?.type === "line" && details.name_label ? details.name_label : name;
}

// What a refused or failed request means for one row or line, in a word or two (the
// server's own message goes in its tooltip).
const UNSERVED = {
  unknown_symbol: "not found",
  unknown_source: "not found",
  unknown_interval: "not offered",
  forbidden: "no access",
  auth_failed: "unavailable",
  provider_unavailable: "unavailable",
  provider_error: "unavailable",
  provider_fatal: "unavailable",
  rate_limited: "busy, retrying",
  limit_reached: "limit reached",
};

/** Refusals that say the symbol is not served at all (not found, or not for this token): a
 * price or bars held from before are stale. */
export const NOT_SERVED = new Set(["unknown_symbol", "unknown_source", "unknown_interval",
  "forbidden"]);

/** The short state shown for a symbol the server did not serve (error `code`). */
export const unservedText = (code) => UNSERVED[code] || "unavailable";
