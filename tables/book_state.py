"""Books as recoverable state: the engine's books of each instrument, checkpointed into a
key-value table as pages, with the input position they cover. No Faust here; the books stage
supplies the table's get and put.

Keys (tables/state_keys.py, `books`): the instrument's meta under its key, JSON: input position
applied, records held back (an event whose F_LAST has not arrived), and per publisher the
book's scalars and its page list; each page of a book's orders (PAGE_DTYPE rows) under
`page_key`.

A checkpoint writes the pages that changed, then the meta. A page is written under the other
of its two generation keys and the meta names the generation to read, so a checkpoint cut
short (the worker killed between writes, under at-least-once where nothing is transactional)
leaves the previous checkpoint readable: the old meta still names the old page versions.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.mbo import MBO_DTYPE, UNDEF_PRICE, instrument_key
from tables import book_kernels as K
from tables.book_engine import (
    COUNTER_NAMES,
    BookEngine,
    Published,
    complete_events,
    fresh_book_row,
)
from tables.order_book import ASK, BID
from tables.partitioned_state import FAST
from tables.state_keys import page_key

PAGE_DTYPE = np.dtype(
    [
        ("order_id", "<u8"),
        ("price", "<i8"),
        ("prio", "<i8"),
        ("size", "<u4"),
        ("side", "u1"),
        ("_pad", "V3"),
    ]
)

Get = Callable[[bytes], bytes | None]
Write = tuple[bytes, bytes | None]  # (key, value); None deletes


class BookError(Exception):
    """Applying a message to an instrument's books failed; the books are marked suspect and
    every other instrument goes on."""

    def __init__(self, instrument_id: int, reason: str) -> None:
        super().__init__(f"instrument {instrument_id}: {reason}")
        self.instrument_id = instrument_id


@dataclass
class Instrument:
    instrument_id: int
    partition: int
    position: int = -1
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, MBO_DTYPE))
    dirty: bool = False


@dataclass(frozen=True, slots=True)
class Applied:
    """What one input message did: the records applied (complete events) and what the books
    published for them."""

    records: np.ndarray
    published: Published | None


class Seconds(Protocol):
    """Where to stop applying a message to close a second, and closing it."""

    def cuts(self, instrument_id: int, records: np.ndarray) -> list[tuple[int, int]]: ...

    depth: int

    def close_at_cuts(
        self,
        instrument_id: int,
        seconds: list[int],
        publishers: list[int],
        levels: np.ndarray,
        counts: np.ndarray,
    ) -> None: ...


class BookSet:
    """The books of the instruments one worker owns, with their checkpoint state."""

    def __init__(self, engine: BookEngine | None = None) -> None:
        self.engine = engine or BookEngine()
        self.instruments: dict[int, Instrument] = {}
        self._books: dict[int, list[int]] = {}  # instrument -> engine book indices
        self._publishers = np.zeros(0, np.int64)
        # For `sequence_gaps`: each held book's gap count when it was loaded (what earlier
        # workers had counted), and the gaps counted here in books since evicted.
        self._gaps_loaded: dict[int, int] = {}
        self._gaps_evicted = 0

    # -- loading and evicting ---------------------------------------------------------------
    def loaded(self, instrument_id: int) -> bool:
        return instrument_id in self.instruments

    def load(self, instrument_id: int, partition: int, get: Get) -> Instrument:
        """Restore an instrument's books from its last checkpoint (nothing if it has none)."""
        inst = Instrument(instrument_id, partition)
        self._books[instrument_id] = []
        raw = get(instrument_key(instrument_id))
        if raw is not None:
            meta = FAST.decode(raw)
            inst.position = meta["position"]
            if meta.get("held"):
                inst.held = np.frombuffer(base64.b64decode(meta["held"]), MBO_DTYPE).copy()
            try:
                for pub_s, book_meta in meta["books"].items():
                    self._load_book(instrument_id, int(pub_s), book_meta, get)
            except Exception:
                # Half a book would take the next messages and its checkpoint overwrite the
                # good one: the instrument stays unloaded, and the next message tries again.
                self._drop_books(instrument_id)
                raise
        self.instruments[instrument_id] = inst
        return inst

    def _load_book(self, iid: int, pub: int, meta: dict[str, Any], get: Get) -> None:
        engine = self.engine
        b = engine.book_index(pub, iid)
        self._books[iid].append(b)
        pages = {int(p): g for p, g in meta["pages"].items()}
        blobs, numbers = [], []
        for page, gen in pages.items():
            raw = get(page_key(iid, pub, page, gen))
            if raw is None:
                raise ValueError(f"instrument {iid}: checkpoint page {page}/{gen} is missing")
            rows = np.frombuffer(raw, PAGE_DTYPE)
            blobs.append(rows)
            numbers.append(np.full(len(rows), page, np.int64))
        orders = np.concatenate(blobs) if blobs else np.zeros(0, PAGE_DTYPE)
        page_no = np.concatenate(numbers) if numbers else np.zeros(0, np.int64)
        order = np.argsort(orders["prio"], kind="stable")
        orders, page_no = orders[order], page_no[order]
        engine.reserve(len(orders), len(orders), len(pages))
        S = engine.S
        S.sc[K.SC_ON] = 0
        K.load_orders(
            S,
            b,
            page_no,
            orders["order_id"].astype(np.int64),
            orders["price"].copy(),
            orders["size"].astype(np.int64),
            orders["side"].astype(np.int64),
            orders["prio"].copy(),
        )
        for side, price, size in meta.get("aggregates", []):
            engine.reserve(0, 1, 0)
            K.set_aggregate(engine.S, b, side, price, size)
        S = engine.S
        row = S.B[b]
        row[K.B_LAST_SEQ] = meta["last_sequence"]
        row[K.B_SUSPECT] = int(meta["suspect"])
        row[K.B_CNT : K.B_CNT + K.N_COUNTERS] = [meta["counters"][n] for n in COUNTER_NAMES]
        self._gaps_loaded[b] = int(row[K.B_CNT + K.CNT_GAPS])
        row[K.B_NEXT_PAGE] = meta["next_page"]
        row[K.B_EVENT] = meta["event"]
        row[K.B_BBO : K.B_BBO + 6] = meta["bbo"]
        row[K.B_DIRTY] = 0
        if len(orders):
            S.sc[K.SC_PRIO] = max(int(S.sc[K.SC_PRIO]), int(orders["prio"].max()))
        mine = np.flatnonzero(S.PG[: S.sc[K.SC_P_HWM], 0] == b)
        for pg in mine.tolist():
            S.PG[pg, 4] = pages[int(S.PG[pg, 1])]
            S.PG[pg, 5] = 0

    def evict(self, partitions: Iterable[int]) -> list[int]:
        """Forget the instruments of partitions this worker no longer owns; their next owner
        loads them from the table."""
        gone = set(partitions)
        dropped = [i for i, inst in self.instruments.items() if inst.partition in gone]
        for iid in dropped:
            self._drop_books(iid)
            del self.instruments[iid]
        return dropped

    def _drop_books(self, instrument_id: int) -> None:
        for b in self._books.pop(instrument_id, []):
            gaps = int(self.engine.S.B[b, K.B_CNT + K.CNT_GAPS])
            self._gaps_evicted += gaps - self._gaps_loaded.pop(b, 0)
            K.evict_book(self.engine.S, b)
            self.engine.S.B[b] = fresh_book_row()

    # -- applying -------------------------------------------------------------------------
    def process(
        self,
        instrument_id: int,
        records: np.ndarray,
        position: int,
        seconds: Seconds | None = None,
    ) -> Applied | None:
        """Apply one input message at `position`; None if that position was already applied
        (a message redelivered after a restart). `seconds` (tables/deltas.py) may stop the
        applying where a second ends, to read the books as they stood then."""
        inst = self.instruments[instrument_id]
        if position <= inst.position:
            return None
        if len(inst.held):
            records = np.concatenate([inst.held, records])
        cut = complete_events(records)
        inst.held = records[cut:].copy()
        applied = records[:cut]
        try:
            published = self._apply(instrument_id, applied, seconds)
        except Exception as exc:
            inst.position = position
            self._quarantine(inst)
            raise BookError(instrument_id, f"{type(exc).__name__}: {exc}") from exc
        inst.position = position
        inst.dirty = True
        return Applied(applied, published)

    def _quarantine(self, inst: Instrument) -> None:
        """After an apply that failed part-way: the engine starts clean for every other book,
        this instrument's books are suspect until their next clear, and the message counts as
        applied (it goes to the dead letters, not round again)."""
        self.engine.abandon_open_events()
        for b in self._books[inst.instrument_id]:
            self.engine.mark_suspect(b)
        inst.held = inst.held[:0]
        inst.dirty = True

    def _apply(
        self, instrument_id: int, applied: np.ndarray, seconds: Seconds | None
    ) -> Published | None:
        published = None
        if len(applied):
            self._add_books(instrument_id, applied)
            stops = seconds.cuts(instrument_id, applied) if seconds is not None else []
            if not stops:
                published = self.engine.apply(applied, emit=True)
            else:
                assert seconds is not None
                keys = self.engine.book_keys  # read by publisher, the order parts list them
                read = np.array(sorted(self._books[instrument_id], key=keys.__getitem__))
                published, levels, counts = self.engine.apply_with_tops(
                    applied, np.array([i for i, _ in stops], np.int64), read, seconds.depth
                )
                pubs = [keys[b][0] for b in read.tolist()]
                at = [sec for _, sec in stops]
                seconds.close_at_cuts(instrument_id, at, pubs, levels, counts)
        return published

    def _add_books(self, instrument_id: int, records: np.ndarray) -> None:
        books = self._books[instrument_id]
        for pub in np.unique(records["publisher_id"]).tolist():
            b = self.engine.book_index(pub, instrument_id)
            if b not in books:
                books.append(b)

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> dict[int, list[Write]]:
        """The table writes that bring every changed instrument's checkpoint up to date,
        grouped by partition, each group in the order it must be written."""
        engine = self.engine
        S = engine.S
        pages = S.PG[: S.sc[K.SC_P_HWM]]
        dirty_pages = np.flatnonzero((pages[:, 0] >= 0) & (pages[:, 5] != 0))
        by_partition: dict[int, list[Write]] = {}
        deletes: dict[int, list[bytes]] = {}
        touched: set[int] = {i for i, inst in self.instruments.items() if inst.dirty}
        if len(dirty_pages):
            out = np.zeros(int(pages[dirty_pages, 2].sum()), PAGE_DTYPE)
            out_page = np.zeros(len(out), np.int64)
            fields = [out[f] for f in ("order_id", "price", "size", "side", "prio")]
            assert K.export_dirty(S, out_page, *fields) == len(out)
            bounds = np.searchsorted(out_page, dirty_pages, side="left")
            ends = np.searchsorted(out_page, dirty_pages, side="right")
            for pg, lo, hi in zip(
                dirty_pages.tolist(), bounds.tolist(), ends.tolist(), strict=True
            ):
                pub, iid = engine.book_keys[int(S.PG[pg, 0])]
                touched.add(iid)
                page = int(S.PG[pg, 1])
                if hi == lo:  # empty: the meta stops naming it, then its keys go
                    deletes.setdefault(iid, []).extend(page_key(iid, pub, page, g) for g in (0, 1))
                    K.free_page(S, pg)
                    continue
                gen = int(S.PG[pg, 4]) ^ 1
                S.PG[pg, 4] = gen
                S.PG[pg, 5] = 0
                by_partition.setdefault(self.instruments[iid].partition, []).append(
                    (page_key(iid, pub, page, gen), out[lo:hi].tobytes())
                )
        if touched:
            layout = self._layout()
            for iid in sorted(touched):
                inst = self.instruments[iid]
                writes = by_partition.setdefault(inst.partition, [])
                writes.append((instrument_key(iid), self._meta(inst, layout)))
                writes.extend((k, None) for k in deletes.get(iid, []))
                inst.dirty = False
                for b in self._books[iid]:
                    S.B[b, K.B_DIRTY] = 0
        return by_partition

    def _layout(self) -> dict[int, tuple[dict[str, int], list[list[int]]]]:
        """Per book: its pages (number -> generation) and its aggregate levels (side, price,
        size), from one pass over the engine's pages and levels."""
        S = self.engine.S
        out: dict[int, tuple[dict[str, int], list[list[int]]]] = {}
        pages = S.PG[: S.sc[K.SC_P_HWM]]
        for book, number, gen in pages[pages[:, 0] >= 0][:, [0, 1, 4]].tolist():
            out.setdefault(book, ({}, []))[0][str(number)] = gen
        levels = S.L[: S.sc[K.SC_L_HWM]]
        for book, side, price, size in levels[(levels[:, 0] >= 0) & (levels[:, 4] != 0)][
            :, [0, 1, 2, 4]
        ].tolist():
            out.setdefault(book, ({}, []))[1].append([side, price, size])
        return out

    def _meta(
        self, inst: Instrument, layout: dict[int, tuple[dict[str, int], list[list[int]]]]
    ) -> bytes:
        S = self.engine.S
        books: dict[str, Any] = {}
        for b in self._books[inst.instrument_id]:
            pub = self.engine.book_keys[b][0]
            row = S.B[b]
            pages, aggregates = layout.get(b, ({}, []))
            books[str(pub)] = {
                "last_sequence": int(row[K.B_LAST_SEQ]),
                "suspect": bool(row[K.B_SUSPECT]),
                "counters": self.engine.counters(b),
                "next_page": int(row[K.B_NEXT_PAGE]),
                "event": int(row[K.B_EVENT]),
                "bbo": row[K.B_BBO : K.B_BBO + 6].tolist(),
                "pages": pages,
                "aggregates": aggregates,
            }
        meta = {
            "instrument_id": inst.instrument_id,
            "position": inst.position,
            "held": base64.b64encode(inst.held.tobytes()).decode() if len(inst.held) else "",
            "books": books,
        }
        return FAST.encode(meta)

    # -- reading --------------------------------------------------------------------------
    def sequence_gaps(self) -> int:
        """Sequence gaps these books have met since this set was made: counted, unlike the
        books' own counters, only once the books were here (a message applied again after a
        restart or rebalance counts again), and kept when a book is evicted."""
        n = len(self.engine.book_keys)
        # Evicted books' rows are fresh (zero counts), so the sum covers the held ones.
        held = int(self.engine.S.B[:n, K.B_CNT + K.CNT_GAPS].sum())
        return self._gaps_evicted + held - sum(self._gaps_loaded.values())

    def suspect_books(self) -> int:
        """Books held now that are marked suspect (a sequence gap, F_MAYBE_BAD_BOOK or a
        failed apply) until their next clear."""
        n = len(self.engine.book_keys)
        return int(self.engine.S.B[:n, K.B_SUSPECT].sum())

    def publisher_of(self) -> np.ndarray:
        """Publisher id of each engine book index."""
        keys = self.engine.book_keys
        if len(self._publishers) != len(keys):
            self._publishers = np.array([k[0] for k in keys], np.int64)
        return self._publishers

    def event_counts(self, instrument_id: int) -> dict[int, int]:
        """Events (F_LAST records) applied so far, per publisher of the instrument."""
        B = self.engine.S.B
        return {
            self.engine.book_keys[b][0]: int(B[b, K.B_EVENT]) for b in self._books[instrument_id]
        }

    def books_of(self, instrument_id: int) -> list[int]:
        return list(self._books.get(instrument_id, []))

    def view(self, instrument_id: int, depth: int) -> dict[str, Any]:
        """An instrument's books as the web view shows them (state as of its last F_LAST)."""
        engine = self.engine
        inst = self.instruments[instrument_id]
        books = []
        for b in self._books[instrument_id]:
            pub = engine.book_keys[b][0]
            counters = engine.counters(b)
            books.append(
                {
                    "publisher_id": pub,
                    "bids": [list(x) for x in engine.levels(b, BID, depth)],
                    "asks": [list(x) for x in engine.levels(b, ASK, depth)],
                    "bid_levels": engine.level_count(b, BID),
                    "ask_levels": engine.level_count(b, ASK),
                    "orders": engine.order_count(b),
                    "last_sequence": engine.last_sequence(b),
                    "events": int(engine.S.B[b, K.B_EVENT]),
                    "suspect": engine.suspect(b),
                    "gaps": counters["gaps"],
                    "counters": counters,
                }
            )
        return {"instrument_id": instrument_id, "position": inst.position, "books": books}

    def tops(self, instrument_id: int, depth: int) -> dict[int, tuple[list, list]]:
        """Per publisher, the best `depth` levels of each side, [price, size, count] each."""
        engine = self.engine
        return {
            engine.book_keys[b][0]: (
                [list(x) for x in engine.levels(b, BID, depth)],
                [list(x) for x in engine.levels(b, ASK, depth)],
            )
            for b in self._books.get(instrument_id, [])
        }

    def bbo(self, instrument_id: int) -> list[dict[str, Any]]:
        out = []
        for b in self._books.get(instrument_id, []):
            bpx, bsz, bct, apx, asz, act = self.engine.bbo(b)
            out.append(
                {
                    "publisher_id": self.engine.book_keys[b][0],
                    "bid": None if bpx == UNDEF_PRICE else [bpx, bsz, bct],
                    "ask": None if apx == UNDEF_PRICE else [apx, asz, act],
                    "suspect": self.engine.suspect(b),
                }
            )
        return out


def warm_up() -> float:
    """Compile (or load from numba's cache) every kernel with the argument types the agents,
    backfill and views use; returns the seconds it took. The first compile after an install
    takes a minute or two, which a worker should not spend on its first message."""
    import time

    from models.mbo import F_LAST, F_MBP, empty_records

    t0 = time.perf_counter()
    recs = empty_records(6)
    recs["publisher_id"] = 1
    recs["instrument_id"] = 7
    recs["action"] = [ord(a) for a in "AAMCTA"]
    recs["side"] = [ord(s) for s in "BAAABA"]
    recs["price"] = [100, 101, 102, 102, 101, 99]
    recs["size"] = [5, 5, 6, 2, 1, 3]
    recs["order_id"] = [1, 2, 2, 2, 0, 0]
    recs["flags"] = [F_LAST, F_LAST, F_LAST, F_LAST, 0, F_LAST | F_MBP]
    recs["sequence"] = [1, 2, 3, 4, 5, 5]
    # A message of one record is typed apart: its columns are contiguous, which numba compiles
    # for separately. Missing here, that compile stalled each worker 30 s on its first such
    # message, past the group's session timeout.
    one = empty_records(1)
    one[["publisher_id", "instrument_id", "action", "side", "price", "size"]] = (
        1,
        7,
        ord("A"),
        ord("B"),
        98,
        1,
    )
    one[["order_id", "flags", "sequence"]] = (9, F_LAST, 6)
    store: dict[bytes, bytes | None] = {}
    for frozen in (False, True):  # topic payloads arrive as read-only buffers
        data = np.frombuffer(recs.tobytes(), MBO_DTYPE) if frozen else recs.copy()
        single = np.frombuffer(one.tobytes(), MBO_DTYPE) if frozen else one.copy()
        books = BookSet()
        books.load(7, 0, store.get)
        books.process(7, data, 0)
        for writes in books.checkpoint().values():
            store.update(writes)
        restored = BookSet()
        restored.load(7, 0, store.get)
        restored.view(7, 5)
        restored.engine.queue_position(restored.books_of(7)[0], 1)
        restored.evict([0])
        books.process(7, single, 1)
        books.engine.apply(data)
        books.engine.apply(single)
        books.engine.apply_with_tops(data, np.array([1]), np.array([0]), 2)
        books.engine.apply_with_tops(single, np.array([1]), np.array([0]), 2)
    # run when a book's order or level tables grow: the first busy book paid its compile
    K.rehash(books.engine.S)
    return time.perf_counter() - t0


if __name__ == "__main__":
    print(f"book kernels ready in {warm_up():.1f} s")
