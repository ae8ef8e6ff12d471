"""The stage graph and the runner of its stages keyed by instrument: the graph is well formed,
and a run restored from a checkpoint taken after any message goes on exactly as an
uninterrupted one (what the workers rely on under exactly_once)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.feeds.batching import Batcher
from app.feeds.mbo_files import open_mbo
from app.feeds.watermarks import SourceWatermarks
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, write
from pipeline import graph
from pipeline.graph import GRAPH, GROUP, INSTRUMENT, StageSpec
from pipeline.run import InstrumentStages

PARTITIONS = 2
Store = dict[str, dict[bytes, bytes]]


def test_the_graph_runs_in_order_and_only_option_groups_cross_a_topic() -> None:
    graph.check()
    assert [s.name for s in graph.segment(INSTRUMENT)] == [
        "books",
        "instrument-stats",
        "bars",
        "flow",
        "deltas",
    ]
    assert [s.name for s in graph.segment(GROUP)] == ["option-groups"]
    assert graph.REKEY_TOPICS == ["options.parts"]
    assert [name for name, _ in graph.tables()] == [
        "books",
        "instrument-stats",
        "bars",
        "ifd",
        "deltas",
        "options",
    ]
    topics = graph.public_topics(["1m"])
    assert "book.seconds" not in topics and "options.parts" not in topics
    assert topics[:4] == ["book.deltas", "bbo", "trades", "bars.1m"]


def test_a_graph_out_of_order_or_split_is_refused() -> None:
    books, mbp, stats, bars, flow, deltas, groups = GRAPH
    with pytest.raises(ValueError, match="bars reads"):
        graph.check((bars, books, mbp, stats, flow, deltas, groups))
    with pytest.raises(ValueError, match="flow: the stages keyed by instrument are split"):
        graph.check((books, mbp, stats, bars, replace(groups, reads=()), flow, deltas))
    assert isinstance(books, StageSpec) and books.table_names == ("books",)


def test_a_run_that_wants_some_outputs_runs_only_the_stages_that_make_them() -> None:
    def names(wants: list[str], given: tuple[str, ...] = (graph.RAW,)) -> list[str]:
        return [s.name for s in graph.needed(wants, given)]

    assert names(["bars.<iv>"]) == ["books", "bars"]
    assert names(["bars.<iv>"], given=("trades",)) == ["bars"]  # ohlcv's trades
    assert names(["deltas"]) == ["books", "bars", "flow", "deltas"]
    assert names(["signals"]) == ["books", "bars", "flow"]  # patterns and flow both make them
    assert names(["mbp"]) == ["mbp"]
    with pytest.raises(ValueError, match=r"no stage keyed by instrument makes 'mbo\.raw'"):
        graph.needed(["pressure"], given=("bbo",))  # flow also reads trades, made from mbo.raw
    # The MBP stage runs only for the file driver's mbp: a worker neither runs it nor has a topic.
    assert "mbp" not in [s.name for s in graph.segment(INSTRUMENT)]
    assert "mbp" not in graph.public_topics(["1m"])
    config = load_settings().stage_config()
    worker = InstrumentStages(config, tables=lambda name: lambda key: None)
    assert worker.names == ["books", "instrument-stats", "bars", "flow", "deltas"]
    files = InstrumentStages(config, tables=lambda name: lambda key: None, only=["mbp"])
    assert [type(s).__name__ for s in files.running] == ["Mbp"]
    with pytest.raises(ValueError, match="named \\['nope'\\]"):
        InstrumentStages(config, tables=lambda name: lambda key: None, only=["nope"])


def _inputs(path: Path, batch_records: int) -> list[tuple[int, Any]]:
    """The raw topic as replay would fill it, in one list: (partition, batch or bound)."""
    out: list[tuple[int, Any]] = []
    source = SourceWatermarks(PARTITIONS)
    batcher = Batcher(batch_records, 1 << 20)
    for chunk in open_mbo(path).chunks(500):
        for b in batcher.add(chunk):
            out.append((b.instrument_id % PARTITIONS, b))
        source.read(int(chunk["ts_recv"].max()))
        for p, bound in sorted(source.bounds(batcher).items()):
            out.append((p, bound))
    for b in batcher.flush_all():
        out.append((b.instrument_id % PARTITIONS, b))
    out += [(p, source.read_through) for p in range(PARTITIONS)]
    return out


def _run(stages: InstrumentStages, inputs: list[tuple[int, Any]], start: int, stop: int) -> list:
    made: list[Any] = []
    for i in range(start, stop):
        partition, item = inputs[i]
        if isinstance(item, int):
            step = stages.watermark(partition, i, item)
        else:
            step = stages.message(partition, i, item.instrument_id, item.records)
            assert not step.repeat
        made += [(t, _plain(m)) for t, m in step.book.items()]
        made += step.rows
        made += [("options.parts", p) for p in step.option_parts]
    return made


def _plain(message: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in message.items()}


def _checkpoint(stages: InstrumentStages, store: Store) -> None:
    for table, state in stages.states():
        for rows in state.checkpoint().values():
            for key, value in rows:
                if value is None:
                    store[table].pop(key, None)
                else:
                    store[table][key] = value


def _stages(store: Store) -> InstrumentStages:
    config = load_settings({"TAPESTREAM_BAR_INTERVALS": "1m,5m"}).stage_config()
    return InstrumentStages(config, tables=lambda name: store.setdefault(name, {}).get)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, Any]]:
    path = tmp_path_factory.mktemp("gen") / "pipe.mbo.dbn.zst"
    write(path, GenConfig(records=60_000, instruments=30, events_per_second=300, seed=5))
    return _inputs(path, 20)


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.83])
def test_a_run_restored_from_its_checkpoint_goes_on_as_one_never_stopped(
    inputs: list[tuple[int, Any]], cut: float
) -> None:
    whole = _run(_stages({}), inputs, 0, len(inputs))
    assert {t for t, _ in whole} >= {"book.deltas", "bbo", "trades", "bars.1m", "deltas"}
    at = int(len(inputs) * cut)
    store: Store = {}
    first = _stages(store)
    before = _run(first, inputs, 0, at)
    _checkpoint(first, store)
    after = _run(_stages(store), inputs, at, len(inputs))
    assert before + after == whole


def test_a_message_applied_already_makes_nothing(inputs: list[tuple[int, Any]]) -> None:
    stages = _stages({})
    partition, batch = next(x for x in inputs if not isinstance(x[1], int))
    assert not stages.message(partition, 0, batch.instrument_id, batch.records).repeat
    again = stages.message(partition, 0, batch.instrument_id, batch.records)
    assert again.repeat and not again.book and not again.rows


def test_each_stage_counts_what_it_took_and_made(inputs: list[tuple[int, Any]]) -> None:
    """The counts behind tapestream_stage_records_{in,out}_total: the books take every
    record and make every row of their three topics; bars, flow and deltas between them make
    every row and option part published; a message applied already counts nowhere."""
    stages = _stages({})
    made = _run(stages, inputs, 0, len(inputs))
    again = next(i for i, x in enumerate(inputs) if not isinstance(x[1], int))
    before = stages.stage_counts()
    partition, batch = inputs[again]
    assert stages.message(partition, again, batch.instrument_id, batch.records).repeat
    assert stages.stage_counts() == before
    counts = {name: (taken, out) for name, taken, out in before}
    records = sum(len(b.records) for _, b in inputs if not isinstance(b, int))
    rows = lambda topic: sum(len(m["event"]) for t, m in made if t == topic)  # noqa: E731
    assert counts["books"] == (records, rows("book.deltas") + rows("bbo") + rows("trades"))
    assert counts["instrument-stats"] == (records, 0)
    assert counts["bars"][0] == rows("trades")
    assert counts["flow"][0] == rows("trades") + rows("bbo")
    assert counts["deltas"][1] == sum(t == "deltas" for t, _ in made) > 0
    book_topics = ("book.deltas", "bbo", "trades")
    others = sum(t not in book_topics for t, _ in made)
    assert counts["bars"][1] + counts["flow"][1] + counts["deltas"][1] == others
    assert counts["deltas"][0] > 0
