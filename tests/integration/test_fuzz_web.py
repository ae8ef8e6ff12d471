"""One real worker's HTTP and WebSocket surface under random and malformed requests (issue #19,
item 2): every path of its own /openapi.json with random path and query parameters (bad ids,
huge values, invalid UTF-8, repeated and unknown parameters), random bodies for PUT and POST,
and at /ws random text, invalid JSON, unknown ops and channels, binary frames, a frame over the
64 KiB limit and one subscription too many.

No answer is a 500; every 4xx is JSON with an `error`; a 503 says when to retry; the worker stays
up, /health and /metrics answer, and its log holds no traceback. (A request aiohttp refuses
before any view sees it, a request line over 8190 bytes or a path no route matches, is
answered in aiohttp's plain text: the one such case sent here is checked on its own.) The pure
parsers behind these views are fuzzed property by property in tests/unit/test_fuzz.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import requests

from tests.integration.conftest import Deployment, Worker

pytestmark = pytest.mark.integration

TOKEN = "fuzz-ingest-token-0123456789"
# A run is reproduced by its seed (every failure names it); longer runs by more requests.
SEED = int(os.environ.get("TAPESTREAM_FUZZ_SEED", time.time_ns() % 1_000_000))
HTTP_REQUESTS = int(os.environ.get("TAPESTREAM_FUZZ_REQUESTS", 400))
WS_FRAMES = HTTP_REQUESTS * 3 // 8
MAX_FRAME = 64 * 1024  # agents/web.py: the WebSocket's max_msg_size

# Values for any parameter: empty, signs, fractions, other scripts' digits ("²" passes
# str.isdigit but not int()), past int64 and past Python's 4300-digit int() limit, percent
# escapes that are not UTF-8, and values some parameter takes.
VALUES = [
    "", " ", "0", "1", "5", "-1", "-0", "+5", "05", "1.5", "1e3", "0x10", "abc", "²", "٣", "\uff11",
    "9" * 25, "9" * 5000, str(2**63), str(2**64), "1e309", "nan", "inf", "-inf", "null", "true",
    "[]", "{}", "'", '"', "<b>", "../../etc", "\u202e", "\x00", "x" * 3000, "2024-05-08",
    "2024-05-08T13:30:00.5Z", "2024-13-45T99:99:99Z", "2024-05-08T00:00:00+99:99", "0000-01-01",
    "1m", "5m", "0m", "2m", "99999999999999999d", "raw", "decimal", "RAW", "BUY", "SELL", "buy",
    "local", "ES|*|*|C", "||||", "*", "0.5", "-0.1", "1.0000001", "%ff", "%ff%fe", "%c3%28",
    "%00", "%25", "%2F", "%ed%a0%80",
]  # fmt: skip
NAMES = [
    "limit", "depth", "from", "to", "units", "interval", "instrument_id", "group", "kind",
    "direction", "min_confidence", "scope", "x", "", "%ff", "limit[]", "LIMIT",
]  # fmt: skip
KEYS = [
    "signal.z_volume", "signal.volume_floor", "signal.cooldown", "pattern.rsi_high",
    "pattern.rsi_low", "filter.instruments", "nope", "signal.", ".", "%ff", "x" * 300,
]  # fmt: skip


# What fits a request line: aiohttp's parser refuses one over 8190 bytes before any view sees it
# (tested once, on its own, at the end).
URL_VALUES = [v for v in VALUES if len(v) < 1000]


def encoded(value: str) -> str:
    """A value as it goes in a URL: escapes given as such (to send bytes that are not UTF-8),
    anything else quoted."""
    return value if value.startswith("%") else quote(value, safe="")


def random_url(rng: random.Random, path: str, spec: dict[str, Any]) -> str:
    declared = [p["name"] for p in spec.get("parameters", []) if p["in"] == "query"]
    for p in spec.get("parameters", []):
        if p["in"] == "path":
            pool = KEYS if p["name"] == "key" else URL_VALUES
            # Not a value the route cannot match (aiohttp's router answers those, in plain
            # text): empty, a slash, a brace, or a dot segment, which the client resolves away
            value = rng.choice(
                [v for v in pool if v.strip(".") and v != "%2F" and not set(v) & set("/{}")]
            )
            path = path.replace("{" + p["name"] + "}", encoded(value))
    query = []
    for _ in range(rng.randint(0, 5)):
        name = rng.choice(declared + NAMES) if declared else rng.choice(NAMES)
        query.append(f"{encoded(name)}={encoded(rng.choice(URL_VALUES))}")
    return path + ("?" + "&".join(query) if query else "")


def random_body(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return b""
    if kind == 1:
        return rng.randbytes(rng.randint(1, 300))
    if kind == 2:
        return b"\xff\xfe{" + rng.randbytes(20)
    if kind == 3:  # a value of any type, or none
        return orjson.dumps({"value": rng.choice([None, True, [], {}, 1.5, -1, "x", 2**63])})
    if kind == 4:  # a value as text, right or wrong for some key
        return orjson.dumps({"value": rng.choice([*VALUES, "2.5", "60", "5,7", "70", 3, 50.5])})
    if kind == 5:
        return orjson.dumps(rng.choice([[], {}, 5, "x", None, [{"kind": "trade"}]]))
    if kind == 6:  # tick records with fields of the wrong kind
        rec = {
            "kind": rng.choice(["trade", "quote", "bar"]),
            "symbol": rng.choice(["AAPL", "aapl", ""]),
            "ts_event": rng.choice([1, -1, 2**63, "x"]),
            "price": rng.choice([1, -5, 1.5, None]),
            "size": rng.choice([1, 0, 2**32, True]),
        }
        return orjson.dumps([rec] * rng.randint(1, 3))
    if kind == 7:  # deeply nested
        return b"[" * 5000 + b"]" * 5000
    if kind == 8:
        return b'{"value": "' + b"9" * 200_000 + b'"}'  # large
    return b'{"value": "' + b"9" * 1_100_000 + b'"}'  # over aiohttp's 1 MiB for a body read


async def one_request(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None, headers: dict
) -> tuple[str, str, int, dict[str, str], bytes]:
    async with session.request(
        method, url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as r:
        return method, url, r.status, dict(r.headers), await r.read()


async def fire(base: str, doc: dict[str, Any], rng: random.Random) -> list[tuple]:
    """HTTP_REQUESTS random requests spread over every path and method of the document, eight
    at a time."""
    targets = [
        (path, method, spec)
        for path, item in doc["paths"].items()
        if path != "/ws"  # an upgrade, fuzzed below
        for method, spec in item.items()
    ]
    plan = []
    for i in range(HTTP_REQUESTS):
        path, method, spec = targets[i % len(targets)]
        body = random_body(rng) if method in ("put", "post") else None
        headers = {"Content-Type": rng.choice(["application/json", "text/plain", "x/y"])}
        if path == "/ingest/ticks" and rng.random() < 0.8:
            headers["Authorization"] = f"Bearer {TOKEN}"
        elif rng.random() < 0.1:
            headers["Authorization"] = rng.choice(["Bearer", "Bearer x", "Basic abc", "\u00ff"])
        plan.append((method.upper(), base + random_url(rng, path, spec), body, headers))
    gate = asyncio.Semaphore(8)
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"]) as s:

        async def go(req: tuple) -> tuple:
            async with gate:
                return await one_request(s, *req)

        return await asyncio.gather(*(go(req) for req in plan))


def check_answer(method: str, url: str, status: int, headers: dict[str, str], body: bytes) -> None:
    where = f"{method} {url[:200]} -> {status} {body[:300]!r} (seed {SEED})"
    assert status < 500 or status == 503, where
    if status == 503:
        assert headers.get("Retry-After"), where
    if 400 <= status < 500 or status == 503:
        assert headers.get("Content-Type", "").startswith("application/json"), where
        assert isinstance(orjson.loads(body).get("error"), str), where


# --- the WebSocket -----------------------------------------------------------------------------

REPLIES = ("error", "pong", "subscribed", "unsubscribed")


def random_frame(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(["", "{", "[1,", "nan", "{'op': 'ping'}", "\u00ff\u0000", "x" * 1000])
    if kind == 1:
        return orjson.dumps(rng.choice([[], 5, "ping", None, [{"op": "ping"}]])).decode()
    if kind == 2:
        return orjson.dumps({"op": rng.choice(["SUBSCRIBE", "", None, 5, [], "close"])}).decode()
    frame: dict[str, Any] = {"op": rng.choice(["subscribe", "unsubscribe", "ping"])}
    for name, pool in (
        ("channel", ["bbo", "bars.1m", "bars.7m", "signals", "deltas", "trades", "", None, 5, []]),
        ("instrument_id", [1, -1, 2**63, "5", 1.5, None, True, [], {}]),
        ("sub", [1, 2, 0, -1, "1", None, [], {}, True, 1.5]),
        ("kind", ["ifd", 5, [], None]),
        ("direction", ["BUY", "SELL", "UP", 1, None]),
        ("min_confidence", [0, 0.5, 1, 2, -1, "0.5", None, True]),
        ("units", ["raw", "decimal", "RAW", 1, None]),
        ("ref", ["r", 1, None, [], {"a": [1]}]),
    ):
        if rng.random() < 0.5:
            frame[name] = rng.choice(pool)
    return orjson.dumps(frame).decode()


async def reply(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The answer to the last request, past heartbeats and updates."""
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra, SEED)
        frame = orjson.loads(msg.data)
        if frame["type"] in REPLIES:
            return frame


async def fuzz_ws(base: str, rng: random.Random) -> list[str]:
    """Every frame sent and what came back; the connection is replaced when the worker closes
    it (the frame over the limit)."""
    url = base.replace("http", "ws") + "/ws"
    seen = []
    async with aiohttp.ClientSession() as s:
        # random frames, text and binary, each answered on a connection that stays open
        async with s.ws_connect(url, protocols=("tapestream",)) as ws:
            # unhashable: the lookup of the subscription raised, and ended the connection
            for sub in ("[]", '{"a": 1}'):
                await ws.send_str(f'{{"op": "unsubscribe", "sub": {sub}}}')
                assert (await reply(ws))["error"] == f"no subscription {orjson.loads(sub)!r}"
            for _ in range(WS_FRAMES):
                if rng.random() < 0.1:
                    await ws.send_bytes(rng.randbytes(rng.randint(0, 200)))
                else:
                    await ws.send_str(random_frame(rng))
                answer = await reply(ws)
                assert answer["type"] != "error" or answer["error"], answer
                seen.append(answer["type"])
            await ws.send_str('{"op": "ping", "ref": "still"}')
            assert await reply(ws) == {"type": "pong", "ref": "still"}
        # 100 subscriptions, then one too many
        async with s.ws_connect(url, protocols=("tapestream",)) as ws:
            for i in range(101):
                await ws.send_str(
                    orjson.dumps({"op": "subscribe", "channel": "bbo", "instrument_id": i}).decode()
                )
                answer = await reply(ws)
                assert answer["type"] == ("subscribed" if i < 100 else "error"), (i, answer)
            assert answer["error"] == "at most 100 subscriptions per client"
            await ws.send_str('{"op": "unsubscribe", "sub": 100}')
            assert (await reply(ws))["type"] == "unsubscribed"
        # a frame over the limit: the worker closes that connection (1009), and only that one
        async with s.ws_connect(url, protocols=("tapestream",)) as ws:
            await ws.send_str('{"op": "ping", "ref": "' + "x" * MAX_FRAME + '"}')
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG, ws.close_code
        async with s.ws_connect(url, protocols=("tapestream",)) as ws:
            await ws.send_str('{"op": "ping"}')
            assert (await reply(ws))["type"] == "pong"
        # an upgrade offering another subprotocol only is refused before it is made
        async with s.get(url.replace("ws", "http", 1), headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "other",
        }) as r:  # fmt: skip
            check_answer("GET", url, r.status, dict(r.headers), await r.read())
            assert r.status == 400
    return seen


def test_random_and_malformed_requests_get_clear_answers_and_the_worker_stays_up(
    deployment: Deployment,
) -> None:
    w = deployment.worker(TAPESTREAM_INGEST_TOKEN=TOKEN)
    deployment.wait_assigned(w)  # the routed views answer themselves, not 503
    rng = random.Random(SEED)
    doc = w.get("/openapi.json")
    answers = asyncio.run(fire(w.url, doc, rng))
    assert len(answers) == HTTP_REQUESTS
    wrong = []
    for answer in answers:
        try:
            check_answer(*answer)
        except AssertionError as exc:
            wrong.append(str(exc).splitlines()[0])
    assert not wrong, "\n".join(wrong[:20])
    statuses = {a[2] for a in answers}
    assert {200, 400, 404} <= statuses, statuses  # the requests reached the views' checks
    assert w.alive()

    seen = asyncio.run(fuzz_ws(w.url, rng))
    assert "error" in seen and len(seen) == WS_FRAMES
    check_alive(w)

    # A request line over aiohttp's limit: its parser answers 400 (in plain text, as no view
    # was reached) and logs the request with a traceback of its own; the worker goes on.
    r = requests.get(f"{w.url}/books/?units={'9' * 9000}", timeout=10)
    assert r.status_code == 400
    check_alive(w, "aiohttp.http_exceptions.LineTooLong")


# A traceback in a log, and the exception it ends with (with or without a message).
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):\n(?:[ \t].*\n)*(\S+?)(?::|$)", re.M)


def check_alive(w: Worker, *allowed: str) -> None:
    """The worker runs, answers /health and /metrics, and its log holds no traceback but of the
    exceptions `allowed`."""
    assert w.alive()
    health = w.get("/health")
    assert health["ok"] is True and health["active_partitions"]
    metrics = requests.get(w.url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "tapestream_ws_clients" in metrics.text
    log = w.log_path.read_text(errors="replace")
    unexpected = [e for e in TRACEBACK.findall(log) if e not in allowed]
    assert not unexpected, f"{unexpected} in the worker's log (seed {SEED}):\n{w.log_tail(80)}"
    assert "Task exception was never retrieved" not in log, w.log_tail(80)
