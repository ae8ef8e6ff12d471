"""Web views on each worker: table reads routed to the owning worker, and /metrics.

GET /instruments/                 every instrument with its counts (gathered from all workers)
GET /instruments/{instrument_id}/ one instrument, answered by the worker that owns it
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

from app.faust_app import app
from tables.declarations import instrument_stats
from tables.instrument_stats import InstrumentStats

log = logging.getLogger(__name__)
PEER_TIMEOUT = aiohttp.ClientTimeout(total=5)

setup_prometheus_sensors(app, pattern="/metrics")


def _local_instruments() -> list[dict[str, Any]]:
    return [InstrumentStats.from_bytes(v).public() for _, v in instrument_stats.items() if v]


def _peer_urls() -> list[str]:
    """Web URLs of the other workers in the group, from the partition assignor."""
    me = str(app.conf.canonical_url).rstrip("/")
    urls = {str(url).rstrip("/") for url in app.router.tables_metadata()}
    return sorted(u for u in urls if u != me)


async def _fetch_peer(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/instruments/", params={"scope": "local"}) as resp:
        resp.raise_for_status()
        body = await resp.json()
        return list(body["instruments"])


@app.page("/instruments/")
class InstrumentsView(View):
    async def get(self, request: Request) -> Response:
        items = _local_instruments()
        errors: list[str] = []
        if request.query.get("scope") != "local":
            peers = _peer_urls()
            if peers:
                async with aiohttp.ClientSession(timeout=PEER_TIMEOUT) as session:
                    results = await asyncio.gather(
                        *(_fetch_peer(session, u) for u in peers), return_exceptions=True
                    )
                for url, res in zip(peers, results, strict=True):
                    if isinstance(res, BaseException):
                        # A partial answer says so rather than silently missing instruments.
                        errors.append(f"{url}: {res!r}")
                    else:
                        items.extend(res)
        items.sort(key=lambda d: d["instrument_id"])
        body: dict[str, Any] = {
            "instruments": items,
            "count": len(items),
            "records": sum(d["records"] for d in items),
        }
        if errors:
            body["partial"] = True
            body["errors"] = errors
        return self.json(body)


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
