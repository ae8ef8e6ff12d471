"""A worker (or source, or lake sink) started while its broker is away (restarting, or not up yet)
waits for it, then starts; one that waits past TAPESTREAM_BROKER_WAIT exits with the reason."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from load_tests.worker_proc import spawn_worker
from tests.integration.conftest import BOOTSTRAP, Deployment, free_port, wait_for


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@contextmanager
def broker_opening_late(port: int, after_s: float) -> Iterator[None]:
    """127.0.0.1:`port` refuses connections for `after_s` seconds, then forwards them to the
    test broker: a broker that is still starting."""
    host, broker_port = BOOTSTRAP.rsplit(":", 1)
    loop = asyncio.new_event_loop()
    stopped = threading.Event()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(broker_port))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def serve() -> None:
        await asyncio.sleep(after_s)
        server = await asyncio.start_server(forward, "127.0.0.1", port)
        async with server:
            while not stopped.is_set():
                await asyncio.sleep(0.1)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join(timeout=10)


def test_a_worker_started_before_its_broker_waits_for_it(deployment: Deployment) -> None:
    port = free_port()
    with broker_opening_late(port, after_s=6):
        t0 = time.monotonic()
        w = deployment.worker("w1", KAFKA_BROKER=f"kafka://127.0.0.1:{port}")
        assert time.monotonic() - t0 > 5
    log = w.log_path.read_text()
    assert "waiting for the broker at" in log
    assert "the broker answers after" in log
    assert w.get("/health")


def test_a_worker_whose_broker_stays_away_exits_with_the_reason(deployment: Deployment) -> None:
    env = deployment.env(
        KAFKA_BROKER=f"kafka://127.0.0.1:{free_port()}",
        TAPESTREAM_BROKER_WAIT="3",
        TAPESTREAM_WEB_PORT=str(free_port()),
    )

    log_path = deployment.tmp / "w.log"
    proc = spawn_worker(env, log_path)
    try:
        code = wait_for(lambda: proc.poll() is not None and (proc.returncode,), 60, "its exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == (1,)
    log = log_path.read_text()
    assert "the worker will not start: no broker at" in log
    assert "TAPESTREAM_BROKER_WAIT" in log


def test_the_lake_sink_waits_for_its_broker_then_exits_with_the_reason(
    deployment: Deployment,
) -> None:
    """The long-running commands (the sources, the lake sink) wait for the broker the same way."""
    r = deployment.cli(
        "lake",
        "--root",
        str(deployment.tmp / "lake"),
        "--topics",
        "mbo.raw",
        timeout=60,
        KAFKA_BROKER=f"kafka://127.0.0.1:{free_port()}",
        TAPESTREAM_BROKER_WAIT="2",
    )
    assert r.returncode == 1, r.stderr
    assert "error: no broker at" in r.stderr and "TAPESTREAM_BROKER_WAIT" in r.stderr
    assert "waiting for the broker at" in r.stderr + r.stdout
