// Countdown: the time left until the forming bar closes, as a chart header shows it
// ("12:34", "3:02:09", "2d 04h"). Bar times are UTC seconds of the bar's open; months are
// calendar months. A bar that is not forming now by the wall clock (replayed or delayed
// data, a closed market) has no countdown.

import { seconds as intervalSeconds } from "./intervals.js";

/** UTC seconds at which the bar opened at `time` closes. */
export function barEnd(time, interval) {
  if (/^\d+M$/.test(interval)) {
    const d = new Date(time * 1000);
    const months = Number(interval.slice(0, -1));
    return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + months, 1) / 1000;
  }
  return time + intervalSeconds(interval);
}

/** Seconds left in the bar opened at `time`, or null when it is not forming at `now`. */
export function secondsLeft(time, interval, now) {
  const end = barEnd(time, interval);
  if (!Number.isFinite(end) || now < time || now >= end) return null;
  return Math.ceil(end - now);
}

const pad = (n) => String(n).padStart(2, "0");

export function formatLeft(left) {
  const d = Math.floor(left / 86400);
  const h = Math.floor((left % 86400) / 3600);
  const m = Math.floor((left % 3600) / 60);
  const s = left % 60;
  if (d > 0) return `${d}d ${pad(h)}h`;
  if (h > 0) return `${h}:${pad(m)}:${pad(s)}`;
  return `${pad(m)}:${pad(s)}`;
}
