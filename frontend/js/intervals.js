// Intervals: the hub's 14 bar intervals, their lengths, labels, and the choice of a
// supported interval when a symbol does not offer the current one.

export const INTERVALS = ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
  "1d", "1w", "1M"];

const UNIT = { m: 60, h: 3600, d: 86400, w: 604800, M: 2629800 };

export function seconds(interval) {
  const match = /^(\d+)([mhdwM])$/.exec(interval);
  return match ? Number(match[1]) * UNIT[match[2]] : NaN;
}

export const isIntraday = (interval) => seconds(interval) < 86400;

export function label(interval) {
  return interval.replace(/d$/, "D").replace(/w$/, "W");
}

export const TITLES = {
  m: "minute", h: "hour", d: "day", w: "week", M: "month",
};

export function title(interval) {
  const match = /^(\d+)([mhdwM])$/.exec(interval);
  if (!match) return interval;
  const n = Number(match[1]);
  return `${n} ${TITLES[match[2]]}${n === 1 ? "" : "s"}`;
}

/** `wanted` when offered, else the offered interval closest to it in length. */
export function nearest(wanted, offered) {
  const list = offered && offered.length ? offered : INTERVALS;
  if (list.includes(wanted)) return wanted;
  const target = Math.log(seconds(wanted) || 3600);
  let best = list[0];
  for (const iv of list) {
    if (Math.abs(Math.log(seconds(iv)) - target) < Math.abs(Math.log(seconds(best)) - target)) {
      best = iv;
    }
  }
  return best;
}
