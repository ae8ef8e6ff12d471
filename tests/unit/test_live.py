"""The live source's pieces without a broker: the cursor's recovery rule (property-tested
against streams cut at random points), and the stand-in gateway through the real
`databento.Live` client: login and refusal, intraday replay, the replay horizon, heartbeats,
and records of another schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import databento as db
import databento_dbn as dbn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.commands.live import parse_gateway, parse_time
from app.feeds.mbo_files import open_mbo
from app.live.cursor import LiveCursor
from app.live.gateway import Fault, Feed, GatewayError, StandInGateway
from models.mbo import F_SNAPSHOT, MBO_DTYPE

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ESM4 = DATA / "glbx-mdp3" / "esm4-2024-05-08T00-00-00_00-00-02.mbo.dbn.zst"
ESM4_DEF = DATA / "glbx-mdp3" / "esm4-2024-05-08.definition.dbn.zst"
KEY = "db-unit-test-key-00000000000abcde"


LATENCY = 25  # the most a record's ts_event trails its place in the stream
SLACK = 30


def _stream(steps: list[tuple[int, int]]) -> np.ndarray:
    """Records (instrument, latency) in stream order: ts_recv 10 apart, ts_event the latency
    before it but never before the instrument's previous one (a matching engine's clock), so
    instruments share and repeat times."""
    recs = np.zeros(len(steps), dtype=MBO_DTYPE)
    clock: dict[int, int] = {}
    for i, (iid, delay) in enumerate(steps):
        recv = 100 + 10 * i
        clock[iid] = max(clock.get(iid, 0), recv - delay)
        recs[i]["instrument_id"] = iid
        recs[i]["ts_event"] = clock[iid]
        recs[i]["ts_recv"] = recv
        recs[i]["order_id"] = i  # tells the records apart
    return recs


def _replay_from(stream: np.ndarray, start: int) -> np.ndarray:
    """What the gateway sends for `start=`: every record with ts_event >= start, in order."""
    return stream[stream["ts_event"] >= start]


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(1, 4), st.integers(0, LATENCY)), min_size=1, max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=6),
    chunk=st.integers(1, 50),
)
def test_resubscribing_from_the_cursor_delivers_each_record_once(
    steps: list[tuple[int, int]], cuts: list[int], chunk: int
) -> None:
    stream = _stream(steps)
    cursor = LiveCursor(SLACK)
    out: list[np.ndarray] = []
    # Each connection delivers a prefix of what it is sent (cut at a random point), in chunks.
    sent = stream
    for cut in [*sorted(cuts), len(stream)]:
        delivered = sent[: max(0, cut - (len(stream) - len(sent)))] if cut < len(stream) else sent
        for i in range(0, len(delivered), chunk):
            out.append(cursor.admit(delivered[i : i + chunk]))
        start = cursor.resume_start()
        sent = stream if start is None else _replay_from(stream, start)
        cursor.resubscribed()
    got = np.concatenate(out) if out else np.empty(0, MBO_DTYPE)
    assert sorted(got["order_id"].tolist()) == list(range(len(stream)))


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(1, 6), st.integers(0, LATENCY)), min_size=1, max_size=200),
    cuts=st.lists(st.integers(0, 200), min_size=3, max_size=3),
    window=st.integers(LATENCY, 60),
    partitions=st.integers(1, 3),
    extra=st.integers(0, 40),
)
def test_a_restart_from_the_topic_tail_delivers_each_record_once(
    steps: list[tuple[int, int]], cuts: list[int], window: int, partitions: int, extra: int
) -> None:
    """A killed source leaves each partition a prefix of what it sent (each its own length);
    the restarted one knows only each partition's tail above its floor."""
    stream = _stream(steps)

    def part_of(iid: int) -> int:
        return iid % partitions

    parts = np.array([part_of(int(i)) for i in stream["instrument_id"]])
    landed = np.arange(len(stream)) < np.array(cuts)[parts]
    tails: dict[int, int] = {}
    floors: dict[int, int] = {}
    read: list[np.ndarray] = []
    for p in range(partitions):
        # The partition's last message's watermark: the lowest ts_recv it could still receive
        # (every partition has a marker from the first step, bound at the stream's start).
        unsent = stream[~landed & (parts == p)]
        tails[p] = int(unsent["ts_recv"].min()) if len(unsent) else int(stream["ts_recv"][-1])
        mine = stream[landed & (parts == p)]
        if not len(mine):
            continue
        floor = int(mine["ts_event"].max()) - window
        if int(mine["ts_recv"].min()) < floor:  # the scan stopped above the start
            floors[p] = floor
            mine = mine[mine["ts_recv"] >= floor - extra]  # whole messages: some from below
        read.append(mine)
    cursor = LiveCursor(window, tails, floors, part_of)
    for mine in read:
        cursor.note_delivered(mine)
    cursor.forget_below_floors()
    start = cursor.resume_start()
    sent = stream if start is None else _replay_from(stream, start)
    cursor.resubscribed()
    after = cursor.admit(sent)
    got = stream[landed]["order_id"].tolist() + after["order_id"].tolist()
    assert sorted(got) == list(range(len(stream)))


def test_a_quiet_instrument_does_not_hold_the_resume_point_back() -> None:
    cursor = LiveCursor(SLACK)
    cursor.admit(_stream([(1, 0)] + [(2, 0)] * 500))  # instrument 1 once, 2 for long after
    assert cursor.positions[1][0] == 100
    assert cursor.resume_start() == cursor.high - SLACK > 4000


def test_a_fresh_snapshot_moves_no_position_and_is_never_dropped() -> None:
    cursor = LiveCursor(SLACK)
    cursor.admit(_stream([(1, 0)] * 3))
    before = dict(cursor.positions), cursor.high
    snap = _stream([(1, 0)] * 4)
    snap["flags"] = F_SNAPSHOT
    snap["ts_event"] = 5  # the orders' own, older times
    cursor.resubscribed(snapshot=True)
    assert len(cursor.admit(snap)) == 4
    assert (dict(cursor.positions), cursor.high) == before


def test_fault_specs_parse_and_bad_ones_are_refused() -> None:
    assert Fault.parse("stall@12000:20") == Fault("stall", 12000, seconds=20.0)
    assert Fault.parse("refuse@0:2").count == 2
    with pytest.raises(GatewayError, match="kind must be one of"):
        Fault.parse("explode@5")
    with pytest.raises(GatewayError, match="expected KIND@RECORDS"):
        Fault.parse("reset@soon")


def test_times_and_gateways_parse() -> None:
    assert parse_time("1715126400000000000") == 1715126400000000000
    assert parse_time("2024-05-08T00:00:00Z") == 1715126400000000000
    assert parse_time("2024-05-08T00:00:00") == 1715126400000000000  # UTC without a zone
    with pytest.raises(ValueError, match="neither nanoseconds"):
        parse_time("yesterday")
    assert parse_gateway("127.0.0.1:13001") == ("127.0.0.1", 13001)
    assert parse_gateway("") == (None, 13000)
    with pytest.raises(ValueError, match="port must be a number"):
        parse_gateway("host:x")


async def _session(
    gw: StandInGateway, key: str = KEY, start: int | None = None, limit: int | None = None
) -> tuple[dict[str, int], list, Exception | None]:
    client = db.Live(key=key, gateway="127.0.0.1", port=gw.port, heartbeat_interval_s=1)
    kinds: dict[str, int] = {}
    records: list = []
    err: Exception | None = None
    try:
        for schema in ("mbo", "definition"):
            await asyncio.to_thread(
                client.subscribe, dataset="GLBX.MDP3", schema=schema, symbols=["ESM4"], start=start
            )
        async for r in client:
            kinds[type(r).__name__] = kinds.get(type(r).__name__, 0) + 1
            records.append(r)
            if limit is not None and len(records) >= limit:
                break
    except Exception as exc:
        err = exc
    finally:
        client.terminate()
    return kinds, records, err


def test_the_stand_in_serves_the_cme_file_to_the_real_client_with_its_definition() -> None:
    async def run() -> None:
        gw = StandInGateway(
            Feed.from_files([str(ESM4_DEF), str(ESM4)]),
            speed=None,
            horizon_ns=7 * 86400 * 10**9,
            faults=[Fault("close", 13_796)],
            keys=[KEY],
        )
        await gw.start()
        try:
            first = int(np.concatenate(list(open_mbo(ESM4).chunks()))["ts_event"].min())
            kinds, records, _ = await _session(gw, start=first)
            assert kinds["MBOMsg"] == 13_796
            assert kinds["InstrumentDefMsg"] == 1 and kinds["SymbolMappingMsg"] == 1
            mbo = b"".join(bytes(r) for r in records if isinstance(r, dbn.MBOMsg))
            want = np.concatenate(list(open_mbo(ESM4).chunks())).tobytes()
            assert mbo == want
            replay_done = [r for r in records if isinstance(r, dbn.SystemMsg)]
            assert replay_done and replay_done[0].code == dbn.SystemCode.REPLAY_COMPLETED

            # A wrong key is refused at login, with the gateway's words.
            _, _, err = await _session(gw, key="db-wrong-key-000000000000000xyzab", start=first)
            assert isinstance(err, db.BentoError) and "Authentication failed" in str(err)
            # A start before the horizon is refused as aged out.
            _, records, err = await _session(gw, start=first - 8 * 86400 * 10**9)
            codes = [r.code for r in records if isinstance(r, dbn.ErrorMsg)]
            assert codes == [dbn.ErrorCode.REPLAY_DATA_AGED_OUT]
        finally:
            await gw.close()

    asyncio.run(run())


def test_an_idle_stand_in_sends_heartbeats_and_can_send_another_schema() -> None:
    async def run() -> None:
        gw = StandInGateway(
            Feed.from_files([str(ESM4)]), speed=None, faults=[Fault("wrong_schema", 0)]
        )
        await gw.start()
        try:
            # Everything is published already and no start is given: nothing but heartbeats.
            kinds, records, _ = await _session(gw, limit=4)
            assert kinds.get("MBOMsg", 0) == 0
            beats = [r for r in records if isinstance(r, dbn.SystemMsg) and r.is_heartbeat()]
            assert len(beats) >= 1
        finally:
            await gw.close()

    asyncio.run(run())


async def test_a_heartbeat_tells_every_partition_how_far_the_stream_was_read(
    tmp_path: Path,
) -> None:
    """While records flow a partition hears of time only every MARKER_STEP_NS; when the feed
    goes quiet (a heartbeat) every partition must hear the last receive time read, or those a
    little behind keep their last second open, and its deltas unpublished, until records come
    again (found by load_tests/chaos.py at the end of its feed)."""
    from app.feeds.batching import Batcher
    from app.feeds.watermarks import WM_HEADER, decode_ns
    from app.live.source import LiveConfig, LiveSource
    from app.raw_sender import RawSender
    from app.settings import Settings
    from load_tests.gen_mbo import GenConfig, write

    path = tmp_path / "quiet.mbo.dbn"
    write(path, GenConfig(records=3_000, instruments=8, events_per_second=2_000, seed=3))
    records = np.concatenate(list(open_mbo(path).chunks()))
    told: dict[int, int] = {}

    class Producer:
        async def send(self, topic: str, value: bytes, **kwargs: object) -> asyncio.Future:
            for name, raw in kwargs.get("headers") or ():  # type: ignore[union-attr]
                if name == WM_HEADER:
                    told[kwargs["partition"]] = decode_ns(raw)  # type: ignore[index]
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    settings = Settings()
    source = LiveSource(LiveConfig("GLBX.MDP3", ["ALL_SYMBOLS"]), settings, "key", "mbo.raw")
    source.sender = RawSender(Producer(), "mbo.raw", source.stats.tally, 4)  # type: ignore[arg-type]
    source.batcher = Batcher(settings.batch_records, settings.max_message_bytes)
    chunks = np.array_split(records, 30)  # as the reader hands them over
    # The last records are of one instrument: the partitions it is not on hear no newer bound
    # with them (a partition's last message of a step carries the bound after it).
    tail = chunks[-1]
    chunks[-1] = tail[tail["instrument_id"] == tail["instrument_id"][0]]
    for chunk in chunks:
        source._pending = [chunk.tobytes()]
        await source._flush_pending()
    last = int(chunks[-1]["ts_recv"].max())
    assert min(told.values()) < last  # some partitions were a step behind
    await source._take(dbn.SystemMsg(last, "Heartbeat", code=dbn.SystemCode.HEARTBEAT))
    assert told == dict.fromkeys(range(4), last)


def test_no_record_is_lost_while_a_session_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """databento's iterator starts the session before it enables the queue it reads from, and
    its client thread drops what it decodes in between. The window is widened here to half a
    second, with the gateway on a loop of its own so it serves meanwhile: every record of the
    file must still come through the source's iteration."""
    import time

    from app.live.source import records
    from tests.stand_ins import ThreadLoop

    want = np.concatenate(list(open_mbo(ESM4).chunks()))
    loop = ThreadLoop()
    gw = StandInGateway(
        Feed.from_files([str(ESM4)]), speed=None, horizon_ns=7 * 86400 * 10**9, keys=[KEY]
    )
    loop.run(gw.start())
    start = db.Live.start

    def slow_start(self: db.Live) -> None:
        start(self)
        time.sleep(0.5)

    monkeypatch.setattr(db.Live, "start", slow_start)
    client = db.Live(key=KEY, gateway="127.0.0.1", port=gw.port, heartbeat_interval_s=1)

    async def read() -> bytes:
        got = []
        it = records(client)  # as the source reads it: databento's iterator has no __aiter__
        while len(got) < len(want):
            r = await it.__anext__()
            if isinstance(r, dbn.MBOMsg):
                got.append(bytes(r))
            elif isinstance(r, dbn.SystemMsg) and r.is_heartbeat():
                break  # everything there was has been served
        return b"".join(got)

    try:
        client.subscribe(
            dataset="GLBX.MDP3", schema="mbo", symbols=["ESM4"], start=int(want["ts_event"].min())
        )
        assert asyncio.run(asyncio.wait_for(read(), 60)) == want.tobytes()
    finally:
        client.terminate()
        loop.run(gw.close())
        loop.close()
