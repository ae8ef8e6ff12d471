"""How long a worker takes to come back with its books, printed as JSON.

    python -m load_tests.bench_restart [--records 5000000] [--instruments 200]
                                       [--orders-per-instrument 5000] [--runs 3]

A worker applies a generated file (the bench_book file: about 1M live orders at the end) and is
stopped; then, for local state kept and for local state wiped (the table rebuilt from its
changelog), a new worker process is started and timed until it answers /books/ with every
instrument, which loads every book from the table into the engine. Medians over runs. The
broker must be running (`make broker-start`).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import time

import orjson

from app.commands.replay import replay_files
from app.settings import load_settings
from load_tests.bench_book import arguments, bench_file
from load_tests.worker_proc import bench_worker, delete_deployment, get_json


def _restart(broker: str, env: dict[str, str], wipe: bool, instruments: int) -> float:
    if wipe:
        shutil.rmtree(env["TAPESTREAM_DATA_DIR"], ignore_errors=True)
    keep = {
        k: env[k] for k in ("TAPESTREAM_APP_ID", "TAPESTREAM_TOPIC_PREFIX", "TAPESTREAM_DATA_DIR")
    }
    t0 = time.monotonic()
    with bench_worker(broker, keep=True, **keep) as w:
        while True:
            try:
                body = get_json(f"{w.url}/books/")
                if body["count"] == instruments and not body.get("partial"):
                    return time.monotonic() - t0
            except OSError:
                pass
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"books not back after 600 s; see {w.log_path}")
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__).parse_args(argv)
    path, truth = bench_file(args.records, args.instruments, args.orders_per_instrument)
    live = sum(t["orders"] for t in truth["instruments"].values())
    broker = load_settings().broker
    with bench_worker(broker, keep=True) as w:
        env = dict(w.env)
        asyncio.run(replay_files([str(path)], load_settings(env), progress=False))
        w.wait_processed("instruments", truth["records"], limit_s=900)
        time.sleep(2 * float(env.get("TAPESTREAM_COMMIT_INTERVAL", "1.0")))
    results: dict[str, list[float]] = {"kept": [], "wiped": []}
    for _ in range(args.runs):
        for mode in ("kept", "wiped"):
            results[mode].append(_restart(broker, env, mode == "wiped", args.instruments))
    du = subprocess.run(["du", "-sb", env["TAPESTREAM_DATA_DIR"]], capture_output=True, text=True)
    delete_deployment(env)
    print(
        orjson.dumps(
            {
                "file": str(path),
                "live_orders": live,
                "instruments": args.instruments,
                "runs": args.runs,
                "restart_seconds_median": {
                    k: round(statistics.median(v), 2) for k, v in results.items()
                },
                "restart_seconds": {k: [round(x, 2) for x in v] for k, v in results.items()},
                "local_state_bytes": int(du.stdout.split()[0]) if du.returncode == 0 else None,
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
