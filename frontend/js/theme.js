// Themes: the colours of the page (CSS variables, css/app.css) and of the charts.

export const PALETTES = {
  dark: {
    background: "#0e1117",
    text: "#b2b5be",
    grid: "rgba(42, 46, 57, 0.55)",
    border: "#2a2e39",
    crosshair: "#758696",
    up: "#26a69a",
    down: "#ef5350",
    upVolume: "rgba(38, 166, 154, 0.35)",
    downVolume: "rgba(239, 83, 80, 0.35)",
    line: "#4c8dff",
  },
  light: {
    background: "#ffffff",
    text: "#434651",
    grid: "rgba(225, 228, 235, 0.8)",
    border: "#e0e3eb",
    crosshair: "#9598a1",
    up: "#089981",
    down: "#f23645",
    upVolume: "rgba(8, 153, 129, 0.3)",
    downVolume: "rgba(242, 54, 69, 0.3)",
    line: "#2962ff",
  },
};

export function chartOptions(theme) {
  const p = PALETTES[theme] || PALETTES.dark;
  return {
    layout: {
      background: { type: "solid", color: p.background },
      textColor: p.text,
      fontSize: 11,
      fontFamily: "Inter, system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
      attributionLogo: true,
      // The line between the price pane and the indicator panes, as quiet as the grid.
      panes: { separatorColor: p.grid, separatorHoverColor: p.grid, enableResize: true },
    },
    grid: { vertLines: { color: p.grid }, horzLines: { color: p.grid } },
    crosshair: {
      mode: 0, // normal: the crosshair follows the mouse, not magnet-snapped
      vertLine: { color: p.crosshair, labelBackgroundColor: p.border },
      horzLine: { color: p.crosshair, labelBackgroundColor: p.border },
    },
    rightPriceScale: { borderColor: p.border },
    timeScale: { borderColor: p.border },
  };
}

export function candleOptions(theme) {
  const p = PALETTES[theme] || PALETTES.dark;
  return {
    upColor: p.up, downColor: p.down, borderUpColor: p.up, borderDownColor: p.down,
    wickUpColor: p.up, wickDownColor: p.down,
  };
}

export const lineOptions = (theme) => ({ color: (PALETTES[theme] || PALETTES.dark).line });

export function volumeColor(bar, theme) {
  const p = PALETTES[theme] || PALETTES.dark;
  return bar.close >= bar.open ? p.upVolume : p.downVolume;
}

export function applyPageTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const meta = document.querySelector('meta[name="color-scheme"]');
  if (meta) meta.content = theme;
}
