"""Web views on each worker: table reads routed to the owning worker, and /metrics.

GET /instruments/                 every instrument with its counts (gathered from all workers)
GET /instruments/{instrument_id}/ one instrument, answered by the worker that owns it
GET /books/                       every instrument's books with their BBO (from all workers)
GET /books/{instrument_id}/?depth=N  top N levels of each of the instrument's books (owner)
GET /metrics                      Prometheus metrics (Faust's and tapestream's)
GET /health                       200 once the worker is up
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.web import Request, Response, View
from faust.web import exceptions as web_exceptions

from agents.books import book_set, ensure_loaded, state_lock
from app.faust_app import app
from app.topics import partition_of
from tables.declarations import books as books_table
from tables.declarations import instrument_stats
from tables.instrument_stats import InstrumentStats

log = logging.getLogger(__name__)
PEER_TIMEOUT = aiohttp.ClientTimeout(total=5)
MAX_DEPTH = 1000

setup_prometheus_sensors(app, pattern="/metrics")


def _local_instruments() -> list[dict[str, Any]]:
    return [InstrumentStats.from_bytes(v).public() for _, v in instrument_stats.items() if v]


def _peer_urls() -> list[str]:
    """Web URLs of the other workers in the group, from the partition assignor."""
    me = str(app.conf.canonical_url).rstrip("/")
    urls = {str(url).rstrip("/") for url in app.router.tables_metadata()}
    return sorted(u for u in urls if u != me)


async def _fetch_peer(
    session: aiohttp.ClientSession, url: str, path: str, field: str
) -> list[dict[str, Any]]:
    async with session.get(f"{url}{path}", params={"scope": "local"}) as resp:
        resp.raise_for_status()
        body = await resp.json()
        return list(body[field])


async def _gather(
    request: Request, path: str, field: str, local: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """This worker's items plus every peer's (unless asked for `scope=local`), sorted by
    instrument; a peer that does not answer is named in the errors rather than left out
    silently."""
    items = list(local)
    errors: list[str] = []
    if request.query.get("scope") != "local":
        peers = _peer_urls()
        if peers:
            async with aiohttp.ClientSession(timeout=PEER_TIMEOUT) as session:
                results = await asyncio.gather(
                    *(_fetch_peer(session, u, path, field) for u in peers),
                    return_exceptions=True,
                )
            for url, res in zip(peers, results, strict=True):
                if isinstance(res, BaseException):
                    errors.append(f"{url}: {res!r}")
                else:
                    items.extend(res)
    items.sort(key=lambda d: d["instrument_id"])
    return items, errors


def _with_errors(body: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    if errors:
        body["partial"] = True
        body["errors"] = errors
    return body


@app.page("/instruments/")
class InstrumentsView(View):
    async def get(self, request: Request) -> Response:
        items, errors = await _gather(request, "/instruments/", "instruments", _local_instruments())
        body = {
            "instruments": items,
            "count": len(items),
            "records": sum(d["records"] for d in items),
        }
        return self.json(_with_errors(body, errors))


def _recovering() -> bool:
    """Whether tables are still being restored: books must not be loaded from a table that is
    only partly there."""
    return bool(app.in_recovery or app.rebalancing)


async def _local_books() -> list[dict[str, Any]]:
    if _recovering():
        raise web_exceptions.ServiceUnavailable("tables are being restored; try again shortly")
    async with state_lock:
        # Books load when their next message arrives; a listing loads the rest from the table.
        for key in list(books_table.keys()):
            if b"/" not in key:
                ensure_loaded(int(key), partition_of(key))
        return [
            {"instrument_id": iid, "books": book_set.bbo(iid)}
            for iid in sorted(book_set.instruments)
        ]


@app.page("/books/")
class BooksView(View):
    async def get(self, request: Request) -> Response:
        items, errors = await _gather(request, "/books/", "instruments", await _local_books())
        return self.json(_with_errors({"instruments": items, "count": len(items)}, errors))


@app.page("/books/{instrument_id}/")
class BookView(View):
    @app.table_route(table=books_table, match_info="instrument_id")
    async def get(self, request: Request, instrument_id: str) -> Response:
        if not instrument_id.isdigit():
            return self.json({"error": f"not an instrument id: {instrument_id!r}"}, status=400)
        raw_depth = request.query.get("depth", "10")
        if not raw_depth.isdigit() or not 1 <= int(raw_depth) <= MAX_DEPTH:
            return self.json(
                {"error": f"depth must be an integer from 1 to {MAX_DEPTH}, not {raw_depth!r}"},
                status=400,
            )
        iid = int(instrument_id)
        key = instrument_id.encode()
        if not book_set.loaded(iid) and _recovering():
            return self.json({"error": "tables are being restored; try again shortly"}, status=503)
        if not book_set.loaded(iid) and books_table.get(key) is None:
            return self.json({"error": f"no book for instrument {iid}"}, status=404)
        async with state_lock:
            ensure_loaded(iid, partition_of(key))
            view = book_set.view(iid, int(raw_depth))
        if not view["books"]:
            return self.json({"error": f"no book for instrument {iid}"}, status=404)
        return self.json(view)


@app.page("/instruments/{instrument_id}/")
class InstrumentView(View):
    @app.table_route(table=instrument_stats, match_info="instrument_id")
    async def get(self, request: Request, instrument_id: str) -> Response:
        if not instrument_id.isdigit():
            return self.json({"error": f"not an instrument id: {instrument_id!r}"}, status=400)
        value = instrument_stats.get(instrument_id.encode())
        if value is None:
            return self.json({"error": f"unknown instrument {instrument_id}"}, status=404)
        return self.json(InstrumentStats.from_bytes(value).public())


@app.page("/health")
class HealthView(View):
    """Liveness, and which partitions this worker owns (empty until it joined the group)."""

    async def get(self, request: Request) -> Response:
        actives = sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives())
        return self.json(
            {
                "ok": True,
                "app": app.conf.id,
                "rebalancing": bool(app.rebalancing),
                "active_partitions": actives,
                "standby_partitions": len(app.assignor.assigned_standbys()),
            }
        )
