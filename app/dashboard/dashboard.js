/* tapestream dashboard: reads the worker's HTTP views once, then follows its WebSocket feed.
 *
 * No framework and nothing from another site: the worker serves this file, and the page's
 * Content-Security-Policy lets it talk to the worker only. Prices arrive as decimal numbers and
 * times as ISO 8601 strings in UTC (the API's default units); both are shown as they come, so
 * what the page says is what the API says. Each shown value also sits, unformatted, in its
 * element's data-value, for tests and for anyone who wants the exact figure.
 *
 * The token, when the worker wants one, comes from the URL fragment (`/#token=...`), which the
 * browser never sends to a server: it goes on each request as `Authorization: Bearer` and on the
 * WebSocket as the subprotocol `bearer.<token>`, beside `tapestream` (docs/web.md#access).
 */

import { drawCharts } from "./charts.js";
import { fmtDerived, fmtInt, fmtNum, fmtPrice, fmtTime, setValue, timeMs } from "./format.js";

// ---- settings ---------------------------------------------------------------------------

const BAR_HISTORY = 150; // closed bars fetched, and kept, for the charts
const LADDER_DEPTH = 10;
const BOOK_MIN_GAP_MS = 250; // a busy BBO feed asks the book view at most 4 times a second
const BOOK_POLL_MS = 5000; // and a quiet one now and then, so the ladder never goes stale
const INSTRUMENTS_POLL_MS = 10000;
const INSTRUMENTS_WAIT_MS = 1000; // while there are none yet: a replay is starting
const METRICS_POLL_MS = 5000;
const SIGNALS_SHOWN = 200; // of each group: ifd, patterns, processing lag
const RENDER_EVERY_MS = 200;
const WATCHDOG_MS = 40000; // the worker sends a heartbeat after 15 s of quiet
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;
const PRICE_FIELDS = new Set([
  "close", "open", "high", "low", "vwap", "last_price", "highest_high", "lowest_low",
]);
// What every signal has: the rest of a pattern's fields are the numbers that explain it.
const SIGNAL_IDENTITY = new Set([
  "id", "kind", "direction", "instrument_id", "interval", "start", "end", "publisher_id",
  "confidence", "strength", "baseline", "data_quality", "session", "bucket",
]);
const IFD_WHY = ["z_vol", "z_flow", "z_ofi", "z_net"];

// ---- the URL fragment: token, instrument, interval ---------------------------------------

// Parsed by hand: URLSearchParams would read a `+` in a token as a space.
function readFragment() {
  const out = new Map();
  for (const part of location.hash.slice(1).split("&")) {
    if (!part) continue;
    const eq = part.indexOf("=");
    try {
      const key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      out.set(key, eq < 0 ? "" : decodeURIComponent(part.slice(eq + 1)));
    } catch {
      // a malformed part is ignored, not fatal
    }
  }
  return out;
}

function writeFragment(key, value) {
  const params = readFragment();
  params.set(key, String(value));
  const text = [...params].map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  // replaceState: choosing an instrument is not a step back-navigation should undo
  history.replaceState(null, "", "#" + text.join("&"));
}

const token = readFragment().get("token") || "";

// ---- state -----------------------------------------------------------------------------

const state = {
  instruments: new Map(), // instrument_id -> its /instruments/ row
  instrument: null, // the one shown
  interval: null,
  gen: 0, // counts changes of instrument or interval: a late answer of an older one is dropped
  bars: new Map(), // start -> bar
  indicators: new Map(), // start -> indicators after that bar
  latestIndicators: null,
  book: null,
  publisher: null,
  pressure: null,
  signals: new Map(), // id -> signal
  fresh: new Set(), // ids that came live in the last moments, highlighted
  latencyMs: null,
  lag: null,
  lastUpdate: null,
  notices: new Map(),
};

const $ = (id) => document.getElementById(id);

function instrumentLabel(id) {
  const row = state.instruments.get(id);
  return row && row.symbol ? `${row.symbol}` : String(id);
}

// ---- notices ---------------------------------------------------------------------------

function notice(key, text) {
  if (text) state.notices.set(key, text);
  else state.notices.delete(key);
  const el = $("notice");
  el.textContent = [...state.notices.values()].join(" · ");
  el.hidden = state.notices.size === 0;
}

// ---- HTTP ------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, body, retryAfter) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.retryAfterMs = 1000 * (Number(retryAfter) || 2);
  }
}

async function request(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const resp = await fetch(path, { headers, cache: "no-store" });
  if (!resp.ok) {
    let body = null;
    try {
      body = await resp.json();
    } catch {
      // not JSON: the status says enough
    }
    throw new HttpError(resp.status, body, resp.headers.get("Retry-After"));
  }
  return resp;
}

const getJson = async (path) => (await request(path)).json();
const getText = async (path) => (await request(path)).text();

// Says what failed, in the notice strip; the caller decides whether to try again.
function failed(key, what, err) {
  if (err && err.status === 401) {
    notice("token", "this worker wants a token: open the page as /#token=<your read token>");
  } else {
    notice(key, `${what}: ${err && err.message ? err.message : err}`);
  }
}

function succeeded(key) {
  notice(key, null);
  notice("token", null);
}

// ---- instruments and interval ----------------------------------------------------------

async function loadInstruments() {
  let wait = INSTRUMENTS_POLL_MS;
  try {
    const body = await getJson("/instruments/");
    succeeded("instruments");
    state.instruments = new Map(body.instruments.map((r) => [r.instrument_id, r]));
    renderPicker();
    if (state.instruments.size === 0) wait = INSTRUMENTS_WAIT_MS;
    else if (state.instrument === null) chooseInstrument(defaultInstrument());
  } catch (err) {
    failed("instruments", "instruments", err);
    // a refused token will not become good by asking often
    wait = err.status === 401 ? INSTRUMENTS_POLL_MS : INSTRUMENTS_WAIT_MS * 2;
  }
  clearTimeout(loadInstruments.timer);
  loadInstruments.timer = setTimeout(loadInstruments, wait);
}

// An instrument not listed yet was heard of: list again, once, shortly.
function instrumentsSoon() {
  if (instrumentsSoon.pending) return;
  instrumentsSoon.pending = true;
  setTimeout(() => {
    instrumentsSoon.pending = false;
    loadInstruments();
  }, INSTRUMENTS_WAIT_MS);
}

function defaultInstrument() {
  const asked = Number(readFragment().get("instrument"));
  return state.instruments.has(asked) ? asked : state.instruments.keys().next().value;
}

function renderPicker() {
  const select = $("instrument");
  const options = [...state.instruments.values()].map((r) => [
    String(r.instrument_id),
    r.symbol ? `${r.symbol} · ${r.instrument_id}` : String(r.instrument_id),
  ]);
  const signature = JSON.stringify(options);
  if (select.dataset.signature === signature) return; // an open picker is left alone
  select.dataset.signature = signature;
  select.replaceChildren(
    ...(options.length
      ? options.map(([value, text]) => new Option(text, value))
      : [new Option("waiting for data…", "", true, true)]),
  );
  select.disabled = options.length === 0;
  if (state.instrument !== null) select.value = String(state.instrument);
}

function renderIntervals() {
  const names = (document.body.dataset.intervals || "").split(",").filter(Boolean);
  const asked = readFragment().get("interval");
  state.interval = names.includes(asked) ? asked : names[0] || "1m";
  $("interval").replaceChildren(...names.map((n) => new Option(n, n)));
  $("interval").value = state.interval;
}

function chooseInstrument(id) {
  if (id === undefined || id === null || id === state.instrument) return;
  state.instrument = id;
  $("instrument").value = String(id);
  writeFragment("instrument", id);
  state.book = null;
  state.publisher = null;
  state.pressure = null;
  restartSeries();
  if ($("feed-mine").checked) loadSignals();
}

function chooseInterval(name) {
  if (name === state.interval) return;
  state.interval = name;
  writeFragment("interval", name);
  restartSeries();
}

// A new instrument or interval: drop what was shown, subscribe anew, read the views.
function restartSeries() {
  state.gen += 1;
  state.bars.clear();
  state.indicators.clear();
  state.latestIndicators = null;
  feed.resubscribe();
  loadSeries();
  schedule("all");
}

function loadSeries() {
  if (state.instrument === null) return;
  loadBars();
  loadIndicators();
  wantBook();
}

// ---- bars and indicators ---------------------------------------------------------------

// Retries a view that answered 503 (a worker restoring or rebalancing) once it says to.
function retryLater(fn, err, gen) {
  setTimeout(() => gen === state.gen && fn(), err.retryAfterMs || 2000);
}

async function loadBars() {
  const gen = state.gen;
  const path = `/bars/${state.instrument}/?interval=${state.interval}&limit=${BAR_HISTORY}`;
  try {
    const body = await getJson(path);
    if (gen !== state.gen) return;
    succeeded("bars");
    body.bars.forEach(upsertBar);
  } catch (err) {
    if (gen !== state.gen) return;
    if (err.status === 404) return succeeded("bars"); // none closed yet: the feed brings them
    failed("bars", "bars", err);
    if (err.status === 503 || !err.status) retryLater(loadBars, err, gen);
  }
}

async function loadIndicators() {
  const gen = state.gen;
  try {
    const body = await getJson(`/indicators/${state.instrument}/?interval=${state.interval}`);
    if (gen !== state.gen) return;
    // The feed's row, when it came first, is as new and has the bar it follows.
    if (state.latestIndicators === null || body.start) upsertIndicators(body);
  } catch (err) {
    if (gen !== state.gen || err.status === 404) return;
    failed("bars", "indicators", err);
    if (err.status === 503 || !err.status) retryLater(loadIndicators, err, gen);
  }
}

function upsertBar(bar) {
  state.bars.set(bar.start, bar);
  if (state.bars.size > BAR_HISTORY * 1.5) {
    const keep = sortedBars().slice(-BAR_HISTORY);
    state.bars = new Map(keep.map((b) => [b.start, b]));
  }
  schedule("charts", "readouts");
}

function upsertIndicators(row) {
  if (row.start) state.indicators.set(row.start, row);
  const latest = state.latestIndicators;
  if (!latest || !latest.start || !row.start || timeMs(row.start) >= timeMs(latest.start)) {
    state.latestIndicators = row;
  }
  schedule("charts", "readouts");
}

function sortedBars() {
  return [...state.bars.values()].sort((a, b) => timeMs(a.start) - timeMs(b.start));
}

// ---- the book --------------------------------------------------------------------------

// The feed has no levels, only the BBO: each BBO change asks the book view again, throttled,
// with a trailing call so the ladder ends on the last state, not the last one asked in time.
const book = { wanted: false, busy: false, timer: null, lastAt: -Infinity };

function wantBook() {
  book.wanted = true;
  pumpBook();
}

function pumpBook() {
  if (!book.wanted || book.busy || book.timer) return;
  const wait = book.lastAt + BOOK_MIN_GAP_MS - performance.now();
  if (wait > 0) {
    book.timer = setTimeout(() => {
      book.timer = null;
      pumpBook();
    }, wait);
    return;
  }
  book.wanted = false;
  book.busy = true;
  book.lastAt = performance.now();
  loadBook().finally(() => {
    book.busy = false;
    pumpBook();
  });
}

async function loadBook() {
  if (state.instrument === null) return;
  const gen = state.gen;
  try {
    const body = await getJson(`/books/${state.instrument}/?depth=${LADDER_DEPTH}`);
    if (gen !== state.gen) return;
    succeeded("book");
    state.book = body;
  } catch (err) {
    if (gen !== state.gen) return;
    if (err.status === 404) state.book = null;
    else failed("book", "book", err);
  }
  schedule("ladder");
}

// ---- signals ---------------------------------------------------------------------------

// The latest of what the feed's filters choose, from the view: the feed itself brings only
// what fires from now on (and what its own window of the topic still holds).
async function loadSignals() {
  const query = new URLSearchParams({ limit: String(SIGNALS_SHOWN) });
  const kind = $("feed-kind").value;
  if (kind && kind !== "patterns") query.set("kind", kind);
  if ($("feed-mine").checked && state.instrument !== null) {
    query.set("instrument_id", String(state.instrument));
  }
  try {
    const body = await getJson(`/signals/?${query}`);
    succeeded("signals");
    body.signals.forEach((s) => addSignal(s, false));
  } catch (err) {
    failed("signals", "signals", err);
  }
}

// Kept per group, so that the many patterns of a busy day do not push out the few IFDs.
function signalGroup(kind) {
  return kind === "ifd" || kind === "processing_lag" ? kind : "patterns";
}

function shownSignal(s) {
  const kind = $("feed-kind").value;
  const mine = $("feed-mine").checked;
  const ofKind = !kind || signalGroup(s.kind) === kind;
  return ofKind && (!mine || s.instrument_id === state.instrument);
}

function addSignal(signal, live) {
  if (state.signals.has(signal.id)) return;
  state.signals.set(signal.id, signal);
  if (live) {
    state.fresh.add(signal.id);
    setTimeout(() => state.fresh.delete(signal.id), 3000);
  }
  if (state.signals.size > SIGNALS_SHOWN * 4) trimSignals();
  if (!state.instruments.has(signal.instrument_id)) instrumentsSoon();
  schedule("signals");
}

// Newest first, as /signals/ orders them.
function newestSignals(keep = () => true) {
  return [...state.signals.values()]
    .filter(keep)
    .sort((a, b) => timeMs(b.start) - timeMs(a.start) || (a.id < b.id ? 1 : -1))
    .slice(0, SIGNALS_SHOWN);
}

function trimSignals() {
  const kept = ["ifd", "processing_lag", "patterns"].flatMap((g) =>
    newestSignals((s) => signalGroup(s.kind) === g));
  state.signals = new Map(kept.map((s) => [s.id, s]));
}

// ---- worker lag ------------------------------------------------------------------------

async function pollMetrics() {
  try {
    state.lag = processingLag(await getText("/metrics"));
    succeeded("metrics");
  } catch (err) {
    failed("metrics", "metrics", err);
  }
  schedule("status");
  setTimeout(pollMetrics, METRICS_POLL_MS);
}

// tapestream_processing_lag_seconds{agent="..."} of each agent of this worker.
function processingLag(text) {
  const re = /^tapestream_processing_lag_seconds\{agent="([^"]*)"\}\s+(\S+)/gm;
  const out = {};
  for (const m of text.matchAll(re)) out[m[1]] = Number(m[2]);
  return out;
}

// ---- the WebSocket feed ----------------------------------------------------------------

const feed = {
  ws: null,
  attempts: 0,
  subs: new Map(), // sub -> channel name ("bars", "indicators", "bbo", "pressure", "signals")
  lastFrameAt: 0,

  connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const protocols = token ? ["tapestream", `bearer.${token}`] : ["tapestream"];
    setConnection(this.attempts ? "reconnecting" : "connecting");
    const ws = new WebSocket(`${scheme}${location.host}/ws`, protocols);
    this.ws = ws;
    this.subs.clear();
    ws.onopen = () => {
      this.lastFrameAt = Date.now();
      this.send({ op: "subscribe", channel: "signals", ref: "signals" });
      this.subscribeInstrument();
      // Whatever happened while the feed was away: read the views again.
      loadSeries();
      loadSignals();
    };
    ws.onmessage = (ev) => {
      this.lastFrameAt = Date.now();
      this.onFrame(JSON.parse(ev.data));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.retry(ev);
    };
  },

  retry(ev) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempts);
    const delay = base * (0.5 + Math.random() / 2); // spread: not every page at once
    this.attempts += 1;
    const why = ev && ev.code && ev.code !== 1006 ? ` (closed ${ev.code} ${ev.reason})` : "";
    setConnection("reconnecting", `retry in ${(delay / 1000).toFixed(1)} s${why}`);
    setTimeout(() => this.connect(), delay);
  },

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  },

  // The refs carry the generation: a subscription answered for an older choice is dropped.
  subscribeInstrument() {
    if (state.instrument === null) return;
    const iid = state.instrument;
    const channels = {
      bars: `bars.${state.interval}`,
      indicators: "indicators",
      bbo: "bbo",
      pressure: "pressure",
    };
    for (const [name, channel] of Object.entries(channels)) {
      this.send({ op: "subscribe", channel, instrument_id: iid, ref: `${name}@${state.gen}` });
    }
  },

  resubscribe() {
    for (const [sub, name] of this.subs) {
      if (name === "signals") continue;
      this.send({ op: "unsubscribe", sub });
      this.subs.delete(sub);
    }
    this.subscribeInstrument();
  },

  onFrame(f) {
    switch (f.type) {
      case "subscribed": {
        const [name, gen] = String(f.ref).split("@");
        if (name !== "signals" && Number(gen) !== state.gen) {
          this.send({ op: "unsubscribe", sub: f.sub });
          return;
        }
        this.subs.set(f.sub, name);
        this.attempts = 0;
        setConnection("live");
        f.snapshot.forEach((row) => onRow(name, row, false));
        return;
      }
      case "update": {
        const name = this.subs.get(f.sub);
        if (!name) return; // of a subscription just dropped
        // `sent` is the worker's clock when its writer took the frame: ns since the epoch
        state.latencyMs = (Date.now() * 1e6 - f.sent) / 1e6;
        state.lastUpdate = new Date();
        onRow(name, f.data, true);
        schedule("status");
        return;
      }
      case "gap": // signals dropped for this page: read them from the view instead
        if (this.subs.get(f.sub) === "signals") loadSignals();
        return;
      case "error":
        notice("feed", `feed: ${f.error}`);
        return;
      default: // heartbeat, pong, unsubscribed
    }
  },

  // A connection that says nothing for too long is dead without knowing it: start again.
  watch() {
    setInterval(() => {
      const quiet = Date.now() - this.lastFrameAt > WATCHDOG_MS;
      if (this.ws && this.ws.readyState === WebSocket.OPEN && quiet) {
        this.ws.close(4000, "no frames");
      }
    }, 5000);
  },
};

function onRow(name, row, live) {
  if (name === "signals") return addSignal(row, live);
  // The channels were asked for this instrument; a row in flight from before a change is not.
  if (row.instrument_id !== state.instrument) return;
  if (name === "bars" && row.interval === state.interval) upsertBar(row);
  else if (name === "indicators" && row.interval === state.interval) upsertIndicators(row);
  else if (name === "bbo") wantBook();
  else if (name === "pressure") {
    if (!state.pressure || timeMs(row.start) >= timeMs(state.pressure.start)) {
      state.pressure = row;
      schedule("flow");
    }
  }
}

function setConnection(kind, detail = "") {
  const el = $("ws-state");
  el.dataset.state = kind;
  el.textContent = detail ? `${kind}: ${detail}` : kind;
}

// ---- rendering -------------------------------------------------------------------------

// Thousands of frames a second can arrive during a replay: they only mark what changed,
// and the page is drawn at most RENDER_EVERY_MS apart, which reads as live and leaves the
// CPU to the worker when both share a machine.
const dirty = new Set();
let frameAsked = false;
let renderedAt = -Infinity;

function schedule(...parts) {
  parts.forEach((p) => dirty.add(p));
  if (frameAsked) return;
  frameAsked = true;
  const wait = Math.max(0, renderedAt + RENDER_EVERY_MS - performance.now());
  setTimeout(() => requestAnimationFrame(render), wait);
}

function render() {
  frameAsked = false;
  renderedAt = performance.now();
  const parts = new Set(dirty);
  dirty.clear();
  const has = (p) => parts.has("all") || parts.has(p);
  if (has("readouts")) renderReadouts();
  if (has("charts")) {
    drawCharts(sortedBars(), (bar) => state.indicators.get(bar.start), emptyText());
  }
  if (has("ladder")) renderLadder();
  if (has("flow")) renderFlow();
  if (has("signals")) renderSignals();
  renderStatus();
}

function renderReadouts() {
  const bars = sortedBars();
  const last = bars[bars.length - 1] || {};
  // whose values these are: a reader can tell them from the previous instrument's
  $("bar-readouts").dataset.value = state.instrument === null ? "" : String(state.instrument);
  setValue($("bar-start"), last.start, last.start ? fmtTime(last.start, false) : "–");
  setValue($("bar-open"), last.open, fmtPrice(last.open));
  setValue($("bar-high"), last.high, fmtPrice(last.high));
  setValue($("bar-low"), last.low, fmtPrice(last.low));
  setValue($("bar-close"), last.close, fmtPrice(last.close));
  setValue($("bar-vwap"), last.vwap, fmtDerived(last.vwap));
  setValue($("bar-volume"), last.volume, fmtInt(last.volume));
  const ind = state.latestIndicators || {};
  for (const [id, key] of [
    ["rsi", "rsi_14"], ["macd", "macd"], ["macd-signal", "macd_signal"],
    ["macd-hist", "macd_hist"], ["bb-lower", "bb_lower"], ["bb-mid", "bb_mid"],
    ["bb-upper", "bb_upper"],
  ]) {
    const text = key.startsWith("bb_") ? fmtDerived(ind[key]) : fmtNum(ind[key]);
    setValue($(id), ind[key], text);
  }
}

function chosenBook() {
  const books = (state.book && state.book.books) || [];
  return books.find((b) => b.publisher_id === state.publisher) || books[0] || null;
}

function renderLadder() {
  const b = chosenBook();
  state.publisher = b ? b.publisher_id : null;
  renderBookInfo(b);
  const bids = (b && b.bids) || [];
  const asks = (b && b.asks) || [];
  const biggest = Math.max(1, ...bids.map((l) => l[1]), ...asks.map((l) => l[1]));
  const rows = [];
  for (let i = 0; i < LADDER_DEPTH; i++) {
    rows.push(ladderRow(i, bids[i], asks[i], biggest));
  }
  $("ladder-rows").replaceChildren(...rows);
}

function ladderRow(i, bid, ask, biggest) {
  const tr = document.createElement("tr");
  tr.dataset.testid = `level-${i}`;
  const cell = (side, field, value, text, cls) => {
    const td = document.createElement("td");
    td.dataset.testid = `${side}-${i}-${field}`;
    td.className = cls;
    setValue(td, value, text);
    return td;
  };
  const level = document.createElement("td");
  level.className = "level";
  level.textContent = String(i + 1);
  const [bp, bs, bc] = bid || [];
  const [ap, as, ac] = ask || [];
  tr.append(
    level,
    cell("bid", "count", bc, bid ? fmtInt(bc) : "", "bid-depth"),
    cell("bid", "size", bs, bid ? fmtInt(bs) : "", "bid-depth"),
    cell("bid", "price", bp, bid ? fmtPrice(bp) : "", "bid-price bid-depth"),
    cell("ask", "price", ap, ask ? fmtPrice(ap) : "", "ask-price ask-depth"),
    cell("ask", "size", as, ask ? fmtInt(as) : "", "ask-depth"),
    cell("ask", "count", ac, ask ? fmtInt(ac) : "", "ask-depth"),
  );
  // depth bars behind each side, through a custom property: the CSP forbids inline styles
  tr.querySelectorAll(".bid-depth").forEach((td) =>
    td.style.setProperty("--depth", `${((bs || 0) / biggest) * 100}%`));
  tr.querySelectorAll(".ask-depth").forEach((td) =>
    td.style.setProperty("--depth", `${((as || 0) / biggest) * 100}%`));
  return tr;
}

function renderBookInfo(b) {
  const info = $("book-info");
  if (!b) {
    info.textContent = state.instrument === null ? "" : "no book yet";
    return;
  }
  const parts = [
    `${b.bid_levels} bid / ${b.ask_levels} ask levels`,
    `${fmtInt(b.orders)} orders`,
  ];
  if (b.suspect) parts.push("SUSPECT (gaps or bad records)");
  info.textContent = parts.join(" · ") + " · publisher ";
  const books = state.book.books;
  if (books.length > 1) {
    // several venues quote this instrument: one ladder at a time
    const pick = document.createElement("select");
    pick.dataset.testid = "publisher-picker";
    books.forEach((x) => pick.add(new Option(String(x.publisher_id), String(x.publisher_id))));
    pick.value = String(b.publisher_id);
    pick.onchange = () => {
      state.publisher = Number(pick.value);
      schedule("ladder");
    };
    info.append(pick);
  } else {
    info.append(String(b.publisher_id));
  }
}

function renderFlow() {
  const p = state.pressure;
  const none = state.instrument === null ? "" : "no closed window yet";
  $("flow-window").textContent = p ? `${p.interval} window from ${fmtTime(p.start, false)}` : none;
  const fields = [
    ["buy_volume", "buy vol", fmtInt], ["sell_volume", "sell vol", fmtInt],
    ["tfi", "TFI", fmtNum], ["ofi", "OFI", fmtInt], ["net_score", "net", fmtNum],
    ["z_net", "z_net", fmtNum], ["vwap", "VWAP", fmtDerived], ["last_price", "last", fmtPrice],
  ];
  $("flow").replaceChildren(
    ...(p ? fields.map(([key, label, fmt]) => readout(key, label, p[key], fmt)) : []),
  );
}

function readout(key, label, value, fmt) {
  const span = document.createElement("span");
  span.dataset.field = key;
  const b = document.createElement("b");
  setValue(b, value, fmt(value));
  span.append(`${label} `, b);
  return span;
}

function renderSignals() {
  $("signal-rows").replaceChildren(...newestSignals(shownSignal).map(signalRow));
}

function signalRow(s) {
  const li = document.createElement("li");
  li.dataset.testid = "signal";
  li.dataset.signalId = s.id;
  li.dataset.kind = s.kind;
  li.dataset.direction = s.direction || "";
  li.dataset.instrument = String(s.instrument_id);
  li.classList.toggle("other", s.instrument_id !== state.instrument);
  li.classList.toggle("new", state.fresh.has(s.id));
  const part = (text, cls, value) => {
    const el = document.createElement("span");
    el.className = cls;
    if (value !== undefined) setValue(el, value, text);
    else el.textContent = text;
    return el;
  };
  const conf = typeof s.confidence === "number" ? `${(s.confidence * 100).toFixed(1)}%` : "";
  const line = document.createElement("div");
  line.className = "line";
  line.append(
    part(fmtTime(s.start), "time"),
    part(instrumentLabel(s.instrument_id), "instrument"),
    part(s.interval ? `${s.kind} ${s.interval}` : s.kind, "kind"),
    part(s.direction || "–", `direction ${s.direction || ""}`),
    part(conf, "confidence", s.confidence),
    part(s.strength || "", "strength"),
  );
  li.append(line, why(s));
  return li;
}

// The numbers that explain a signal: an IFD's z-scores, a pattern's rule inputs.
function why(s) {
  const keys = s.kind === "ifd"
    ? IFD_WHY
    : Object.keys(s).filter((k) => !SIGNAL_IDENTITY.has(k) && typeof s[k] === "number");
  const div = document.createElement("div");
  div.className = "why";
  for (const key of keys) {
    if (!(key in s)) continue;
    const span = document.createElement("span");
    span.dataset.field = key;
    span.dataset.value = s[key] === null ? "" : String(s[key]);
    const b = document.createElement("b");
    b.textContent = PRICE_FIELDS.has(key) ? fmtPrice(s[key]) : fmtNum(s[key]);
    span.append(`${key} `, b);
    div.append(span);
  }
  return div;
}

function emptyText() {
  return state.instrument === null ? "waiting for instruments…" : "no closed bars yet";
}

function renderStatus() {
  const lag = state.lag ? Object.values(state.lag) : [];
  const worst = lag.length ? Math.max(...lag) : null;
  const lagEl = $("worker-lag");
  setValue(lagEl, worst, worst === null ? "–" : `${fmtNum(worst)} s`);
  lagEl.title = state.lag
    ? Object.entries(state.lag).map(([a, v]) => `${a}: ${fmtNum(v)} s`).join(", ")
    : "";
  const lat = state.latencyMs;
  setValue($("feed-latency"), lat, lat === null ? "–" : `${Math.round(lat) || 0} ms`);
  const last = state.lastUpdate;
  $("last-update").textContent = last ? `${last.toISOString().slice(11, 19)} UTC` : "–";
}

// ---- start -----------------------------------------------------------------------------

function start() {
  renderIntervals();
  renderPicker();
  $("instrument").onchange = (ev) => chooseInstrument(Number(ev.target.value));
  $("interval").onchange = (ev) => chooseInterval(ev.target.value);
  for (const filter of ["feed-kind", "feed-mine"]) {
    $(filter).onchange = () => {
      loadSignals();
      schedule("signals");
    };
  }
  new ResizeObserver(() => schedule("charts")).observe(document.querySelector(".charts"));
  setInterval(() => state.instrument !== null && wantBook(), BOOK_POLL_MS);
  // the highlight of new signals fades by itself; the rows are redrawn once it has
  setInterval(() => state.fresh.size === 0 || schedule("signals"), 3000);
  feed.connect();
  feed.watch();
  loadInstruments();
  loadSignals();
  pollMetrics();
  schedule("all");
}

start();
