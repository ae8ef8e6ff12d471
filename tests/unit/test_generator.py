"""The generator writes valid MBO whose final books equal its ground truth.

The oracle here is deliberately the simplest possible L3 book, independent of the
generator's own bookkeeping and of the engine under tables/.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import databento as db
import orjson

from app.feeds.mbo_files import read_all
from load_tests.gen_mbo import GenConfig, truth_path, write
from models.mbo import F_LAST, F_SNAPSHOT


def _replay_oracle(path: Path) -> tuple[dict, Counter]:
    orders: dict[int, dict[int, list[int]]] = defaultdict(dict)  # iid -> oid -> [side, px, sz]
    last_seq: dict[int, int] = {}
    actions: Counter = Counter()
    recs = read_all(path)
    for r in recs.tolist():
        (_, _, _, iid, _, oid, px, sz, flags, _, action, side, _, _, seq) = r
        a, s = chr(action), chr(side)
        actions[(iid, a)] += 1
        book = orders[iid]
        prev = last_seq.get(iid, 0)
        assert seq in (prev, prev + 1), f"sequence jumps {prev} -> {seq} on {iid}"
        last_seq[iid] = seq
        if a == "R":
            assert flags & F_SNAPSHOT
            book.clear()
        elif a == "A":
            assert oid not in book and sz > 0 and s in "BA"
            book[oid] = [s, px, sz]
        elif a == "C":
            o = book[oid]
            assert o[0] == s and o[1] == px and 0 < sz <= o[2]
            o[2] -= sz
            if o[2] == 0:
                del book[oid]
        elif a == "M":
            o = book[oid]
            assert o[0] == s and sz > 0
            o[1], o[2] = px, sz
        elif a == "F":
            o = book[oid]
            assert o[0] == s and o[1] == px and 0 < sz <= o[2]
        elif a == "T":
            assert s in "BA" and sz > 0
        if flags & F_LAST:
            bids = [o[1] for o in book.values() if o[0] == "B"]
            asks = [o[1] for o in book.values() if o[0] == "A"]
            if bids and asks:
                assert max(bids) < min(asks), f"crossed book on {iid} at sequence {seq}"
    levels = {}
    for iid, book in orders.items():
        agg: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        for s, px, sz in book.values():
            agg[(s, px)][0] += sz
            agg[(s, px)][1] += 1
        levels[iid] = {
            "bids": sorted(([p, *v] for (s, p), v in agg.items() if s == "B"), reverse=True),
            "asks": sorted([p, *v] for (s, p), v in agg.items() if s == "A"),
            "orders": len(book),
            "last_sequence": last_seq[iid],
        }
    return levels, actions


def test_final_books_and_counts_equal_truth(small_generated: Path) -> None:
    truth = orjson.loads(truth_path(small_generated).read_bytes())
    levels, actions = _replay_oracle(small_generated)
    assert truth["records"] == sum(actions.values())
    assert set(truth["instruments"]) == {str(i) for i in levels}
    for iid, t in truth["instruments"].items():
        got = levels[int(iid)]
        assert got["bids"] == t["bids"] and got["asks"] == t["asks"]
        assert got["orders"] == t["orders"] and got["last_sequence"] == t["last_sequence"]
        assert {a: n for (i, a), n in actions.items() if i == int(iid)} == t["actions"]


def test_mix_is_realistic(small_generated: Path) -> None:
    recs = read_all(small_generated)
    counts = Counter(chr(a) for a in recs["action"].tolist())
    total = len(recs)
    for action in "ACMTF":
        assert counts[action] / total > 0.05, counts
    partial = (recs["action"] == ord("C")) & (recs["flags"] & F_LAST == 0)
    assert partial.any()  # cancels inside trade events
    multi = (recs["flags"] & F_LAST) == 0
    assert 0.1 < multi.mean() < 0.9  # many events span several records


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = GenConfig(records=5_000, instruments=3, seed=3)
    a, b = tmp_path / "a.mbo.dbn", tmp_path / "b.mbo.dbn"
    write(a, cfg)
    write(b, cfg)
    assert a.read_bytes() == b.read_bytes()
    write(b, GenConfig(records=5_000, instruments=3, seed=4))
    assert a.read_bytes() != b.read_bytes()


def test_databento_reads_it(small_generated: Path) -> None:
    store = db.DBNStore.from_file(small_generated)
    assert str(store.schema) == "mbo"
    assert len(store.to_ndarray()) == len(read_all(small_generated))
