"""Malformed raw-topic messages go to the dead-letter topic with the reason, are counted in
/metrics, and never stop the worker or disturb the good messages around them. The same
worker's /metrics has every metric the Grafana dashboard charts (deploy/grafana)."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from load_tests.gen_mbo import option_definitions
from models.definitions import encode
from models.mbo import empty_records
from tests.integration.conftest import Deployment, consume_all, wait_for
from tests.unit.test_grafana import dashboard_metrics, exposed_names

pytestmark = pytest.mark.integration


def _records(iid: int, n: int) -> bytes:
    r = empty_records(n)
    r["instrument_id"] = iid
    r["action"] = ord("A")
    r["side"] = ord("B")
    r["flags"][-1] = 128
    return r.tobytes()


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for key, value in messages:
                await p.send_and_wait(topic, value, key=key)
        finally:
            await p.stop()

    asyncio.run(run())


def test_bad_messages_are_dead_lettered_and_counted(deployment: Deployment, broker: str) -> None:
    w = deployment.worker()
    deployment.wait_assigned(w)
    raw = f"{deployment.prefix}mbo.raw"
    _produce(
        broker,
        raw,
        [
            (b"5", _records(5, 3)),
            (b"5", _records(5, 2)[:-7]),  # torn record
            (b"5", _records(6, 2)),  # another instrument under this key
            (b"bogus", _records(5, 1)),
            (b"5", b""),
            (b"5", _definition(5)[:-16]),  # a torn definition record
            (b"5", _records(5, 2)),
        ],
    )
    wait_for(lambda: w.alive() and w.get("/instruments/")["records"] == 5, 60, "good records")
    # The agent that consumes the raw topic rejects each of them once, with the reason.
    letters = consume_all(broker, f"{deployment.prefix}dead.letters", expect_messages=5)
    found = [orjson.loads(v) for _, v, _, _ in letters]
    kinds = ["bad_definition", "bad_key", "bad_length", "empty", "key_mismatch"]
    bodies = {b["kind"]: b for b in found}
    assert len(found) == 5 and sorted(bodies) == kinds
    assert all(b["topic"] == raw and b["agent"] == "instruments" for b in bodies.values())
    assert "record 0 is instrument 6, key says 5" in bodies["key_mismatch"]["reason"]
    assert bodies["bad_length"]["payload_bytes"] == 105
    metrics = w.get_raw("/metrics").text
    for kind in kinds:
        assert f'tapestream_dead_letters_total{{agent="instruments",kind="{kind}"}} 1.0' in metrics
    # Checked here, where a worker has run anyway: every metric the dashboard charts is one a
    # real worker exposes (tests/unit/test_grafana.py parses the queries).
    used = dashboard_metrics()
    missing = {name: sorted(used[name]) for name in set(used) - exposed_names(metrics)}
    assert not missing, missing
    taken = _samples(metrics, "tapestream_stage_records_in_total", "stage")
    assert taken[("books",)] == taken[("instrument-stats",)] == 5  # the good records

    def lags() -> dict[tuple[str, ...], float]:
        got = _samples(w.get_raw("/metrics").text, "tapestream_consumer_lag", "topic", "partition")
        return {k: v for k, v in got.items() if k[0] == raw}

    caught_up = {(raw, str(p)): 0.0 for p in range(4)}
    wait_for(lambda: lags() == caught_up, 30, "every raw partition's lag at 0")
    assert w.get("/instruments/5/")["messages"] == 2
    book = w.get("/books/5/")["books"][0]
    assert book["orders"] == 0 and book["counters"]["bad_records"] == 5  # A with size 0


def _samples(exposition: str, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric: the values of `labels` -> value."""
    return {
        tuple(s.labels[k] for k in labels): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name
    }


def _definition(iid: int) -> bytes:
    (d,) = option_definitions([iid], ("ES",))
    return encode(d)


def _adds(iid: int, n: int) -> bytes:
    """`n` bids, one event each, each at a price below the last."""
    r = empty_records(n)
    r["instrument_id"] = iid
    r["publisher_id"] = 1
    r["action"] = ord("A")
    r["side"] = ord("B")
    r["price"] = 100_000_000_000 - np.arange(n) * 10_000_000
    r["size"] = 1
    r["order_id"] = np.arange(1, n + 1)
    r["sequence"] = np.arange(1, n + 1)
    r["ts_recv"] = r["ts_event"] = 1_700_000_000_000_000_000 + np.arange(n)
    r["flags"] = 128
    return r.tobytes()


def test_an_output_too_large_to_send_is_dead_lettered_not_fatal(
    deployment: Deployment, broker: str
) -> None:
    """15,000 adds at as many prices in one raw message publish a book.deltas message of more
    than the 1 MB limit: it goes to dead.letters with the reason, and the worker goes on."""
    w = deployment.worker()
    deployment.wait_assigned(w)
    n = 15_000
    _produce(broker, f"{deployment.prefix}mbo.raw", [(b"7", _adds(7, n)), (b"5", _adds(5, 3))])
    wait_for(lambda: w.alive() and w.get("/instruments/")["records"] == n + 3, 60, "records")
    (letter,) = [
        orjson.loads(v)
        for _, v, _, _ in consume_all(broker, f"{deployment.prefix}dead.letters", expect_messages=1)
    ]
    assert letter["kind"] == "oversized_output" and letter["agent"] == "output"
    assert letter["topic"] == f"{deployment.prefix}book.deltas" and letter["key"] == "7"
    assert letter["payload_bytes"] > 1_000_000 and "over the 1,000,000-byte" in letter["reason"]
    assert w.get("/books/7/")["books"][0]["orders"] == n
    deltas = consume_all(broker, f"{deployment.prefix}book.deltas", expect_messages=1)
    assert [k for k, _, _, _ in deltas] == [b"5"]  # the next message's output went out
    metrics = w.get_raw("/metrics").text
    assert 'tapestream_dead_letters_total{agent="output",kind="oversized_output"} 1.0' in metrics
    assert w.alive()
