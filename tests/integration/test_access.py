"""Tokens on two real workers: the probes stay open; every view, /metrics and the WebSocket
need a reader's token, also when a request is routed to the other worker or gathered from it;
changing a runtime setting needs an operator's, and reaches both workers; no token is logged."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import requests

from app.feeds.watermarks import partitioner
from tests.integration.conftest import Deployment, Worker, wait_for

pytestmark = pytest.mark.integration

READ = "reader-token-integration-0123456789"
OPER = "operator-token-integration-0123456789"


def _get(w: Worker, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(w.url + path, headers=headers, timeout=10)


def _put(w: Worker, key: str, body: object, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.put(f"{w.url}/config/{key}", json=body, headers=headers, timeout=30)


async def _ws(w: Worker, protocols: tuple[str, ...]) -> str | int:
    """The subprotocol the worker chose, or the handshake's refusal status."""
    url = w.url.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession() as s:
        try:
            async with s.ws_connect(url, protocols=protocols) as ws:
                await ws.send_json({"op": "ping"})
                return ws.protocol or ""
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def test_readers_read_operators_change_and_nobody_else(deployment: Deployment) -> None:
    deployment.base_env.update(
        TAPESTREAM_READ_TOKENS=READ, TAPESTREAM_OPERATOR_TOKENS=OPER, TAPESTREAM_PARTITIONS="4"
    )
    w1, w2 = deployment.worker("w1"), deployment.worker("w2")
    deployment.wait_assigned(w1, w2)

    for w in (w1, w2):
        assert _get(w, "/health", None).status_code == 200
        assert _get(w, "/ready", None).status_code in (200, 503)
    r = _get(w1, "/instruments/", None)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert _get(w1, "/instruments/", "not-a-token-of-this-worker").status_code == 401
    assert _get(w1, "/metrics", None).status_code == 401
    assert _get(w1, "/metrics", READ).status_code == 200

    # Gathered from both workers: the peer takes the caller's token.
    listing = _get(w1, "/instruments/", READ).json()
    assert "errors" not in listing, listing
    # Routed to the worker that owns the key: it answers (404: no such instrument yet).
    of = partitioner(4)
    theirs = next(i for i in range(1000, 2000) if of(i) in w2.owned(f"{deployment.prefix}mbo.raw"))
    r = _get(w1, f"/instruments/{theirs}/", READ)
    assert r.status_code == 404, r.text

    # Settings: readers may not change them, operators may, and both workers apply it.
    assert _put(w1, "signal.z_net", {"value": "4.5"}, READ).status_code == 403
    assert _put(w1, "signal.z_net", {"value": "4.5"}, None).status_code == 401
    assert _put(w1, "signal.z_net", {"value": "-1"}, OPER).status_code == 422
    assert _put(w1, "no.such.key", {"value": "1"}, OPER).status_code == 404
    assert _put(w1, "signal.z_net", ["4.5"], OPER).status_code == 400
    r = _put(w1, "signal.z_net", {"value": 4.5}, OPER)
    assert r.status_code == 200 and r.json()["new"] == 4.5, r.text
    for w in (w1, w2):
        wait_for(
            lambda w=w: (
                _get(w, "/config/", READ).json()["settings"]["signal.z_net"]
                == {"value": 4.5, "from": "control"}
            ),
            30,
            f"{w.name} applies the change",
        )

    # The WebSocket: a browser's token as a subprotocol; never echoed back.
    assert asyncio.run(_ws(w2, ("tapestream", f"bearer.{READ}"))) == "tapestream"
    assert asyncio.run(_ws(w2, ("tapestream",))) == 401

    for w in (w1, w2):
        log = w.log_path.read_text()
        assert READ not in log and OPER not in log
