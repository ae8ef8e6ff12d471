"""The WebSocket feed against real workers and a real replay: clients on either of two workers
get every instrument; one that subscribes mid-replay ends with the same bars and signals as one
that was there from the start; a client that never reads is closed, and delays no one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from app.file_driver import run_files
from app.settings import load_settings
from load_tests.ws_clients import never_reading_client
from tests.integration.conftest import Deployment, wait_for
from tests.integration.test_bars_live import start
from tests.integration.test_ifd_live import IFD_ENV, ifd_file  # noqa: F401  (a fixture)

SUBSCRIPTIONS = [
    {"op": "subscribe", "channel": "signals", "ref": "signals", "units": "raw"},
    {"op": "subscribe", "channel": "bars.1m", "ref": "bars", "units": "raw"},
]


class FeedClient:
    """A WebSocket client in a thread of its own: subscribes, then keeps every frame."""

    def __init__(self, url: str, subscriptions: list[dict[str, Any]]) -> None:
        self.url = url
        self.subscriptions = subscriptions
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[Any, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(self.url) as ws:
            for sub in self.subscriptions:
                await ws.send_str(orjson.dumps(sub).decode())
            while not self._stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.5)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    self.closed = (msg.type, msg.extra)
                    return
                self.frames.append(orjson.loads(msg.data))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def subs(self) -> dict[str, int]:
        return {f["ref"]: f["sub"] for f in list(self.frames) if f["type"] == "subscribed"}

    def rows(self, ref: str) -> list[dict[str, Any]]:
        """The snapshot, then the updates, of one subscription."""
        sub = self.subs().get(ref)
        out = []
        for f in list(self.frames):
            if f.get("sub") != sub:
                continue
            if f["type"] == "subscribed":
                out.extend(f["snapshot"])
            elif f["type"] == "update":
                out.append(f["data"])
        return out

    def seqs(self, ref: str) -> list[int]:
        sub = self.subs()[ref]
        return [f["seq"] for f in list(self.frames) if f.get("sub") == sub and "seq" in f]


@pytest.fixture(scope="module")
def want(ifd_file) -> dict[str, list[dict]]:  # noqa: F811
    path, _ = ifd_file
    result = run_files([str(path)], load_settings(IFD_ENV), progress=False)
    return {t: result.row_topics[t] for t in ("signals", "bars.1m")}


def _last_bars(rows: list[dict]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for r in sorted(rows, key=lambda r: r["start"]):
        out[r["instrument_id"]] = r
    return out


def test_clients_on_two_workers_see_every_instrument_and_a_late_one_catches_up(
    deployment: Deployment,
    ifd_file: tuple[Path, dict[str, list[dict]]],  # noqa: F811
    want: dict[str, list[dict]],
) -> None:
    path, _ = ifd_file
    deployment.base_env.update(IFD_ENV)
    w1 = start(deployment, "4", "300")
    w2 = deployment.worker("w2")
    deployment.wait_assigned(w1, w2)

    early = FeedClient(f"ws://127.0.0.1:{w1.port}/ws", SUBSCRIPTIONS)
    wait_for(lambda: len(early.subs()) == 2, 60, "the early client's subscriptions")
    slow = never_reading_client(w2.port)
    replay = deployment.replay(path, "--speed", "20000")
    # Late: once there is something of each channel to miss (a fixed wait was too short on a
    # loaded machine, and the late client's snapshots came empty).
    wait_for(
        lambda: early.rows("signals") and early.rows("bars"), 120, "signals and bars under way"
    )
    late_url = f"ws://127.0.0.1:{w2.port}/ws"

    def read_there_too() -> bool:
        """The other worker's feed reads the same topics: whether it has them yet, as a
        subscriber arriving now would see (a fixed wait let the late client's snapshots come
        empty when that worker ran behind)."""
        probe = FeedClient(late_url, SUBSCRIPTIONS)
        try:
            wait_for(lambda: len(probe.subs()) == 2, 30, "a probe's subscriptions")
            return all(f["snapshot"] for f in probe.frames if f["type"] == "subscribed")
        finally:
            probe.stop()

    wait_for(read_there_too, 60, "the other worker's feed under way")
    late = FeedClient(late_url, SUBSCRIPTIONS)
    _, err = replay.communicate(timeout=240)
    assert replay.returncode == 0, err

    want_ids = sorted(s["id"] for s in want["signals"])
    want_bars = _last_bars(want["bars.1m"])

    def caught_up(c: FeedClient) -> bool:
        ids = sorted(s["id"] for s in c.rows("signals") if s["kind"] != "processing_lag")
        return ids == want_ids and _last_bars(c.rows("bars")) == want_bars

    try:
        for c, name in ((early, "the early client"), (late, "the late client")):
            wait_for(lambda c=c: caught_up(c), 180, f"{name} to hold every signal and bar")
        # Ordered, numbered frames with nothing lost: 0 for the snapshot, then 1, 2, ...
        for c in (early, late):
            for ref in ("signals", "bars"):
                assert c.seqs(ref) == list(range(len(c.seqs(ref))))
            assert not [f for f in c.frames if f["type"] in ("gap", "error")]
        # The late client's snapshot held what it missed, and nothing came twice.
        late_ids = [s["id"] for s in late.rows("signals")]
        assert len(late_ids) == len(set(late_ids))
        assert all(f["snapshot"] for f in late.frames if f["type"] == "subscribed")

        # The client that never read was closed for it, on its own worker only.
        def closed_slow() -> bool:
            text = w2.get_raw("/metrics").text
            return "tapestream_ws_closed_slow_total 1.0" in text

        wait_for(closed_slow, 60, "the never-reading client to be closed")
    finally:
        slow.close()
        early.stop()
        late.stop()
