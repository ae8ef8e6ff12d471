/* tapestream dashboard: the charts, drawn on <canvas> by hand (no library: the page loads
 * nothing but its own files). Every panel spans the same bars across the same width, so a
 * candle, its volume, its RSI and its MACD line up. */

import { fmtPrice, fmtTime } from "./format.js";

const COLORS = {
  grid: "#242c38", axis: "#8391a5", up: "#26a69a", down: "#ef5350", vwap: "#f5a623",
  bb: "#5c8dd6", bbFill: "rgba(92, 141, 214, 0.08)", rsi: "#ba68c8", macd: "#4fc3f7",
  signal: "#ffb74d", text: "#d6dde8",
};
const AXIS_W = 64; // right-hand price labels
const PAD_L = 6;
const MIN_SLOT = 5; // px per bar: fewer bars shown on a narrow screen, never squeezed

// A canvas sized to its box in device pixels, cleared, drawing in CSS pixels. Its data-value
// says how many bars, or indicator points, it shows: what a test can see of a picture.
function canvas2d(id) {
  const canvas = document.getElementById(id);
  canvas.dataset.value = "0";
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, w, h, shown: (n) => (canvas.dataset.value = String(n)) };
}

// Round steps (1, 2, 5 x 10^k) between lo and hi, about `count` of them.
function ticks(lo, hi, count) {
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((x) => x >= raw) || raw;
  const values = [];
  for (let k = Math.ceil(lo / step); k * step <= hi + step * 1e-9; k++) values.push(k * step);
  return { values, step };
}

// As many decimals as the step between axis labels needs, so 50.04 is not 50.040000001.
function decimals(step) {
  return Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
}

const axisPrice = (v, step) => v.toFixed(Math.max(2, decimals(step)));
const axisNum = (v, step) => v.toFixed(decimals(step));

// The frame all panels share: the same bars across the same width, so they line up.
function frame(w, bars) {
  const plotW = w - PAD_L - AXIS_W;
  const n = Math.max(1, Math.min(bars.length, Math.floor(plotW / MIN_SLOT)));
  const shown = bars.slice(-n);
  const slot = plotW / Math.max(n, 40); // a few bars are not stretched across the width
  const offset = plotW - slot * shown.length;
  return { shown, slot, x: (i) => PAD_L + offset + (i + 0.5) * slot, plotW };
}

function yScale(lo, hi, top, bottom) {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) * 0.001 || 1;
    lo -= pad;
    hi += pad;
  }
  const y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);
  return { y, lo, hi };
}

function drawGrid(ctx, w, scale, top, bottom, fmt, count = 4) {
  ctx.strokeStyle = COLORS.grid;
  ctx.fillStyle = COLORS.axis;
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  const { values, step } = ticks(scale.lo, scale.hi, count);
  for (const v of values) {
    const y = Math.round(scale.y(v)) + 0.5;
    if (y < top - 1 || y > bottom + 1) continue;
    ctx.beginPath();
    ctx.moveTo(PAD_L, y);
    ctx.lineTo(w - AXIS_W, y);
    ctx.stroke();
    ctx.fillText(fmt(v, step), w - AXIS_W + 6, y);
  }
}

// Bar start times under the bars, from the newest leftwards, none overlapping the next.
function drawTimeAxis(ctx, f, h) {
  ctx.fillStyle = COLORS.axis;
  ctx.textBaseline = "alphabetic";
  const last = f.shown.length - 1;
  let free = PAD_L + f.plotW; // labels must end left of here
  for (let i = last; i >= 0; i--) {
    const label = fmtTime(f.shown[i].start, false);
    const width = ctx.measureText(label).width;
    let x = f.x(i) - width / 2;
    if (i === last) x = Math.min(x, free - width); // the newest is kept, moved in
    if (x + width > free) continue;
    if (x < PAD_L) break;
    ctx.fillText(label, x, h - 4);
    free = x - 24;
  }
}

// A line through the bars that have a value. A bar without one is bridged: the feed keeps
// only the latest indicators for a page that reads slower than a replay sends, so a missing
// point is a value not seen here, not a hole in the series. A lone value is a dot.
function drawLine(ctx, f, value, color, width = 1.5, dash = []) {
  const points = [];
  f.shown.forEach((bar, i) => {
    const y = value(bar);
    if (y !== null && y !== undefined && !Number.isNaN(y)) points.push([f.x(i), y]);
  });
  ctx.strokeStyle = ctx.fillStyle = color;
  ctx.lineWidth = width;
  ctx.setLineDash(dash);
  ctx.beginPath();
  points.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
  ctx.setLineDash([]);
  if (points.length === 1) ctx.fillRect(points[0][0] - 2, points[0][1] - 2, 4, 4);
}

// The views serve the latest indicators only: the past of these panels fills in live.
function fewPoints(ctx, f, key, ind, h) {
  if (f.shown.filter((b) => typeof ind(b)[key] === "number").length >= 2) return;
  ctx.fillStyle = COLORS.axis;
  ctx.textBaseline = "middle";
  ctx.fillText("fills in as bars close while this page is open", PAD_L + 8, h / 2);
}

function placeholder(ctx, w, h, text) {
  ctx.fillStyle = COLORS.axis;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(text, w / 2, h / 2);
  ctx.textAlign = "left";
}

// Every panel, from the bars oldest first, the indicators after each bar (`indicatorsAt(bar)`,
// {} when not seen) and what to say while there is no bar.
export function drawCharts(bars, indicatorsAt, emptyText) {
  const ind = (bar) => indicatorsAt(bar) || {};
  drawPrice(bars, ind, emptyText);
  drawVolume(bars);
  drawRsi(bars, ind);
  drawMacd(bars, ind);
}

function drawPrice(bars, ind, emptyText) {
  const { ctx, w, h, shown } = canvas2d("price-chart");
  if (!bars.length) return placeholder(ctx, w, h, emptyText);
  const f = frame(w, bars);
  shown(f.shown.length);
  const top = 8;
  const bottom = h - 20;
  const values = f.shown.flatMap((b) => [b.low, b.high, ind(b).bb_lower, ind(b).bb_upper]);
  const finite = values.filter((v) => typeof v === "number");
  if (!finite.length) return placeholder(ctx, w, h, "no priced bars yet");
  const s = yScale(Math.min(...finite), Math.max(...finite), top, bottom);
  drawGrid(ctx, w, s, top, bottom, axisPrice, 6);
  drawBands(ctx, f, s, ind);
  drawCandles(ctx, f, s);
  ctx.globalAlpha = 0.85; // the candles stay readable under it
  drawLine(ctx, f, (b) => (typeof b.vwap === "number" ? s.y(b.vwap) : null), COLORS.vwap, 1.25);
  ctx.globalAlpha = 1;
  drawLastPrice(ctx, w, s, f.shown[f.shown.length - 1]);
  drawTimeAxis(ctx, f, h);
}

function drawBands(ctx, f, s, ind) {
  const pts = f.shown
    .map((b, i) => [i, ind(b)])
    .filter(([, r]) => typeof r.bb_upper === "number" && typeof r.bb_lower === "number");
  if (pts.length > 1) {
    ctx.fillStyle = COLORS.bbFill;
    ctx.beginPath();
    pts.forEach(([i, r], k) => (k ? ctx.lineTo : ctx.moveTo).call(ctx, f.x(i), s.y(r.bb_upper)));
    [...pts].reverse().forEach(([i, r]) => ctx.lineTo(f.x(i), s.y(r.bb_lower)));
    ctx.closePath();
    ctx.fill();
  }
  const band = (key) => (b) => (typeof ind(b)[key] === "number" ? s.y(ind(b)[key]) : null);
  drawLine(ctx, f, band("bb_upper"), COLORS.bb, 1);
  drawLine(ctx, f, band("bb_lower"), COLORS.bb, 1);
  drawLine(ctx, f, band("bb_mid"), COLORS.bb, 1, [4, 3]);
}

function drawCandles(ctx, f, s) {
  const body = Math.max(1, Math.floor(f.slot * 0.7));
  f.shown.forEach((b, i) => {
    if (typeof b.close !== "number") return; // a bar of volume only has no price
    const up = b.close >= b.open;
    const x = Math.round(f.x(i));
    ctx.strokeStyle = ctx.fillStyle = up ? COLORS.up : COLORS.down;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x + 0.5, s.y(b.high));
    ctx.lineTo(x + 0.5, s.y(b.low));
    ctx.stroke();
    const y0 = s.y(Math.max(b.open, b.close));
    const y1 = s.y(Math.min(b.open, b.close));
    ctx.fillRect(x - Math.floor(body / 2), y0, body, Math.max(1, y1 - y0));
  });
}

function drawLastPrice(ctx, w, s, last) {
  if (!last || typeof last.close !== "number") return;
  const y = s.y(last.close);
  ctx.fillStyle = last.close >= last.open ? COLORS.up : COLORS.down;
  ctx.fillRect(w - AXIS_W + 1, y - 8, AXIS_W - 2, 16);
  ctx.fillStyle = "#0b0e13";
  ctx.textBaseline = "middle";
  ctx.fillText(fmtPrice(last.close), w - AXIS_W + 5, y);
}

function drawVolume(bars) {
  const { ctx, w, h, shown } = canvas2d("volume-chart");
  if (!bars.length) return;
  const f = frame(w, bars);
  shown(f.shown.length);
  const top = 4;
  const bottom = h - 2;
  const s = yScale(0, Math.max(1, ...f.shown.map((b) => b.volume || 0)), top, bottom);
  drawGrid(ctx, w, s, top, bottom, axisNum, 2);
  const width = Math.max(1, Math.floor(f.slot * 0.7));
  f.shown.forEach((b, i) => {
    ctx.fillStyle = b.close >= b.open ? COLORS.up : COLORS.down;
    ctx.globalAlpha = 0.7;
    const y = s.y(b.volume || 0);
    ctx.fillRect(Math.round(f.x(i)) - Math.floor(width / 2), y, width, bottom - y);
  });
  ctx.globalAlpha = 1;
}

function drawRsi(bars, ind) {
  const { ctx, w, h, shown } = canvas2d("rsi-chart");
  if (!bars.length) return;
  const f = frame(w, bars);
  shown(f.shown.filter((b) => typeof ind(b).rsi_14 === "number").length);
  const top = 4;
  const bottom = h - 4;
  const s = yScale(0, 100, top, bottom);
  // the overbought and oversold lines the patterns use by default
  ctx.fillStyle = "rgba(186, 104, 200, 0.07)";
  ctx.fillRect(PAD_L, s.y(70), f.plotW, s.y(30) - s.y(70));
  ctx.fillStyle = COLORS.axis;
  ctx.textBaseline = "middle";
  for (const level of [30, 70]) {
    ctx.strokeStyle = COLORS.axis;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(PAD_L, s.y(level) + 0.5);
    ctx.lineTo(w - AXIS_W, s.y(level) + 0.5);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillText(String(level), w - AXIS_W + 6, s.y(level));
  }
  const rsi = (b) => (typeof ind(b).rsi_14 === "number" ? s.y(ind(b).rsi_14) : null);
  drawLine(ctx, f, rsi, COLORS.rsi);
  fewPoints(ctx, f, "rsi_14", ind, h);
}

function drawMacd(bars, ind) {
  const { ctx, w, h, shown } = canvas2d("macd-chart");
  if (!bars.length) return;
  const f = frame(w, bars);
  shown(f.shown.filter((b) => typeof ind(b).macd === "number").length);
  const top = 4;
  const bottom = h - 20;
  const vals = f.shown
    .flatMap((b) => [ind(b).macd, ind(b).macd_signal, ind(b).macd_hist])
    .filter((v) => typeof v === "number");
  const s = yScale(Math.min(0, ...vals), Math.max(0, ...vals), top, bottom);
  drawGrid(ctx, w, s, top, bottom, axisNum, 3);
  const width = Math.max(1, Math.floor(f.slot * 0.6));
  const zero = s.y(0);
  f.shown.forEach((b, i) => {
    const v = ind(b).macd_hist;
    if (typeof v !== "number") return;
    ctx.fillStyle = v >= 0 ? COLORS.up : COLORS.down;
    ctx.globalAlpha = 0.6;
    const y = s.y(v);
    const x = Math.round(f.x(i)) - Math.floor(width / 2);
    ctx.fillRect(x, Math.min(y, zero), width, Math.abs(zero - y));
  });
  ctx.globalAlpha = 1;
  const line = (key) => (b) => (typeof ind(b)[key] === "number" ? s.y(ind(b)[key]) : null);
  drawLine(ctx, f, line("macd"), COLORS.macd);
  drawLine(ctx, f, line("macd_signal"), COLORS.signal);
  fewPoints(ctx, f, "macd", ind, bottom);
  drawTimeAxis(ctx, f, h);
}
