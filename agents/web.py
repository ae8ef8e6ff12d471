"""Web views on each worker: table reads routed to the owning worker, and /metrics.

GET /instruments/                 every instrument with its counts (gathered from all workers)
GET /instruments/{instrument_id}/ one instrument, answered by the worker that owns it
GET /books/                       every instrument's books with their BBO (from all workers)
GET /books/{instrument_id}/?depth=N  top N levels of each of the instrument's books (owner)
GET /bars/{instrument_id}/?interval=1m&limit=N  its latest N closed bars, oldest first (owner)
GET /indicators/{instrument_id}/?interval=1m    its indicators after its latest bar (owner)
GET /signals/?instrument_id=&limit=N  the latest N signals, newest first (from all workers)
GET /options/?group=&limit=N    the latest N option-group signals, newest first (all workers)
GET /config/                      the runtime settings this worker applies (control topic)
PUT /config/{key}                 change one for every worker (an operator's, with tokens on)
GET /metrics                      Prometheus metrics (Faust's and tapestream's)
GET /openapi.json                 the OpenAPI document of these views (app/openapi.py)
GET /ws                           WebSocket: subscribe, a snapshot, then updates (app/websocket.py)
POST /ingest/ticks                vendor ticks pushed to the raw topic (agents/ingest.py)
GET /health                       200 while the worker runs, with whether it is ready
GET /ready                        200 once it owns partitions with their tables restored, else 503

A view for one instrument is answered by the worker that owns it. While that cannot be known
or reached (a worker's first seconds, a peer that does not answer) it answers 503 with
Retry-After, never 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.web import HTTPRequestEntityTooLarge, WebSocketResponse
from faust.exceptions import SameNode
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.web import Request, Response, View

from agents.control import control
from agents.instruments import checkpoints, restore_books, stages
from agents.options import groups as option_groups_stage
from app import metrics, openapi
from app.control import publish as publish_setting
from app.faust_app import app, settings
from app.recovery_status import log_progress, recovery_status
from app.state_tables import TABLES
from app.symbols import SymbolNames
from app.topic_feed import TopicFeed
from app.topics import partition_of
from app.transport import table_owner
from app.websocket import EVENT_CHANNELS, STATE_CHANNELS, TOO_SLOW, Hub
from models.intervals import interval_name, parse_interval
from models.mbo import instrument_key
from models.units import Units, parse_time, parse_units, shown
from tables.instrument_stats import InstrumentStats
from tables.runtime_config import KEYS as CONFIG_KEYS
from tables.runtime_config import parse
from tables.state_keys import bars_key

log = logging.getLogger(__name__)
book_set = stages.books.books
bar_set = stages.bars.bars
ifd_set = stages.flow.flow
option_groups = option_groups_stage.groups
books_table, bars_table, ifd_table = TABLES["books"], TABLES["bars"], TABLES["ifd"]
instrument_stats, options_table = TABLES["instrument-stats"], TABLES["options"]
PEER_TIMEOUT = aiohttp.ClientTimeout(total=5)
MAX_DEPTH = 1000
MAX_SIGNALS = 1000
RETRY_AFTER_S = 2
PUBLISH_TIMEOUT_S = 10  # a PUT answers 503 rather than outwait its client

symbols = SymbolNames(settings)
setup_prometheus_sensors(app, pattern="/metrics")


def _local_instruments() -> list[dict[str, Any]]:
    return [InstrumentStats.from_bytes(v).public() for _, v in instrument_stats.items() if v]


def _peer_urls() -> list[str]:
    """Web URLs of the other workers in the group, from the partition assignor."""
    me = str(app.conf.canonical_url).rstrip("/")
    urls = {str(url).rstrip("/") for url in app.router.tables_metadata()}
    return sorted(u for u in urls if u != me)


async def _fetch_peer(
    session: aiohttp.ClientSession,
    url: str,
    path: str,
    field: str,
    params: dict[str, str],
    headers: dict[str, str],
) -> list[dict[str, Any]]:
    async with session.get(
        f"{url}{path}", params={**params, "scope": "local"}, headers=headers
    ) as resp:
        resp.raise_for_status()
        body = await resp.json()
        if body.get("partial"):
            raise _PeerPartial()
        return list(body[field])


class _PeerPartial(Exception):
    """A peer answered with what it has, but not all it owns (it is restoring its tables)."""


async def _gather(
    request: Request, path: str, field: str, local: list[dict[str, Any]], by: str = "instrument_id"
) -> tuple[list[dict[str, Any]], list[str]]:
    """This worker's items plus every peer's (unless asked for `scope=local`), sorted by
    instrument; a peer that does not answer is named in the errors rather than left out
    silently."""
    items = list(local)
    errors: list[str] = []
    if _recovering():
        # What this worker holds is not yet all it owns: the answer says so, never a total
        # that looks whole and is not (the peers' own answers say so for them).
        errors.append("this worker: restoring its tables")
    if request.query.get("scope") != "local":
        peers = _peer_urls()
        if peers:
            async with aiohttp.ClientSession(timeout=PEER_TIMEOUT) as session:
                params = {k: v for k, v in request.query.items() if k != "scope"}
                params["units"] = "raw"  # converted once, with this worker's own items
                # the caller's token, for peers that require one (app/access.py)
                auth = request.headers.get("Authorization")
                headers = {"Authorization": auth} if auth else {}
                results = await asyncio.gather(
                    *(_fetch_peer(session, u, path, field, params, headers) for u in peers),
                    return_exceptions=True,
                )
            for url, res in zip(peers, results, strict=True):
                if isinstance(res, BaseException):
                    errors.append(f"{url}: {_said(res)}")
                else:
                    items.extend(res)
    items.sort(key=lambda d: d[by])
    return items, errors


def _said(exc: BaseException) -> str:
    """A peer's failure in a few words. Never the exception's text: aiohttp's holds the
    request's headers, the caller's token among them."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, _PeerPartial):
        return "restoring its tables"
    return type(exc).__name__


def _unavailable(view: View, reason: str) -> Response:
    return view.json(
        {"error": f"{reason}; try again shortly", "retry_after_s": RETRY_AFTER_S},
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


Handler = Callable[..., Awaitable[Response]]


def routed(table: Any, match_info: str) -> Callable[[Handler], Handler]:
    """Faust's `table_route`, answered by the worker that owns the key, with a 503 and
    Retry-After (never a 500) while the owner cannot be known or does not answer."""

    def decorator(fun: Handler) -> Handler:
        @functools.wraps(fun)
        async def get(view: View, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = request.match_info[match_info]
            if table_owner(app, table, key) is None:
                return _unavailable(view, "this worker does not know the key's owner yet")
            try:
                return await app.router.route_req(table.name, key, view.web, request)
            except SameNode:
                return await fun(view, request, *args, **kwargs)
            except (aiohttp.ClientError, TimeoutError):
                return _unavailable(view, "the worker that owns this key did not answer")

        return get

    return decorator


def _with_errors(body: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    if errors:
        body["partial"] = True
        body["errors"] = errors
    return body


class _BadRequest(ValueError):
    """A request parameter the view cannot take: answered 400 with the parameter's name."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(reason)
        self.parameter = parameter


def _bad(view: View, exc: _BadRequest) -> Response:
    return view.json({"error": str(exc), "parameter": exc.parameter}, status=400)


def units_of(request: Request) -> Units:
    try:
        return parse_units(request.query.get("units"))
    except ValueError as exc:
        raise _BadRequest("units", str(exc)) from None


def _data(view: View, units: Units, body: dict[str, Any]) -> Response:
    """A data view's answer with its prices and times in the units asked for (models/units.py):
    decimals and ISO 8601 unless the request says `units=raw`."""
    return view.json(shown(body, units))


def _digits(raw: str, most: int) -> bool:
    """ASCII digits, at most `most` of them: str.isdigit() also takes "²", which int() refuses,
    and int() refuses more than 4300 digits; either would answer 500."""
    return raw.isascii() and raw.isdigit() and len(raw) <= most


def _instrument(raw: str, parameter: str = "instrument_id") -> int:
    if not _digits(raw, 10):  # ids are uint32
        raise _BadRequest(parameter, f"not an instrument id: {raw!r}")
    return int(raw)


def _bounded(request: Request, name: str, default: int, top: int) -> int:
    raw = request.query.get(name, str(default))
    if not _digits(raw, 18) or not 1 <= int(raw) <= top:
        raise _BadRequest(name, f"{name} must be an integer from 1 to {top}, not {raw!r}")
    return int(raw)


def _time_range(request: Request) -> tuple[int | None, int | None]:
    """`from` (inclusive) and `to` (exclusive) of a request, in ns; each optional."""
    out: list[int | None] = []
    for name in ("from", "to"):
        raw = request.query.get(name)
        try:
            out.append(None if raw is None else parse_time(raw))
        except ValueError as exc:
            raise _BadRequest(name, str(exc)) from None
    if out[0] is not None and out[1] is not None and out[0] >= out[1]:
        raise _BadRequest("to", "to must be after from")
    return out[0], out[1]


def _in_range(ns: int, since: int | None, until: int | None) -> bool:
    return (since is None or ns >= since) and (until is None or ns < until)


@app.page("/instruments/")
class InstrumentsView(View):
    async def get(self, request: Request) -> Response:
        try:
            units = units_of(request)
        except _BadRequest as exc:
            return _bad(self, exc)
        items, errors = await _gather(request, "/instruments/", "instruments", _local_instruments())
        names = await symbols.names()
        for item in items:
            entry = names.get(item["instrument_id"])
            if entry is not None:
                item.update(symbol=entry.symbol, namespace=entry.namespace)
        body = {
            "instruments": items,
            "count": len(items),
            "records": sum(d["records"] for d in items),
        }
        return _data(self, units, _with_errors(body, errors))


@app.page("/symbols/")
class SymbolsView(View):
    """The symbology table of the feeds that name instruments by symbol (tables/symbology.py):
    every name met, with its id, read from the `symbols` topic."""

    async def get(self, request: Request) -> Response:
        try:
            units = units_of(request)
        except _BadRequest as exc:
            return _bad(self, exc)
        try:
            entries = [e.as_json() for e in await symbols.entries()]
        except Exception as exc:
            log.warning("the symbols topic could not be read: %r", exc)
            return _unavailable(self, "the symbols topic could not be read")
        return _data(self, units, {"symbols": entries, "count": len(entries)})


def _recovering() -> bool:
    """Whether tables are still being restored: books must not be loaded from a table that is
    only partly there."""
    return bool(app.in_recovery or app.rebalancing)


async def _local_books() -> list[dict[str, Any]] | None:
    """This worker's books, or None while its tables are being restored."""
    if _recovering():
        return None
    async with checkpoints.state_lock:
        # Books load when their next message arrives; a listing loads the rest from the table.
        for key in list(books_table.keys()):
            if b"/" not in key:
                restore_books(int(key), partition_of(key))
        return [
            {"instrument_id": iid, "books": book_set.bbo(iid)}
            for iid in sorted(book_set.instruments)
        ]


@app.page("/books/")
class BooksView(View):
    async def get(self, request: Request) -> Response:
        try:
            units = units_of(request)
        except _BadRequest as exc:
            return _bad(self, exc)
        local = await _local_books()
        if local is None:
            return _unavailable(self, "tables are being restored")
        items, errors = await _gather(request, "/books/", "instruments", local)
        return _data(self, units, _with_errors({"instruments": items, "count": len(items)}, errors))


@app.page("/books/{instrument_id}/")
class BookView(View):
    @routed(books_table, "instrument_id")
    async def get(self, request: Request, instrument_id: str) -> Response:
        try:
            iid = _instrument(instrument_id)
            depth = _bounded(request, "depth", 10, MAX_DEPTH)
            units = units_of(request)
        except _BadRequest as exc:
            return _bad(self, exc)
        key = instrument_id.encode()
        if not book_set.loaded(iid) and _recovering():
            return _unavailable(self, "tables are being restored")
        if not book_set.loaded(iid) and books_table.get(key) is None:
            return self.json({"error": f"no book for instrument {iid}"}, status=404)
        async with checkpoints.state_lock:
            restore_books(iid, partition_of(key))
            view = book_set.view(iid, depth)
        if not view["books"]:
            return self.json({"error": f"no book for instrument {iid}"}, status=404)
        return _data(self, units, view)


def _interval(request: Request) -> int:
    configured = bar_set.intervals
    raw = request.query.get("interval", interval_name(configured[0]))
    try:
        iv = parse_interval(raw)
    except ValueError as exc:
        raise _BadRequest("interval", str(exc)) from None
    if iv not in configured:
        names = ", ".join(interval_name(i) for i in configured)
        raise _BadRequest("interval", f"interval {raw} is not built here; these are: {names}")
    return iv


class _BarView(View):
    """One instrument and interval, answered by the worker that owns the instrument: from
    memory once its partition has had trades here, else from the table's checkpoint."""

    @routed(bars_table, "instrument_id")
    async def get(self, request: Request, instrument_id: str) -> Response:
        try:
            iid, iv, units = _instrument(instrument_id), _interval(request), units_of(request)
            body = self.answer(request, iid, iv)
        except _BadRequest as exc:
            return _bad(self, exc)
        if body is None:
            return self.json({"error": f"no {interval_name(iv)} bars for {iid}"}, status=404)
        return _data(self, units, {"instrument_id": iid, "interval": interval_name(iv), **body})

    def answer(self, request: Request, iid: int, iv: int) -> dict[str, Any] | None:
        raise NotImplementedError


@app.page("/bars/{instrument_id}/")
class BarsView(_BarView):
    """The latest closed bars the worker keeps (`bar_set.keep` per instrument and interval),
    oldest first; `from`/`to` choose those whose window starts in [from, to)."""

    def answer(self, request: Request, iid: int, iv: int) -> dict[str, Any] | None:
        limit = _bounded(request, "limit", 100, bar_set.keep)
        since, until = _time_range(request)
        bars = bar_set.recent(iid, iv, bar_set.keep)
        if bars is None:
            saved = bars_table.get(bars_key(iid, iv))
            bars = json.loads(saved) if saved is not None else None
        if not bars:
            return None
        chosen = [b for b in bars if _in_range(b["start"], since, until)][-limit:]
        return {"count": len(chosen), "bars": chosen}


@app.page("/indicators/{instrument_id}/")
class IndicatorsView(_BarView):
    def answer(self, request: Request, iid: int, iv: int) -> dict[str, Any] | None:
        values = bar_set.indicator_values(iid, iv)
        if values is None:
            saved = bars_table.get(instrument_key(iid))
            ind = json.loads(saved)["indicators"].get(interval_name(iv)) if saved else None
            values = {"bars": ind["count"], **ind["values"]} if ind else None
        return values


@dataclass(frozen=True)
class _SignalQuery:
    """What /signals/ and /options/ filter by; every filter optional."""

    limit: int
    since: int | None
    until: int | None
    kind: str | None
    direction: str | None
    min_confidence: float | None

    @classmethod
    def of(cls, request: Request) -> _SignalQuery:
        since, until = _time_range(request)
        direction = request.query.get("direction") or None
        if direction not in (None, "BUY", "SELL"):
            raise _BadRequest("direction", f"direction is BUY or SELL, not {direction!r}")
        raw_conf = request.query.get("min_confidence")
        try:
            conf = None if raw_conf is None else float(raw_conf)
        except ValueError:
            conf = -1.0
        if conf is not None and not 0 <= conf <= 1:
            raise _BadRequest("min_confidence", f"a number from 0 to 1, not {raw_conf!r}")
        limit = _bounded(request, "limit", 100, MAX_SIGNALS)
        return cls(limit, since, until, request.query.get("kind") or None, direction, conf)

    def wants(self, s: dict[str, Any]) -> bool:
        return (
            _in_range(s["start"], self.since, self.until)
            and (self.kind is None or s["kind"] == self.kind)
            and (self.direction is None or s["direction"] == self.direction)
            and (self.min_confidence is None or (s.get("confidence") or 0) >= self.min_confidence)
        )


@app.page("/signals/")
class SignalsView(View):
    """Signals from every worker, newest first: each keeps its instruments' latest (200 per
    instrument), in memory once the partition has had a message here, else as last
    checkpointed; filtered by instrument, kind, direction, confidence and time."""

    async def get(self, request: Request) -> Response:
        raw_iid = request.query.get("instrument_id", "")
        try:
            iid = _instrument(raw_iid) if raw_iid else None
            q, units = _SignalQuery.of(request), units_of(request)
        except _BadRequest as exc:
            return _bad(self, exc)
        items, errors = await _gather(request, "/signals/", "signals", _local_signals(iid))
        items = [s for s in items if q.wants(s)]
        items.sort(
            key=lambda s: (s["start"], s["instrument_id"], s["kind"], s["direction"]), reverse=True
        )
        items = items[: q.limit]
        return _data(self, units, _with_errors({"signals": items, "count": len(items)}, errors))


@app.page("/options/")
class OptionSignalsView(View):
    """Option-group signals from every worker (tables/options.py), as /signals/ serves an
    instrument's."""

    async def get(self, request: Request) -> Response:
        group = request.query.get("group") or None
        try:
            if group is not None and len(group.split("|")) != 4:
                reason = (
                    f"a group is underlying|expiration|strike|right with * for any, not {group!r}"
                )
                raise _BadRequest("group", reason)
            q, units = _SignalQuery.of(request), units_of(request)
        except _BadRequest as exc:
            return _bad(self, exc)
        local = option_groups.recent_signals(group)
        for key, value in list(options_table.items()):
            if key.endswith(b"/signals") and value is not None:
                owner = key[: -len(b"/signals")]
                mine = group is None or owner == group.encode()
                if mine and not option_groups.loaded(partition_of(owner)):
                    local.extend(json.loads(value))
        items, errors = await _gather(request, "/options/", "signals", local, by="group")
        items = [s for s in items if q.wants(s)]
        items.sort(key=lambda s: (s["start"], s["group"], s["direction"]), reverse=True)
        items = items[: q.limit]
        return _data(self, units, _with_errors({"signals": items, "count": len(items)}, errors))


def _local_signals(iid: int | None) -> list[dict[str, Any]]:
    """Flow signals (kept by the flow stage) and patterns (by the bars stage): from memory for
    partitions loaded here, from their tables' checkpoints for the rest."""
    out: list[dict[str, Any]] = []
    for state, table, suffix in (
        (ifd_set, ifd_table, b"/signals"),
        (bar_set, bars_table, b"/patterns"),
    ):
        out += state.recent_signals(iid)
        for key, value in list(table.items()):
            if not key.endswith(suffix) or value is None:
                continue
            owner = key[: key.index(b"/")]
            if (iid is None or int(owner) == iid) and not state.loaded(partition_of(owner)):
                out.extend(json.loads(value))
    return out


@app.page("/instruments/{instrument_id}/")
class InstrumentView(View):
    @routed(instrument_stats, "instrument_id")
    async def get(self, request: Request, instrument_id: str) -> Response:
        try:
            iid, units = _instrument(instrument_id), units_of(request)
        except _BadRequest as exc:
            return _bad(self, exc)
        value = instrument_stats.get(instrument_id.encode())
        if value is None:
            return self.json({"error": f"unknown instrument {iid}"}, status=404)
        row = InstrumentStats.from_bytes(value).public()
        entry = (await symbols.names()).get(iid)
        if entry is not None:
            row.update(symbol=entry.symbol, namespace=entry.namespace)
        return _data(self, units, row)


@app.page("/config/")
class ConfigView(View):
    async def get(self, request: Request) -> Response:
        values = control.current.values()
        return self.json(
            {
                "caught_up": control.caught_up.is_set(),
                "settings": {
                    k: {"value": v, "from": "control" if k in control.changed_keys else "env"}
                    for k, v in values.items()
                },
            }
        )


@app.page("/config/{key}")
class ConfigKeyView(View):
    """PUT `{"value": ...}`: a runtime setting changed for every worker, through the control
    topic (operators only when tokens are configured: agents/access.py)."""

    async def put(self, request: Request, key: str) -> Response:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to decode
            return self.json({"error": 'the body must be JSON: {"value": ...}'}, status=400)
        except HTTPRequestEntityTooLarge as exc:  # aiohttp's own answer would be plain text
            return self.json({"error": exc.text}, status=413)
        value = body.get("value") if isinstance(body, dict) else None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return self.json({"error": "`value` must be a string or a number"}, status=400)
        text = str(value)
        try:
            new = parse(key, text)
            old = control.current.values()[key]
            control.current.with_value(key, new)  # the settings as a whole must still hold
        except ValueError as exc:
            status = 404 if key not in CONFIG_KEYS else 422
            return self.json({"error": str(exc)}, status=status)
        try:
            await asyncio.wait_for(publish_setting(settings, key, text), PUBLISH_TIMEOUT_S)
        except Exception as exc:
            log.error("a runtime setting could not be published: %r", exc)
            return _unavailable(self, "the control topic did not take the change")
        metrics.config_changes.inc()
        log.info("runtime setting %s: %r -> %r (PUT /config/)", key, old, new)
        applies = "on every worker, from the control topic"
        return self.json({"key": key, "old": old, "new": new, "applies": applies})


@app.page("/health")
class HealthView(View):
    """Liveness, which partitions this worker owns (empty until it joined the group), and
    how far a table restore has come."""

    async def get(self, request: Request) -> Response:
        actives = sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives())
        status = recovery_status(app)
        return self.json(
            {
                "ok": True,
                "ready": _ready(status),
                "app": app.conf.id,
                "rebalancing": bool(app.rebalancing),
                "active_partitions": actives,
                "standby_partitions": len(app.assignor.assigned_standbys()),
                "recovery": status,
            }
        )


def _ready(status: dict[str, Any]) -> bool:
    return not status["recovering"] and bool(app.assignor.assigned_actives())


@app.page("/ready")
class ReadyView(View):
    """Readiness: 200 once the worker owns partitions and their tables are restored; 503,
    with the recovery's progress, while it joins, rebalances or restores."""

    async def get(self, request: Request) -> Response:
        status = recovery_status(app)
        if _ready(status):
            return self.json({"ready": True, **status})
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return self.json({"ready": False, **status}, status=503, headers=headers)


_BARS = [f"bars.{interval_name(iv)}" for iv in settings.bar_intervals_ns]
hub = Hub([interval_name(iv) for iv in settings.bar_intervals_ns], max_pending=settings.ws_queue)
feed = TopicFeed(
    hub,
    settings,
    {c: settings.topic(c) for c in (*STATE_CHANNELS, *EVENT_CHANNELS, *_BARS)},
    settings.partitions,
    settings.ws_warm,
)
hub.read_from(feed.start_channel)


@app.page("/openapi.json")
class OpenApiView(View):
    """The OpenAPI document of these views (app/openapi.py)."""

    async def get(self, request: Request) -> Response:
        return self.json(openapi.document())


@app.page("/ws")
class WebSocketView(View):
    """The WebSocket feed: a client subscribes to channels and gets a snapshot, then updates."""

    async def get(self, request: Request) -> Any:
        # A browser that offers its token as the subprotocol `bearer.<token>` (app/access.py)
        # also offers `tapestream`, which is the one chosen: the token is never echoed. One
        # that offers no `tapestream` is refused here: aiohttp would log what it was offered.
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if offered != [""] and "tapestream" not in offered:
            return self.json({"error": "offer the subprotocol `tapestream`"}, status=400)
        ws = WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024, protocols=("tapestream",))
        await ws.prepare(request)  # type: ignore[arg-type]  # aiohttp's own request
        client = hub.connect(ws.send_str)
        metrics.ws_clients.set(len(hub.clients))
        writer = asyncio.ensure_future(client.writer())
        reader = asyncio.ensure_future(_read(ws, client))
        try:
            # The writer stops only for a client too slow to keep, the reader when it leaves.
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if client.closed and client.closed.startswith("too slow"):
                metrics.ws_closed_slow.inc()
                await ws.close(code=TOO_SLOW, message=client.closed.encode()[:120])
        finally:
            hub.disconnect(client)
            metrics.ws_clients.set(len(hub.clients))
            for task in (reader, writer):
                task.cancel()
            # Each task's end retrieved: a send to a client that just left raises
            # ConnectionError, which is no error of ours; anything else is logged once here
            # rather than as "Task exception was never retrieved".
            for end in await asyncio.gather(reader, writer, return_exceptions=True):
                if isinstance(end, Exception) and not isinstance(end, ConnectionError):
                    log.error("WebSocket client %d failed", client.id, exc_info=end)
            if not ws.closed:
                await ws.close()
        return ws


async def _read(ws: WebSocketResponse, client: Any) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await client.request(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await client.request("binary frames are not read")


@app.timer(5.0)
async def _log_recovery() -> None:
    log_progress(app)


@app.on_before_shutdown.connect
async def _stop_feed(app: Any, **kwargs: Any) -> None:
    await feed.stop()
