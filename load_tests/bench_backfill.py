"""`faust -A app backfill`'s engine (every stage: books, counts, bars, indicators, patterns,
flow detection, option groups, deltas) over generated files, with no broker, printed as JSON.

    python -m load_tests.bench_backfill [--records 1000000] [--runs 3]

Two files of the same size, each backfilled --runs times, alternately so that the machine's
noise falls on both alike:
  dense   100 instruments at 20,000 events/s of event time: a second of event time holds
          hundreds of events, so the delta topic closes few seconds per record;
  sparse  6 instruments at 0.4 events/s (about three days): nearly every event falls in a
          second of its own, the costly case for the one-second deltas.
Prints records/s of each (median and every run), the ratio dense/sparse taken run by run, and
how many deltas each made, so that a change that speeds it up by doing less shows. A third line,
`sparse_options`, runs the sparse file with its instruments defined as options.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

from app.file_driver import run_files
from app.file_outputs import DiscardOutputs
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, option_definitions, write, write_definitions
from load_tests.worker_proc import BENCH_DIR

FILES = {
    "dense": dict(instruments=100, events_per_second=20_000.0),
    "sparse": dict(instruments=6, events_per_second=0.4),
}


def _file(name: str, records: int) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"backfill-{name}-{records}.mbo.dbn.zst"
    if not path.exists():
        write(path, GenConfig(records=records, seed=5, **FILES[name]))  # type: ignore[arg-type]
    return path


def _chain() -> Path:
    path = BENCH_DIR / "backfill-chain-6.definition.dbn.zst"
    if not path.exists():
        ids = [1000 + i for i in range(6)]
        write_definitions(path, option_definitions(ids, ts=GenConfig.start_ns))
    return path


def _run(inputs: list[Path]) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    result = run_files(
        [str(p) for p in inputs], load_settings({}), progress=False, outputs=DiscardOutputs()
    )
    seconds = time.perf_counter() - t0
    return seconds, result.records, result.counts["deltas"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    cases = {
        "dense": [_file("dense", args.records)],
        "sparse": [_file("sparse", args.records)],
        "sparse_options": [_chain(), _file("sparse", args.records)],
    }
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in cases}
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", file=sys.stderr)
        for name, inputs in cases.items():
            runs[name].append(_run(inputs))
    out: dict[str, dict] = {}
    for name, rs in runs.items():
        rates = [n / s for s, n, _ in rs]
        out[name] = {
            "records": rs[0][1],
            "deltas": rs[0][2],
            "records_per_s": round(statistics.median(rates)),
            "runs_records_per_s": [round(r) for r in rates],
        }
    ratios = [
        (runs["dense"][i][1] / runs["dense"][i][0]) / (runs["sparse"][i][1] / runs["sparse"][i][0])
        for i in range(args.runs)
    ]
    out["dense_over_sparse"] = {
        "median": round(statistics.median(ratios), 2),
        "runs": [round(r, 2) for r in ratios],
    }
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
