"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against a
real worker and a replay: the page loads with a token from its URL fragment, its picker lists
the instruments the API lists, its candles, indicators and ladder show what the views answer,
they change as the replay runs, and a signal appears in its feed when one fires. Screenshots go
to TAPESTREAM_ARTIFACTS (default var/artifacts/dashboard/).

One worker: the page is served by, and talks to, the worker it was opened on; what any worker
answers for any instrument is tested with two in test_web_ready.py and test_websocket.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from load_tests.gen_mbo import GenConfig, write
from tests.conftest import ROOT
from tests.integration.conftest import BOOTSTRAP, Deployment, Worker, wait_for
from tests.integration.test_bars_live import start
from tests.integration.test_ifd_live import IFD_ENV

CHROMIUM = os.environ.get("TAPESTREAM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TAPESTREAM_ARTIFACTS", ROOT / "var" / "artifacts" / "dashboard"))
TOKEN = "dashboard-test-reader-0123456789"
# test_ifd_live's two days of trading, of half as many instruments: half the work for the
# worker, and still some 30 IFD signals (with its IFD_ENV) besides the patterns.
CONFIG = GenConfig(records=50_000, instruments=3, events_per_second=0.2, seed=4)
# About 16 s of replay for those two days: time for the page to show its first values while
# the worker is still at it, and for them to change after.
SPEED = "10000"
VIEWPORT = {"width": 1440, "height": 960}
Z_SCORES = ("z_vol", "z_flow", "z_ofi", "z_net")

# Every element the page gives a value: data-testid -> data-value (the unformatted number).
READ_PAGE = """() => Object.fromEntries(
  [...document.querySelectorAll('[data-testid]')]
    .filter((e) => 'value' in e.dataset)
    .map((e) => [e.dataset.testid, e.dataset.value]))"""
READ_SIGNALS = """() => [...document.querySelectorAll('[data-testid=signal]')].map((e) => ({
  id: e.dataset.signalId,
  kind: e.dataset.kind,
  direction: e.dataset.direction,
  why: Object.fromEntries(
    [...e.querySelectorAll('[data-field]')].map((f) => [f.dataset.field, f.dataset.value])),
}))"""


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium, which CI installs (.ci/run): a clear failure, not a skip, without it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no chromium at {CHROMIUM}: the dashboard's test needs Debian's `chromium` "
            "(apt-get install chromium; .ci/run installs it), or TAPESTREAM_CHROMIUM"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the dashboard's test needs playwright (`make install` installs it)")
    with sync_playwright() as pw:
        # Playwright's own browser builds are not used (`playwright install` is never run).
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


class Api:
    """The worker's views, as a client with the reader's token."""

    def __init__(self, w: Worker) -> None:
        self.worker = w
        self.url = w.url
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    def get(self, path: str, **params: Any) -> Any:
        self.worker.alive()
        r = requests.get(self.url + path, params=params, headers=self.headers, timeout=10)
        r.raise_for_status()
        return r.json()

    def status(self, path: str, auth: bool = True) -> int:
        headers = self.headers if auth else {}
        return requests.get(self.url + path, headers=headers, timeout=10).status_code

    def shown(self, iid: int) -> dict[str, Any]:
        """What the page should show for the instrument, in its data-testid names."""
        bars = self.get(f"/bars/{iid}/", limit=1)["bars"]
        ind = self.get(f"/indicators/{iid}/")
        book = self.get(f"/books/{iid}/", depth=10)["books"][0]
        out = {f"last-{k}": bars[-1][k] for k in ("close", "vwap", "volume")}
        out["last-bar-start"] = bars[-1]["start"]
        out |= {"rsi": ind["rsi_14"], "macd": ind["macd"], "bb-upper": ind["bb_upper"]}
        for side, levels in (("bid", book["bids"]), ("ask", book["asks"])):
            for i, (price, size, count) in enumerate(levels):
                out |= {f"{side}-{i}-price": price, f"{side}-{i}-size": size}
                out[f"{side}-{i}-count"] = count
        return out


def _as_shown(value: Any) -> str:
    """A value as the page writes it in data-value: JavaScript's String() of the number, which
    is the shortest text that reads back as the same double, as Python's repr is."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _differences(page_values: dict[str, str], want: dict[str, Any]) -> dict[str, tuple]:
    return {
        k: (page_values.get(k), _as_shown(v))
        for k, v in want.items()
        if page_values.get(k) != _as_shown(v)
    }


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_for(check, timeout, what, interval=0.25)


def _rows_of(topic: str) -> list[dict[str, Any]]:
    """Every row a topic holds now (up to its end offsets as this starts: the worker may go on
    writing). In a thread of its own: Playwright's sync API holds this thread's event loop."""

    async def read() -> list[dict[str, Any]]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=BOOTSTRAP,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            while not consumer.assignment():  # every partition, once the metadata is in
                await asyncio.sleep(0.05)
            parts = sorted(consumer.assignment())
            ends = await consumer.end_offsets(parts)
            rows: list[dict[str, Any]] = []
            left = set(parts)
            while left:
                batch = await consumer.getmany(timeout_ms=500)
                rows.extend(orjson.loads(m.value) for ms in batch.values() for m in ms)
                left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
            return rows
        finally:
            await consumer.stop()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result(timeout=60)


def _a_row_of(page: Any, signals: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A signal row of the feed that is one of `signals`."""
    return next((r for r in page.evaluate(READ_SIGNALS) if r["id"] in signals), None)


def _assert_explained(row: dict[str, Any], signal: dict[str, Any]) -> None:
    """The row shows the signal's kind, direction and the numbers that explain it: an IFD's
    z-scores, a pattern's inputs. Those are plain numbers or prices, the same in both units."""
    assert (row["kind"], row["direction"]) == (signal["kind"], signal["direction"])
    assert row["why"], row
    assert row["why"] == {k: _as_shown(signal[k]) for k in row["why"]}


def test_the_dashboard_shows_what_the_api_says_and_follows_a_replay(
    deployment: Deployment, tmp_path: Path
) -> None:
    path = tmp_path / "ifd.mbo.dbn.zst"
    records = write(path, CONFIG)["records"]
    deployment.base_env.update(IFD_ENV, TAPESTREAM_READ_TOKENS=TOKEN)
    w = start(deployment, "4", "1000")
    api = Api(w)

    # The page and its files are open (a browser's navigation has no token); the data is not.
    page_resp = requests.get(w.url + "/", timeout=10)
    assert page_resp.status_code == 200 and "text/html" in page_resp.headers["Content-Type"]
    assert "default-src 'self'" in page_resp.headers["Content-Security-Policy"]
    assert api.status("/dashboard/dashboard.js", auth=False) == 200
    assert api.status("/instruments/", auth=False) == 401
    assert api.status("/dashboard/settings.py") == 404
    assert api.status("/dashboard/%2e%2e%2fsettings.py") == 404

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        # Offline: nothing but the worker itself is asked for anything.
        own = (f"{w.url}/", f"ws://127.0.0.1:{w.port}/", "data:")

        def on_request(r: Any) -> None:
            if not r.url.startswith(own):
                problems.append(f"a request off the worker: {r.url}")

        page.on("request", on_request)

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

        def values() -> dict[str, str]:
            return page.evaluate(READ_PAGE)

        replay = None
        try:
            page.goto(f"{w.url}/#token={TOKEN}")
            page.wait_for_selector("[data-testid=ws-state][data-state=live]", timeout=30_000)
            assert page.locator("[data-testid=signal]").count() == 0  # nothing has fired yet
            shot("1-before-replay")

            replay = deployment.replay(path, "--speed", SPEED)
            _until(lambda: api.get("/instruments/")["count"] > 1, 60, "instruments listed")

            def picker() -> list[int]:
                return page.eval_on_selector_all(
                    "[data-testid=instrument-picker] option[value]:not([value=''])",
                    "os => os.map(o => Number(o.value))",
                )

            options = _until(lambda: len(picker()) > 1 and picker(), 30, "instruments to pick")
            iid = options[-1]  # not the first, which the page shows by itself
            page.select_option("[data-testid=instrument-picker]", str(iid))
            assert f"instrument={iid}" in page.evaluate("location.hash")

            def showing() -> dict[str, str] | None:
                v = values()
                mine = v.get("shown-instrument") == str(iid)
                return v if mine and v.get("last-close") and v.get("bid-0-price") else None

            mid = _until(showing, 60, "the page to show a bar and a book mid-replay")
            done = api.get("/instruments/")["records"]
            assert done < records, "the worker had it all before the page showed anything"
            shot("2-mid-replay")

            _, err = replay.communicate(timeout=180)
            assert replay.returncode == 0, err
            # The replay has sent it all; the worker may be some way behind.
            _until(lambda: api.get("/instruments/")["records"] == records, 120, "the worker done")

            # The API's instruments, in the picker.
            listed = [r["instrument_id"] for r in api.get("/instruments/")["instruments"]]
            _until(lambda: picker() == listed, 30, "the picker to list every instrument")

            # Once the worker is done the values stand still: the page shows what the views say.
            last: dict[str, Any] = {}

            def agrees() -> bool:
                last["want"] = api.shown(iid)
                last["diff"] = _differences(values(), last["want"])
                return not last["diff"]

            try:
                _until(agrees, 60, "the page to show the views' values")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; page vs API: {last.get('diff')}") from None
            end = values()
            # The charts drew the bars, and the indicators' lines filled in as they closed.
            assert int(end["price-chart"]) > 10 and int(end["volume-chart"]) > 10
            assert int(end["rsi-chart"]) > 10 and int(end["macd-chart"]) > 10
            # ... and they changed while the replay ran.
            assert end["last-bar-start"] != mid["last-bar-start"]
            ladder = [k for k in end if k.startswith(("bid-", "ask-"))]
            assert [end[k] for k in ladder] != [mid.get(k) for k in ladder]

            # Signals fired: the API's newest are in the feed, with the numbers that explain
            # them, as the API gives them.
            newest = {s["id"]: s for s in api.get("/signals/", limit=20)["signals"]}
            row = _until(lambda: _a_row_of(page, newest), 30, "a signal of the API's in the feed")
            _assert_explained(row, newest[row["id"]])
            # IFD signals, fewer than the patterns, have a filter of their own. /signals/ keeps
            # each instrument's latest 200 of any kind, which the patterns of two days fill:
            # the IFDs are checked against the topic, as fired.
            page.select_option("[data-testid=feed-kind]", "ifd")
            topic = f"{deployment.prefix}signals"
            ifds = {s["id"]: s for s in _rows_of(topic) if s["kind"] == "ifd"}
            row = _until(lambda: _a_row_of(page, ifds), 30, "an ifd signal in the feed")
            assert row["kind"] == "ifd" and set(row["why"]) == set(Z_SCORES)
            _assert_explained(row, ifds[row["id"]])

            # The status strip: the worker's lag (from /metrics) and the feed's latency.
            status = values()
            assert float(status["worker-lag"]) >= 0 and float(status["feed-latency"]) > -1000
            shot("3-after-replay")

            # Another bar interval: the page reads and follows that one instead.
            intervals = page.eval_on_selector_all(
                "[data-testid=interval-picker] option", "os => os.map(o => o.value)"
            )
            page.select_option("[data-testid=interval-picker]", intervals[1])

            def other_interval() -> bool:
                bar = api.get(f"/bars/{iid}/", interval=intervals[1], limit=1)["bars"][-1]
                v = values()
                shown = (v.get("last-bar-start"), v.get("last-close"))
                drawn = int(v.get("rsi-chart") or 0) >= 1  # its latest indicators, at least
                return drawn and shown == (bar["start"], _as_shown(bar["close"]))

            _until(other_interval, 30, f"the page to show the {intervals[1]} bars")
            shot(f"4-bars-{intervals[1]}")
            assert not problems, problems
            # The token rode in the URL fragment, which the browser never sends.
            assert TOKEN not in w.log_path.read_text()
        except BaseException:
            shot("failure")
            raise
        finally:
            if replay is not None and replay.poll() is None:
                replay.kill()
