"""Peak memory of `faust -A app backfill` against the size of its input, printed as JSON.

    python -m load_tests.bench_backfill_memory [--small 2000000] [--large 20000000] [--runs 3]

Two generated files with the same instruments and event rate, one `--large / --small` times
longer (cached under var/bench/), each backfilled by the real command in a child process, in
alternating order, writing its outputs to a temporary directory. The JSON gives each run's peak
RSS (the child's ru_maxrss) and seconds, their medians, and the median of the per-run ratios
large/small: the outputs stream to their files, so memory follows the state (books, open
windows), not the length of the input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from load_tests.gen_mbo import GenConfig, write
from load_tests.worker_proc import BENCH_DIR, ROOT

CONFIG = dict(instruments=100, orders_per_instrument=200, events_per_second=2_000.0, seed=8)


def _file(records: int) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"backfill-memory-{records}.mbo.dbn.zst"
    if not path.exists():
        write(path, GenConfig(records=records, **CONFIG))  # type: ignore[arg-type]
    return path


def _backfill(path: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one backfill of `path`."""
    out = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    command = [sys.executable, "-m", "faust", "-A", "app", "backfill", str(path)]
    try:
        with open(out / "stderr.txt", "w+b") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [*command, "--out", str(out / "outputs"), "--no-progress"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) != 0:
                err.seek(0)
                raise SystemExit(f"backfill of {path} failed: {err.read().decode()[-2000:]}")
        return usage.ru_maxrss / 1024, seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=2_000_000)
    p.add_argument("--large", type=int, default=20_000_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    small, large = _file(args.small), _file(args.large)
    runs: dict[str, list[tuple[float, float]]] = {"small": [], "large": []}
    ratios = []
    for run in range(args.runs):
        order = (("small", small), ("large", large))
        for name, path in order if run % 2 == 0 else order[::-1]:
            runs[name].append(_backfill(path))
        ratios.append(runs["large"][-1][0] / runs["small"][-1][0])
    print(
        orjson.dumps(
            {
                "records": {"small": args.small, "large": args.large},
                **{
                    name: {
                        "peak_rss_mib": round(statistics.median(r[0] for r in rs), 1),
                        "seconds": round(statistics.median(r[1] for r in rs), 1),
                        "runs": [[round(a, 1), round(b, 1)] for a, b in rs],
                    }
                    for name, rs in runs.items()
                },
                "rss_ratio_large_small": round(statistics.median(ratios), 3),
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
