// window.candlewire: a read-only view of the page for browser tests and the console.
//   candlewire.charts[i].bars()   bars in chart i's series: {time, open, high, low, close}
//                                  ({time, value} for a line series), at their UTC times
//                                  (in local time the series hold wall-clock-as-UTC ones)
//   candlewire.charts[i].chart     the lightweight-charts IChartApi (e.g. timeScale())
//   candlewire.charts[i].ownBars() the panel's own bars (real OHLC whatever the chart type)
//   candlewire.charts[i].type      the chart type drawn; .scale the price scale;
//                                  .compare {source, name, interval (drawn at), state
//                                  (compare.js), held (its bars kept), bars()} of the
//                                  compared symbol or null
//   candlewire.charts[i].indicators [{id, key, label, inputs, overlay, pane, error, received,
//                                  outputs: {name: points()}}]; .panes the chart's pane count
//   candlewire.connection          "connecting" | "live" | "reconnecting" | "offline"
//   candlewire.lastError           the last server error message, or null
//   candlewire.alerts              {items (the `alerts` list), owner, vapidAsked, vapidKey,
//                                  push (the subscription JSON, null without push, undefined
//                                  before the first alert), lines(i) levels drawn on chart i,
//                                  notifications (every `notification` received)}

import { isOverlay } from "./indicators.js";

function chartView(panel) {
  // the series hold the chart's times (a local zone's wall clock): shown as the bars' own
  const real = (t) => panel.realTime(t) ?? t;
  return {
    get source() { return panel.source; },
    get name() { return panel.name; },
    get interval() { return panel.interval; },
    get kind() { return panel.kind; },
    get details() { return panel.details; },
    get message() { return panel.message; },
    get updates() { return panel.updates; },
    get historyPending() { return panel.historyPending; },
    get historyDone() { return panel.historyDone; },
    get precision() { return panel.precision; },
    get chart() { return panel.chart; },
    get series() { return panel.series; },
    get volume() { return panel.volume; },
    get type() { return panel.drawn; },
    get scale() { return panel.scale; },
    get compare() {
      const c = panel.compare;
      return c ? {
        source: c.source,
        name: c.name,
        interval: c.interval,
        state: c.state,
        held: c.bars.length, // the compared bars kept (drawn or not)
        bars: () => c.series.data().map((b) => ({ ...b, time: real(b.time) })),
      } : null;
    },
    get panes() { return panel.chart.panes().length; },
    get indicators() {
      return panel.indicators.list.map((ind) => ({
        id: ind.id,
        key: ind.key,
        label: ind.label,
        inputs: { ...ind.inputs },
        overlay: ind.def ? isOverlay(ind.def) : null,
        pane: ind.series.size ? ind.series.values().next().value.getPane().paneIndex() : null,
        error: ind.error,
        received: ind.received,
        outputs: Object.fromEntries([...ind.series].map(([name, s]) => [name, s.data().length])),
        last: Object.fromEntries([...ind.series].map(([name, s]) => {
          const data = s.data();
          const point = data[data.length - 1];
          return [name, point ? { ...point, time: real(point.time) } : null];
        })),
      }));
    },
    ownBars() {
      return panel.bars.map((b) => ({ ...b }));
    },
    bars() {
      return panel.series ? panel.series.data().map((b) => ({ ...b, time: real(b.time) })) : [];
    },
  };
}

function alertsView(book, lines, workspace) {
  const notifications = [];
  book.addEventListener("notification", (e) => notifications.push(e.detail));
  return {
    get items() { return book.items.map((a) => ({ ...a })); },
    get owner() { return book.owner; },
    get vapidAsked() { return book.vapidAsked; },
    get vapidKey() { return book.vapidKey; },
    get push() { return book.subscription; },
    lines: (i) => lines.levels(workspace.panels[i]),
    notifications,
  };
}

export function installTestHook({
  workspace, connection, feed, watchlist, quotes, alertBook, alertLines,
}) {
  const errors = [];
  feed.addEventListener("error", (e) => errors.push(e.detail));
  const alerts = alertsView(alertBook, alertLines, workspace);
  window.candlewire = {
    get charts() { return workspace.panels.map(chartView); },
    get active() { return workspace.activeIndex; },
    get layout() { return workspace.layout; },
    get connection() { return connection.state; },
    get lastError() { return feed.lastError; },
    get watchlist() {
      return [...watchlist.entries.values()].map((e) => ({
        source: e.source, name: e.name, quote: quotes.get(e.source, e.name),
      }));
    },
    alerts,
    errors,
  };
}
