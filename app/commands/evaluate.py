"""`faust -A app evaluate SIGNALS... --prices INPUT... [--truth FILE] [--horizons 1m,5m,15m]
[--tick 0.25] [--plots DIR] [--out FILE]`: how the price moved after each signal, with no
broker.

SIGNALS are JSON-lines files of signals as the `signals` topic carries them (`backfill` writes
`signals.jsonl`): flow signals and every pattern kind. INPUT files (trades DBN or any MBO input)
give the trades the moves are read from (tables/evaluation.py says how). The report, one JSON
document, gives per kind and horizon the hit rate, loss rate and the mean and median move in
ticks in the signal's direction, the same per kind and strength, and with `--truth` (planted
flows as load_tests/flow_power.py writes them) the recall, wrong directions and false signals of
the flow signals. `--plots DIR` draws the hit rates and the spread of moves as PNG files.
Signals without an instrument and a direction (options groups', processing lag) are counted and
left out.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
from faust.cli import argument, option

from app.commands import exit_with
from app.faust_app import app
from app.feeds.mbo_files import InputError, open_trades
from app.progress import Progress
from models.intervals import interval_name, parse_interval
from tables.evaluation import Outcome, Prices, forward_moves, match_truth, summarize


class EvaluateError(Exception):
    """Input the evaluation cannot use, with where it is."""


def read_signals(paths: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            lines = Path(path).read_bytes().splitlines()
        except OSError as exc:
            raise EvaluateError(f"{path}: {exc.strerror}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise EvaluateError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise EvaluateError(f"{path}:{n}: a signal is a JSON object")
            yield row


def read_truth(path: str) -> list[dict[str, Any]]:
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise EvaluateError(f"{path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise EvaluateError(f"{path}: not JSON ({exc})") from None
    flows = doc.get("flows") if isinstance(doc, dict) else doc
    if not isinstance(flows, list):
        raise EvaluateError(f"{path}: the truth is a list of flows, or an object with `flows`")
    for k, f in enumerate(flows):
        if not (
            isinstance(f, dict)
            and isinstance(f.get("instrument_id"), int)
            and isinstance(f.get("start"), int)
            and f.get("direction") in ("BUY", "SELL")
        ):
            raise EvaluateError(
                f"{path}: flow {k} needs integer instrument_id and start, and direction BUY or SELL"
            )
    return flows


def parse_tick(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        tick = Decimal(text).scaleb(9)
    except InvalidOperation:
        raise EvaluateError(f"--tick: {text!r} is not a decimal number") from None
    if tick <= 0 or tick != tick.to_integral_value():
        raise EvaluateError(f"--tick: {text} must be positive, with at most 9 decimals")
    return int(tick)


def load_prices(inputs: tuple[str, ...], instruments: set[int], progress: bool) -> Prices:
    prices = Prices()
    for path in inputs:
        f = open_trades(path)
        bar = Progress(f.path.name, f.size, enabled=progress)
        trades = 0
        for chunk in f.chunks():
            trades += len(chunk)
            prices.add(chunk, instruments)
            bar.update(f.bytes_read, trades)
        bar.update(f.bytes_read, trades, force=True)
        bar.close()
    prices.freeze()
    return prices


def evaluate_files(
    signal_paths: tuple[str, ...],
    price_paths: tuple[str, ...],
    horizons: dict[str, int],
    tick: int | None = None,
    truth_path: str | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], list[Outcome]]:
    signals = list(read_signals(signal_paths))
    instruments = {s["instrument_id"] for s in signals if isinstance(s.get("instrument_id"), int)}
    prices = load_prices(price_paths, instruments, progress)
    outcomes = forward_moves(signals, prices, list(horizons.values()), tick)
    report: dict[str, Any] = {
        "horizons": list(horizons),
        "read": len(signals),
        "left_out": len(signals) - len(outcomes),
        **summarize(outcomes, horizons),
        "ticks": {str(i): t for i, t in sorted(prices.ticks.items())} if tick is None else tick,
    }
    if truth_path is not None:
        flows = read_truth(truth_path)
        flow_signals = [
            (s["instrument_id"], s["start"], parse_interval(s["interval"]), s["direction"])
            for s in signals
            if s.get("kind") == "ifd" and isinstance(s.get("instrument_id"), int)
        ]
        report["truth"] = match_truth(flow_signals, flows)
    return report, outcomes


def plot(report: dict[str, Any], outcomes: list[Outcome], horizons: dict[str, int], out: Path):
    """hit_rate.png: per kind, the share of moves the signal's way at each horizon;
    moves.png: the spread of moves in ticks, per kind, one panel per horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    kinds = list(report["by_kind"])
    names = list(horizons)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(kinds) * len(names) / 2), 4))
    width = 0.8 / max(1, len(names))
    for j, h in enumerate(names):
        xs = [i + j * width for i in range(len(kinds))]
        ys = [report["by_kind"][k][h].get("hit_rate", 0) for k in kinds]
        ax.bar(xs, ys, width, label=h)
        for x, k in zip(xs, kinds, strict=True):
            ax.annotate(
                str(report["by_kind"][k][h]["n"]), (x, 0.01), ha="center", fontsize=7, rotation=90
            )
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(kinds))], kinds)
    ax.set_ylabel("hit rate (move in the signal's direction)")
    ax.set_ylim(0, 1)
    ax.legend(title="after")
    fig.savefig(out / "hit_rate.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    for ax, (name, h) in zip(axes[0], horizons.items(), strict=True):
        data = [
            [o.moves[h] for o in outcomes if o.signal.get("kind") == k and o.moves[h] is not None]
            for k in kinds
        ]
        ax.boxplot([d or [0.0] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(kinds) + 1), kinds, rotation=45, ha="right", fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"after {name}", fontsize=10)
    axes[0][0].set_ylabel("move in ticks, signal's direction")
    fig.savefig(out / "moves.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def parse_horizons(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        ns = parse_interval(part.strip())
        out[interval_name(ns)] = ns
    if not out:
        raise ValueError("give at least one horizon")
    return out


@app.command(
    argument("signal_files", nargs=-1, required=True),
    option("--prices", "price_files", multiple=True, required=True, help="Trades or MBO files."),
    option("--truth", default=None, help="Planted flows to score the flow signals against."),
    option("--horizons", default="1m,5m,15m", help="How long after each signal to look."),
    option("--tick", default=None, help="Tick size, a decimal (default: inferred)."),
    option("--plots", "plots_dir", default=None, help="Directory for hit_rate.png and moves.png."),
    option("--out", "out_path", default=None, help="Report file (default: stdout)."),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
)
async def evaluate(
    self: object,
    signal_files: tuple[str, ...],
    price_files: tuple[str, ...],
    truth: str | None,
    horizons: str,
    tick: str | None,
    plots_dir: str | None,
    out_path: str | None,
    no_progress: bool,
) -> None:
    """Score signals against the price moves that followed them, with no broker."""
    try:
        spans = parse_horizons(horizons)
    except ValueError as exc:
        exit_with(f"--horizons: {exc}", 2)
    try:
        tick_units = parse_tick(tick)
    except EvaluateError as exc:
        exit_with(str(exc), 2)
    try:
        report, outcomes = evaluate_files(
            signal_files, price_files, spans, tick_units, truth, progress=not no_progress
        )
    except (EvaluateError, InputError) as exc:
        exit_with(str(exc))
    if plots_dir is not None:
        plot(report, outcomes, spans, Path(plots_dir))
        report["plots"] = [str(Path(plots_dir) / n) for n in ("hit_rate.png", "moves.png")]
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    if out_path is None:
        print(text)
    else:
        Path(out_path).write_text(text + "\n")
    print(f"evaluated {len(outcomes):,} signals", file=sys.stderr)
