"""DBN decoding: tapestream's reader against databento's own, in the same run, printed as JSON.

    python -m load_tests.bench_decode [--records 2000000] [--instruments 100] [--runs 5]

On one generated MBO file, written both zstd-compressed and plain (cached under var/bench/),
each run decodes each file with `app.feeds.mbo_files.open_mbo(...).chunks()` (what replay and
backfill read with: chunked, so memory does not grow with the file) and with databento's
`DBNStore.from_file(...).to_ndarray()` (the whole file at once), in alternating order. The
JSON gives records/s for each, per file, as medians of the runs, and the median of the per-run
ratios (ours / databento's): above 1 is faster than databento's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import databento
import orjson

from app.feeds.mbo_files import open_mbo
from load_tests.gen_mbo import GenConfig, write

ROOT = Path(__file__).resolve().parents[1]


def ours(path: Path) -> int:
    return sum(len(c) for c in open_mbo(path).chunks())


def theirs(path: Path) -> int:
    return len(databento.DBNStore.from_file(path).to_ndarray())


def timed(fn, path: Path) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    n = fn(path)
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=2_000_000)
    p.add_argument("--instruments", type=int, default=100)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)

    base = ROOT / "var" / "bench" / f"decode-{args.records}-{args.instruments}.mbo.dbn"
    zst = base.with_name(base.name + ".zst")
    if not zst.exists():
        write(zst, GenConfig(records=args.records, instruments=args.instruments, seed=11))
    if not base.exists():
        store = databento.DBNStore.from_file(zst)
        store.to_file(base, compression=databento.Compression.NONE)

    out: dict[str, object] = {"records": args.records, "runs": args.runs}
    for label, path in (("dbn.zst", zst), ("dbn", base)):
        mine, db, ratios = [], [], []
        for run in range(args.runs):
            order = (ours, theirs) if run % 2 == 0 else (theirs, ours)
            got = {fn.__name__: timed(fn, path) for fn in order}
            (t_ours, n_ours), (t_db, n_db) = got["ours"], got["theirs"]
            if n_ours != n_db:
                print(f"record counts differ: {n_ours} != {n_db}", file=sys.stderr)
                return 1
            mine.append(n_ours / t_ours)
            db.append(n_db / t_db)
            ratios.append(t_db / t_ours)
        out[label] = {
            "ours_records_per_s": round(statistics.median(mine)),
            "databento_records_per_s": round(statistics.median(db)),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
        }
    print(orjson.dumps(out).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
