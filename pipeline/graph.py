"""The stage graph, declared once: every stage, what it reads and writes, the key it is
partitioned by and the tables that hold its checkpoint. Both drivers are built from it.

Stages run in the order listed. Stages that share a key and follow each other form a segment,
run in one process per partition with nothing between them: on the Faust driver one agent, on
the file driver one loop. Only an edge that changes the key crosses a topic (`REKEY_TOPICS`).
A stage marked `files_only` makes output only a command's files need: a worker never runs it.

    mbo.raw ─> books ─> book.deltas, bbo, trades ───────────────────────────────┐
           ├─> mbp ─> MBP-N rows (files only: the `mbp` command)                  │
           └─> instrument-stats                                                  │
    trades ─> bars ─> bars.<iv>, indicators, trades.late, signals (patterns)     │
    trades, bbo ─> flow ─> pressure, signals ── options.parts (new key) ─> option-groups
    book.seconds, bars.<iv>, indicators, pressure, signals ─> deltas ─> deltas   │
                                           option-groups ─> options.pressure, options.signals
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.stages import Bars, Books, Deltas, Flow, InstrumentCounts, Mbp, OptionGroups

INSTRUMENT, GROUP = "instrument", "group"
RAW = "mbo.raw"


@dataclass(frozen=True)
class StageSpec:
    name: str
    make: Callable[..., Any]  # the stage's class, built with a StageConfig
    key: str  # what its input is partitioned by
    reads: tuple[str, ...]  # topics, or ports an earlier stage writes in-process
    writes: tuple[str, ...]  # public topics and ports ("bars.<iv>" stands for each interval)
    tables: tuple[tuple[str, str], ...]  # (table, what it holds): its checkpoint
    # made only for a command's files: the file driver runs it when asked, a worker never
    files_only: bool = False

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tables)


GRAPH: tuple[StageSpec, ...] = (
    StageSpec(
        "books",
        Books,
        INSTRUMENT,
        reads=(RAW,),
        writes=("book.deltas", "bbo", "trades", "book.seconds"),
        tables=(("books", "L3 order books: per-instrument meta and pages of orders"),),
    ),
    StageSpec(
        "mbp",
        Mbp,
        INSTRUMENT,
        reads=(RAW,),
        writes=("mbp",),
        tables=(),
        files_only=True,
    ),
    StageSpec(
        "instrument-stats",
        InstrumentCounts,
        INSTRUMENT,
        reads=(RAW,),
        writes=(),
        tables=(("instrument-stats", "record and action counts per instrument"),),
    ),
    StageSpec(
        "bars",
        Bars,
        INSTRUMENT,
        reads=("trades",),
        writes=("bars.<iv>", "indicators", "trades.late", "signals"),
        tables=(("bars", "open bar windows, indicator state and recent bars per instrument"),),
    ),
    StageSpec(
        "flow",
        Flow,
        INSTRUMENT,
        reads=("trades", "bbo"),
        writes=("pressure", "signals", "options.parts"),
        tables=(("ifd", "pressure windows, baselines, cooldowns and recent signals"),),
    ),
    StageSpec(
        "deltas",
        Deltas,
        INSTRUMENT,
        reads=("book.seconds", "bars.<iv>", "indicators", "pressure", "signals"),
        writes=("deltas",),
        tables=(("deltas", "one-second delta parts waiting for the watermark"),),
    ),
    StageSpec(
        "option-groups",
        OptionGroups,
        GROUP,
        reads=("options.parts",),
        writes=("options.pressure", "options.signals"),
        tables=(("options", "option groups' pending windows, baselines and signals"),),
    ),
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    port: str
    keeps_key: bool  # False: the port is a topic keyed anew (REKEY_TOPICS)


def edges(graph: tuple[StageSpec, ...] = GRAPH) -> list[Edge]:
    """Every (writer, reader) pair of a port, in graph order."""
    by_name = {s.name: s for s in graph}
    out = []
    for target in graph:
        for port in target.reads:
            for source in graph:
                if port in source.writes:
                    keeps = by_name[source.name].key == target.key
                    out.append(Edge(source.name, target.name, port, keeps))
    return out


# Ports whose reader is keyed otherwise than their writer: topics, on the Faust driver.
REKEY_TOPICS = sorted({e.port for e in edges() if not e.keeps_key})


# Ports that stay inside a driver: the books' seconds go to the deltas stage in-process;
# options' parts cross to their groups (a topic on the Faust driver, but not a public one).
INTERNAL = frozenset({"book.seconds", "options.parts"})
# Topics whose messages are columnar, one per input message (models/book_events.py).
COLUMNAR = ("book.deltas", "bbo", "trades")


def public_topics(
    interval_names: list[str], key: str | None = None, graph: Iterable[StageSpec] = GRAPH
) -> list[str]:
    """Every topic the stages (of one key, or all) publish, in graph order, with "bars.<iv>"
    spelled out for each bar interval."""
    out: list[str] = []
    for s in graph:
        if (key is not None and s.key != key) or s.files_only:
            continue
        for port in s.writes:
            names = [f"bars.{iv}" for iv in interval_names] if port == "bars.<iv>" else [port]
            out += [n for n in names if n not in INTERNAL and n not in out]
    return out


def segment(
    key: str, graph: tuple[StageSpec, ...] = GRAPH, files_only: bool = False
) -> list[StageSpec]:
    """The stages keyed by `key` that a worker runs (and, with `files_only`, those only the
    file driver runs too), in the order they run."""
    return [s for s in graph if s.key == key and (files_only or not s.files_only)]


def needed(
    wants: Iterable[str], given: Iterable[str] = (RAW,), key: str = INSTRUMENT
) -> list[StageSpec]:
    """The stages keyed by `key` that make the ports `wants` when the input gives the ports
    `given`, in the order they run: what a driver runs for a run that wants only some outputs.
    ValueError naming a port that nothing makes."""
    stages = segment(key, files_only=True)
    have = set(given)
    chosen: set[str] = set()
    todo = [p for p in wants if p not in have]
    while todo:
        port = todo.pop()
        makers = [s for s in stages if port in s.writes]
        if not makers:
            raise ValueError(f"no stage keyed by {key} makes {port!r} from {sorted(have)}")
        for s in makers:
            if s.name not in chosen:
                chosen.add(s.name)
                todo += [p for p in s.reads if p not in have]
    return [s for s in stages if s.name in chosen]


def name_of(kind: type) -> str:
    """The name the graph gives the stage of this class."""
    (name,) = (s.name for s in GRAPH if s.make is kind)
    return name


def tables(graph: tuple[StageSpec, ...] = GRAPH) -> Iterator[tuple[str, str]]:
    """(table, what it holds) of every stage."""
    for s in graph:
        yield from s.tables


def check(graph: tuple[StageSpec, ...] = GRAPH) -> None:
    """ValueError unless each stage reads only the raw input or what a stage before it writes,
    and the stages of one key follow each other (one segment per key)."""
    written = {RAW}
    keys: list[str] = []
    for s in graph:
        missing = [p for p in s.reads if p not in written]
        if missing:
            raise ValueError(f"stage {s.name} reads {missing}, which no stage before it writes")
        written.update(s.writes)
        if keys and keys[-1] != s.key and s.key in keys:
            raise ValueError(f"stage {s.name}: the stages keyed by {s.key} are split")
        keys.append(s.key)


check()
