// main: builds the page from the URL state and wires the parts together: the connection and
// feed, the shared quotes, the workspace of charts, the search box, interval, chart type and
// price scale menus, compare, indicators, alerts (list, right-click menu, price lines, a
// toast per notification), watchlist, toggles, badge, toasts, the page title, and the URL
// (history.replaceState on every change).

import { AlertLines } from "./alert-lines.js";
import { AlertMenu, AlertPanel } from "./alert-panel.js";
import { AlertBook } from "./alerts.js";
import { CHART_TYPES, PRICE_SCALES, drawnType, typesFor } from "./chart-types.js";
import { ComparePicker } from "./compare-picker.js";
import { Connection, hubUrl, pageToken } from "./connection.js";
import { WatchlistPanel } from "./drawer.js";
import { Feed } from "./feed.js";
import { displayName, sentence } from "./format.js";
import { IndicatorDialog, IndicatorPicker } from "./indicator-picker.js";
import { nearest } from "./intervals.js";
import { Quotes } from "./quotes.js";
import { SymbolSearch } from "./search.js";
import { installTestHook } from "./test-hook.js";
import { applyPageTheme } from "./theme.js";
import { Toasts } from "./toast.js";
import { Badge, ChoiceMenu, IntervalPicker, REFUSED_TEXT } from "./toolbar.js";
import { readState, writeState } from "./url-state.js";
import { Watchlist } from "./watchlist.js";
import { Workspace } from "./workspace.js";

const DEFAULT_INTERVAL = "1h";
const $ = (selector) => document.querySelector(selector);

const state = readState();
applyPageTheme(state.theme);

pageToken(); // keep the URL's token before the URL is rewritten (saveUrl)
const connection = new Connection(() => hubUrl()); // each attempt: the token kept now
const feed = new Feed(connection);
const quotes = new Quotes(feed);
const toasts = new Toasts($("#toasts"));
const badge = new Badge($("#badge"));
const workspace = new Workspace({ grid: $("#grid"), feed, quotes, ...state });

const search = new SymbolSearch({
  input: $("#search-input"),
  list: $("#search-results"),
  feed,
  onPick: (row) => openSymbol(row.details?.source, row.details?.name ?? row.name, row.details),
});
const picker = new IntervalPicker($("#intervals"), $("#interval-menu"), (iv) => {
  const panel = workspace.active;
  if (panel.source) panel.open(panel.source, panel.name, iv, panel.details);
});
const typeMenu = new ChoiceMenu($("#chart-type"), CHART_TYPES,
  (type) => workspace.active.setChartType(type));
const scaleMenu = new ChoiceMenu($("#price-scale"), PRICE_SCALES,
  (scale) => workspace.active.setScale(scale));
new ComparePicker({
  button: $("#compare-button"),
  box: $("#compare-box"),
  input: $("#compare-input"),
  list: $("#compare-results"),
  feed,
  onPick: (row) => workspace.active.setCompare({
    source: row.details?.source, name: row.details?.name ?? row.name, details: row.details,
  }),
});
new IndicatorPicker({
  button: $("#indicator-button"),
  box: $("#indicator-box"),
  input: $("#indicator-input"),
  list: $("#indicator-results"),
  feed,
  onPick: (def) => workspace.active.indicators.add(def),
});
const alertBook = new AlertBook(connection);
const alertPanel = new AlertPanel({
  button: $("#alert-button"),
  box: $("#alert-box"),
  form: $("#alert-form"),
  level: $("#alert-level"),
  list: $("#alert-items"),
  count: $("#alert-count"),
  book: alertBook,
  workspace,
});
new AlertMenu({
  grid: $("#grid"), workspace, onPick: (panel, level) => alertPanel.createFor(panel, level),
});
const alertLines = new AlertLines(alertBook, workspace);
alertBook.addEventListener("notification", (e) => {
  const text = String(e.detail.message || "");
  // "Error: …" notifications repeat an `error` the feed already shows as a toast.
  if (text && !text.startsWith("Error:")) toasts.show(`Alert: ${text}`, "info");
});
const indicatorDialog = new IndicatorDialog($("#indicator-dialog"));
workspace.addEventListener("indicator-edit", (e) => {
  const { panel, instance } = e.detail;
  indicatorDialog.open(instance, (inputs) => panel.indicators.edit(instance, inputs));
});
const watchlistPanel = new WatchlistPanel({
  toggle: $("#watchlist-toggle"), close: $("#watchlist-close"), backdrop: $("#drawer-backdrop"),
});
const watchlist = new Watchlist({
  list: $("#watchlist-items"),
  quotes,
  onPick: (source, name, details) => {
    openSymbol(source, name, details);
    watchlistPanel.picked();
  },
});

/** Open a symbol in the active chart, keeping its interval when the symbol offers it. */
function openSymbol(source, name, details = null) {
  if (!source || !name) return;
  const panel = workspace.active;
  const interval = nearest(panel.interval || DEFAULT_INTERVAL, details?.intervals);
  panel.open(source, name, interval, details);
}

// ------------------------------------------------------------------ first symbols

/** The first of `rows` that no chart shows yet (else the first row), for an empty chart. */
function unshownRow(rows, index) {
  const shown = new Set(workspace.panels.filter((p) => p.source)
    .map((p) => `${p.source}:${p.name}`));
  const fresh = rows.filter((r) => !shown.has(`${r.details?.source}:${r.details?.name}`));
  return fresh[0] || rows[index % rows.length];
}

/** Fill charts that have nothing to show: a bare `?s=NAME` by search, else a default. */
async function fillEmptyPanels() {
  const empty = workspace.emptyPanels();
  if (!empty.length) return;
  const byName = empty.filter((p) => workspace.wanted[p.index]?.name);
  for (const panel of byName) {
    const wanted = workspace.wanted[panel.index];
    const rows = await feed.search(wanted.name);
    if (rows === null || panel.source) continue;
    // The exact name first, else the name in another case (`?s=btcusd`): search finds
    // symbols ignoring case and ranks the exact spelling first.
    const inSource = (r) => !wanted.source || r.details?.source === wanted.source;
    const lower = wanted.name.toLowerCase();
    const row = rows.find((r) => r.name === wanted.name && inSource(r))
      || rows.find((r) => String(r.name).toLowerCase() === lower && inSource(r));
    if (row) {
      const iv = nearest(wanted.interval || DEFAULT_INTERVAL, row.details?.intervals);
      panel.open(row.details.source, row.details.name, iv, row.details);
    } else {
      panel.showMessage(`Unknown symbol ${wanted.name}`, "error",
        "Pick another symbol with the search box above.");
    }
  }
  const rest = workspace.emptyPanels().filter((p) => !workspace.wanted[p.index]?.name);
  if (!rest.length) return;
  const rows = await feed.search("");
  if (rows === null) return;
  if (!rows.length) {
    for (const panel of rest) {
      panel.showMessage("No symbols yet: run `python populate.py`",
        "empty", "The server has no symbols in its database. Populate it, then reload.");
    }
    return;
  }
  for (const panel of rest) {
    if (panel.source) continue;
    const row = unshownRow(rows, panel.index);
    const iv = nearest(DEFAULT_INTERVAL, row.details?.intervals);
    panel.open(row.details.source, row.details.name, iv, row.details);
  }
}

// ------------------------------------------------------------------ what the page shows

function refreshToolbar() {
  const panel = workspace.active;
  picker.show(panel.interval, panel.details?.intervals);
  typeMenu.show(drawnType(panel.chartType, panel.kind), typesFor(panel.kind));
  scaleMenu.show(panel.scale);
  $("#compare-button").classList.toggle("on", Boolean(panel.compareWanted));
  watchlist.setCurrent(panel.source, panel.name);
  for (const button of document.querySelectorAll("button[data-layout]")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.layout) === workspace.layout));
  }
  $("#zone").textContent = state.zone === "local" ? "Local" : "UTC";
  $("#zone").title = state.zone === "local"
    ? "Times in your time zone (click for UTC)" : "Times in UTC (click for local time)";
  $("#theme").title = state.theme === "dark" ? "Light theme" : "Dark theme";
}

function refreshTitle() {
  const panel = workspace.active;
  if (!panel.source) {
    document.title = "Candlewire";
    return;
  }
  const q = panel.quote;
  const price = q ? ` ${q.price}${q.change.pct ? ` ${q.change.pct}` : ""}` : "";
  document.title = `${displayName(panel.name, panel.details)}${price} · ${panel.interval}`
    + " — Candlewire";
}

function saveUrl() {
  writeState({
    layout: workspace.layout,
    active: workspace.activeIndex,
    theme: state.theme,
    zone: state.zone,
    charts: workspace.charts,
  });
}

workspace.addEventListener("change", () => {
  refreshToolbar();
  refreshTitle();
  saveUrl();
});
workspace.addEventListener("panel-change", (e) => {
  if (e.detail === workspace.active) {
    refreshToolbar();
    refreshTitle();
  }
  saveUrl();
});
workspace.addEventListener("panel-tick", (e) => {
  if (e.detail === workspace.active) refreshTitle();
});
workspace.addEventListener("panel-data", (e) => {
  const panel = e.detail;
  watchlist.add(panel.source, panel.name, panel.details);
  watchlist.setCurrent(workspace.active.source, workspace.active.name);
});

// ------------------------------------------------------------------ controls

for (const button of document.querySelectorAll("button[data-layout]")) {
  button.addEventListener("click", () => {
    workspace.setLayout(Number(button.dataset.layout));
    fillEmptyPanels();
  });
}
$("#theme").addEventListener("click", () => {
  state.theme = state.theme === "dark" ? "light" : "dark";
  applyPageTheme(state.theme);
  workspace.setTheme(state.theme);
  refreshToolbar();
  saveUrl();
});
$("#zone").addEventListener("click", () => {
  state.zone = state.zone === "utc" ? "local" : "utc";
  workspace.setZone(state.zone);
  refreshToolbar();
  saveUrl();
});

document.addEventListener("keydown", (event) => {
  const typing = event.target.closest?.("input, textarea, select, [contenteditable]");
  if (typing) return;
  if (event.key === "/" || (event.key === "k" && (event.ctrlKey || event.metaKey))) {
    event.preventDefault();
    search.focus();
  } else if (/^[a-z0-9]$/i.test(event.key) && !event.ctrlKey && !event.metaKey && !event.altKey) {
    search.focus(); // start typing a symbol anywhere, as on trading terminals
  }
});

// ------------------------------------------------------------------ connection

connection.addEventListener("state", (e) => {
  badge.show(e.detail, connection);
  if (e.detail !== "refused") return;
  // Charts still waiting for their first bars say why they wait (the badge alone said
  // "Reconnecting", then "Offline", over "Loading…").
  for (const panel of workspace.panels) {
    if (!panel.bars.length) panel.showMessage("Not allowed to connect", "error", REFUSED_TEXT);
  }
});
connection.addEventListener("open", () => fillEmptyPanels());
feed.addEventListener("error", (e) => {
  const m = e.detail;
  toasts.show(sentence(m.message || m.code || "server error"));
});

installTestHook({ workspace, connection, feed, watchlist, quotes, alertBook, alertLines });
watchlist.load();
refreshToolbar();
saveUrl();
badge.show(connection.state, connection);
connection.start();
