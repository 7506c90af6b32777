// URL state: what the page shows, in the query string, so a view can be shared and reloaded.
//   ?source=counting&s=AAA&i=1h     chart 1 (`s` alone: the first search match of that name)
//   &layout=4&c2=csv:BTCUSD:1d     layout (1 or 4) and charts 2..4 as source:name:interval
//   &a=2&t=light&tz=local          active chart, theme (dark|light), time zone (utc|local)

export const MAX_CHARTS = 4;

function parseChart(text) {
  if (!text) return null;
  const first = text.indexOf(":");
  const last = text.lastIndexOf(":");
  if (first < 0 || last === first) return null;
  const source = text.slice(0, first);
  const name = text.slice(first + 1, last);
  const interval = text.slice(last + 1);
  return source && name ? { source, name, interval: interval || null } : null;
}

export function readState(search = window.location.search) {
  const q = new URLSearchParams(search);
  const charts = Array.from({ length: MAX_CHARTS }, () => null);
  if (q.get("s")) {
    charts[0] = { source: q.get("source") || null, name: q.get("s"), interval: q.get("i") };
  }
  for (let i = 1; i < MAX_CHARTS; i += 1) charts[i] = parseChart(q.get(`c${i + 1}`));
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

/** The query string of a state (charts: [{source, name, interval} | null]). */
export function encodeState({ layout, active, theme, zone, charts }) {
  const q = new URLSearchParams();
  const [first, ...rest] = charts;
  if (first) {
    if (first.source) q.set("source", first.source);
    q.set("s", first.name);
    if (first.interval) q.set("i", first.interval);
  }
  if (layout === 4) q.set("layout", "4");
  rest.forEach((c, i) => {
    if (c) q.set(`c${i + 2}`, `${c.source}:${c.name}:${c.interval}`);
  });
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
