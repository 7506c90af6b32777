// Wall clock: the times an intraday chart in local time gives lightweight-charts. The library
// places its day, month and year marks at UTC midnights of the times it is given, so real
// UTC times labelled in local time put New York's "3" at 20:00 on the 2nd. As the library
// advises for time zones, such a chart gives each bar its local wall-clock time written as if
// it were UTC (the bars keep their real times; only the series see these). The map must keep
// the times strictly ascending: where clocks go back an hour (the end of summer time) the
// local times of the two hours around the change repeat, and the library draws duplicate or
// unsorted times wrongly, so those two real hours are drawn in the one local hour they span.
// UTC, and daily and longer bars (session dates, shown as the UTC date), are left as they are.

const WINDOW = 7200; // no zone moves its clocks by more than an hour, nor twice in two hours

/** The browser's offset from UTC at UTC second `t`, in seconds (New York in winter: -18000). */
export const offsetAt = (t) => -new Date(t * 1000).getTimezoneOffset() * 60;

/** The second (UTC) at which the offset changes between `from` and `to` (binary search). */
function changeBetween(from, to) {
  const before = offsetAt(from);
  let lo = from;
  let hi = to;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (offsetAt(mid) === before) lo = mid;
    else hi = mid;
  }
  return hi;
}

/** Local wall-clock time of UTC second `t`, as UTC seconds, strictly ascending in `t`. */
export function localWallClock(t) {
  const before = offsetAt(t - WINDOW);
  const after = offsetAt(t + WINDOW);
  if (before > after) {
    // clocks go back by `back` at `change`: [change - back, change + back) spans one local
    // hour (when back is an hour), drawn at half speed
    const back = before - after;
    const change = changeBetween(t - WINDOW, t + WINDOW);
    if (t >= change - back && t < change + back) {
      return change - back + before + (t - (change - back)) / 2;
    }
  }
  return t + offsetAt(t);
}

const same = (t) => t;

/** The map from bar times to chart times for a chart in `zone` ("utc" | "local") at an
 * interval of `intervalSeconds`. */
export function chartClock(zone, intervalSeconds) {
  return zone === "local" && intervalSeconds < 86400 ? localWallClock : same;
}
