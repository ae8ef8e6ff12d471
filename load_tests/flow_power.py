"""Detection power of the flow signals: sessions with planted institutional flows, run through
the file driver (the same stages a worker runs), scored against the truth.

    python -m load_tests.flow_power --seeds 1,2,3,4,5 --noise low,medium,high \\
        --png var/flow_power.png

The generator writes trades-only MBO (T records with the aggressor side) for a few instruments
over many sessions: ordinary two-sided trading with a U-shaped intraday volume profile, volume
that varies from session to session and window to window, windows that lean one way by chance,
and sides that come in runs (order splitting); trade sizes from a chosen distribution. In the last
sessions it plants flows: windows where extra volume, a multiple of the bucket's usual volume,
trades mostly on one side, so that the window as a whole is one-sided by the chosen share. The
planted trades also push the price their way, so the signals evaluator
(`faust -A app evaluate`) has something to find on these files too.

Scores, at the configured thresholds (the defaults unless `--z-volume`/`--z-net` say
otherwise): recall (flows with a signal of their direction in one of their windows), flows with
a signal of the wrong direction, and false signals per 1,000 ordinary windows (windows with a
baseline of at least the minimum sessions that hold no flow). The ROC sweeps the flow threshold
for three statistics at once, from the same pressure rows, replaying the signal rule
(`SignalEngine.decide`): the net score's z against its baseline (what the engine uses), TFI's z
(the rule before it), and net signed volume's z against its own baseline (computed here).
Prints one JSON document; `--png` saves the ROC plot.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.file_driver import run_files
from app.settings import Settings
from load_tests.gen_mbo import write_dbn
from models.mbo import F_LAST, MBO_DTYPE, MBO_LENGTH_WORDS, MBO_RTYPE
from tables.baselines import DAY_NS, Baselines, SessionClock, trimmed_stat
from tables.evaluation import match_truth
from tables.signals import SignalConfig, SignalEngine

MIN_NS = 60_000_000_000
WINDOW_NS = 5 * MIN_NS
OPEN_NS = (14 * 60 + 30) * MIN_NS  # 14:30 UTC, 09:30 New York
WINDOWS = 78  # 6.5 hours
T0 = 20_000 * DAY_NS  # a midnight (2024-10-04)
TICK = 10_000_000  # 0.01
BUY, SELL = ord("B"), ord("A")


@dataclass(frozen=True)
class Noise:
    """How ordinary trading varies, beyond the Poisson count of trades and random sides."""

    day_sigma: float  # log-volume spread of a whole session
    window_sigma: float  # log-volume spread of one window
    lean_sigma: float  # spread of an ordinary window's buy probability around 0.5
    persistence: float  # chance a trade repeats the previous trade's side (order splitting)


NOISE = {
    "low": Noise(0.10, 0.15, 0.02, 0.0),
    "medium": Noise(0.20, 0.25, 0.04, 0.25),
    "high": Noise(0.30, 0.35, 0.06, 0.5),
}
SIZES = ("uniform", "lognormal", "pareto")


@dataclass(frozen=True)
class FlowGen:
    seed: int = 1
    instruments: int = 2
    sessions: int = 25
    plant_sessions: int = 5  # flows go in the last sessions
    flows: int = 40
    multiple: tuple[float, float] = (3.0, 8.0)  # window volume over the bucket's usual
    one_sided: tuple[float, float] = (0.7, 0.9)  # the flow side's share of the window
    duration: int = 1  # windows a flow lasts
    noise: str = "medium"
    sizes: str = "uniform"
    trades_per_window: float = 60.0  # mean at midday; the open and close trade `u_shape` times it
    u_shape: float = 3.0

    def __post_init__(self) -> None:
        if self.noise not in NOISE:
            raise ValueError(f"noise is one of {', '.join(NOISE)}, not {self.noise!r}")
        if self.sizes not in SIZES:
            raise ValueError(f"sizes is one of {', '.join(SIZES)}, not {self.sizes!r}")
        if not (1 <= self.multiple[0] <= self.multiple[1]):
            raise ValueError("the volume multiple is a range of numbers >= 1")
        if not (0.5 <= self.one_sided[0] <= self.one_sided[1] <= 1):
            raise ValueError("the one-sided share is a range within [0.5, 1]")
        gap = 4 + self.duration  # windows between two flows of one instrument in a session
        room = self.instruments * self.plant_sessions * (WINDOWS // gap)
        if not 0 <= self.flows <= room or self.plant_sessions > self.sessions:
            raise ValueError(f"at most {room} flows fit in {self.plant_sessions} sessions")


class Generator:
    def __init__(self, cfg: FlowGen) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        x = (np.arange(WINDOWS) + 0.5) / WINDOWS * 2 - 1  # -1 at the open, 1 at the close
        self.usual = cfg.trades_per_window * (1 + (cfg.u_shape - 1) * x**2)
        self.iids = [100 + i for i in range(cfg.instruments)]
        self.price = {iid: 100_00 * TICK for iid in self.iids}
        self.sequence = dict.fromkeys(self.iids, 0)

    def plants(self) -> list[dict[str, Any]]:
        """Where the flows go: distinct windows of the last sessions, far enough apart within
        one instrument's session that the cooldown cannot hide one behind another."""
        cfg, rng = self.cfg, self.rng
        gap = 4 + cfg.duration
        slots = [
            (iid, s, b * gap + 1)
            for iid in self.iids
            for s in range(cfg.sessions - cfg.plant_sessions, cfg.sessions)
            for b in range(WINDOWS // gap)
            if b * gap + 1 + cfg.duration <= WINDOWS
        ]
        chosen = sorted(rng.choice(len(slots), cfg.flows, replace=False).tolist())
        out = []
        for k in chosen:
            iid, s, b = slots[k]
            out.append(
                {
                    "instrument_id": iid,
                    "session": s,
                    "bucket": b,
                    "start": T0 + s * DAY_NS + OPEN_NS + b * WINDOW_NS,
                    "windows": cfg.duration,
                    "direction": "BUY" if rng.random() < 0.5 else "SELL",
                    "multiple": float(rng.uniform(*cfg.multiple)),
                    "one_sided": float(rng.uniform(*cfg.one_sided)),
                }
            )
        return out

    def _sizes(self, n: int) -> np.ndarray:
        rng = self.rng
        if self.cfg.sizes == "uniform":
            return rng.integers(1, 11, n)
        if self.cfg.sizes == "lognormal":
            return np.maximum(1, np.round(rng.lognormal(math.log(4), 1.0, n))).astype(np.int64)
        return np.minimum(5_000, np.floor(rng.pareto(1.6, n) * 3 + 1)).astype(np.int64)

    def _sides(self, n: int, p_buy: float) -> np.ndarray:
        """Sides with runs: a trade repeats the one before with the noise's persistence,
        else draws a fresh side (buy with p_buy)."""
        rng = self.rng
        fresh = np.where(rng.random(n) < p_buy, BUY, SELL)
        if not n:
            return fresh
        repeat = rng.random(n) < NOISE[self.cfg.noise].persistence
        repeat[0] = False
        idx = np.where(repeat, 0, np.arange(n))
        np.maximum.accumulate(idx, out=idx)
        return fresh[idx]

    def sessions(self, plants: list[dict[str, Any]]):
        """MBO records, one array per session, in time order."""
        cfg, rng, noise = self.cfg, self.rng, NOISE[self.cfg.noise]
        planted = {
            (p["instrument_id"], p["session"], p["bucket"] + k): p
            for p in plants
            for k in range(p["windows"])
        }
        for s in range(cfg.sessions):
            day = {iid: rng.lognormal(0, noise.day_sigma) for iid in self.iids}
            parts = []
            for iid in self.iids:
                for b in range(WINDOWS):
                    start = T0 + s * DAY_NS + OPEN_NS + b * WINDOW_NS
                    lam = self.usual[b] * day[iid] * rng.lognormal(0, noise.window_sigma)
                    n = int(rng.poisson(lam))
                    p_buy = float(np.clip(0.5 + rng.normal(0, noise.lean_sigma), 0.05, 0.95))
                    sides = self._sides(n, p_buy)
                    flow = np.zeros(n, bool)
                    plant = planted.get((iid, s, b))
                    if plant is not None:
                        m, f = plant["multiple"], plant["one_sided"]
                        extra = int(rng.poisson((m - 1) * self.usual[b]))
                        # the extra trades' buy share that makes the whole window's share f
                        lean = min(1.0, (f * m - 0.5) / (m - 1)) if m > 1 else f
                        p = lean if plant["direction"] == "BUY" else 1 - lean
                        sides = np.concatenate([sides, self._sides(extra, p)])
                        flow = np.concatenate([flow, np.ones(extra, bool)])
                    parts.append(self._window(iid, start, sides, flow))
            yield self._order(parts)

    def _window(self, iid: int, start: int, sides: np.ndarray, flow: np.ndarray) -> np.ndarray:
        rng = self.rng
        n = len(sides)
        order = rng.permutation(n)  # the flow's trades spread through the window
        sides, flow = sides[order], flow[order]
        t = np.sort(rng.integers(0, WINDOW_NS, n))
        # price: a random walk in ticks, and the flow's trades lean it their way
        step = rng.choice([-1, 0, 1], n, p=[0.1, 0.8, 0.1])
        push = np.where(flow & (rng.random(n) < 0.15), np.where(sides == BUY, 1, -1), 0)
        px = self.price[iid] + np.cumsum(step + push) * TICK
        if n:
            self.price[iid] = int(px[-1])
        rec = np.zeros(n, MBO_DTYPE)
        rec["length"] = MBO_LENGTH_WORDS
        rec["rtype"] = MBO_RTYPE
        rec["publisher_id"] = 1
        rec["instrument_id"] = iid
        rec["ts_recv"] = start + t
        rec["ts_event"] = start + t
        rec["price"] = px
        rec["size"] = self._sizes(n)
        rec["flags"] = F_LAST
        rec["action"] = ord("T")
        rec["side"] = sides
        return rec

    def _order(self, parts: list[np.ndarray]) -> np.ndarray:
        rec = np.concatenate(parts)
        rec = rec[np.argsort(rec["ts_recv"], kind="stable")]
        for iid in self.iids:
            mine = rec["instrument_id"] == iid
            k = int(mine.sum())
            rec["sequence"][mine] = np.arange(self.sequence[iid] + 1, self.sequence[iid] + k + 1)
            self.sequence[iid] += k
        return rec


def generate(path: Path, cfg: FlowGen) -> list[dict[str, Any]]:
    """Write the sessions to `path` (DBN MBO) and its truth beside it; return the truth."""
    gen = Generator(cfg)
    plants = gen.plants()
    write_dbn(
        path,
        gen.sessions(plants),
        start_ns=T0,
        symbols=[str(i) for i in gen.iids],
        dataset="SYNTH.FLOWS",
    )
    truth_file(path).write_bytes(orjson.dumps({"generator": asdict(cfg), "flows": plants}))
    return plants


def truth_file(path: Path) -> Path:
    return path.with_name(path.name + ".truth.json")


# -- scoring ------------------------------------------------------------------------------------


def _net_volume_z(pressure: list[dict[str, Any]], sessions: int) -> list[float | None]:
    """Each window's net signed volume against the same bucket's previous sessions (at most
    `sessions` of them, none its own), trimmed as the engine's baselines are."""
    history: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    out: list[float | None] = []
    for row in pressure:
        net = float(row["buy_volume"] - row["sell_volume"])
        h = history[(row["instrument_id"], row["bucket"])]
        past = [v for s, v in h if s < row["session"]][-sessions:]
        out.append(trimmed_stat(past, 1.0).z(net) if past else None)
        h.append((row["session"], net))
    return out


STATISTICS = ("net_score", "tfi", "net_volume")


def fired(
    pressure: list[dict[str, Any]],
    config: SignalConfig,
    statistic: str = "net_score",
    net_volume_z: list[float | None] | None = None,
) -> list[tuple[int, int, str]]:
    """(instrument, window start, direction) of every signal the rule fires over these
    pressure rows, with `statistic`'s z in the place of the net score's."""
    engine = SignalEngine(SessionClock(WINDOW_NS), Baselines(), config)
    out = []
    for i, row in enumerate(pressure):
        if "z_vol" not in row:
            continue
        if statistic == "net_score":
            zs = row["z_net"]
        elif statistic == "tfi":
            zs = row["z_flow"]
        else:
            zs = net_volume_z[i] if net_volume_z is not None else None
            if zs is None:
                continue
        z = {"z_vol": row["z_vol"], "z_net": zs, "z_flow": row["z_flow"]}
        d = engine.decide(
            row["instrument_id"],
            row["start"],
            row["volume"],
            row["net_score"],
            row["baseline_sessions"],
            z,
        )
        if d is not None:
            out.append((row["instrument_id"], row["start"], d))
    return out


def score(
    signals: list[tuple[int, int, str]],
    pressure: list[dict[str, Any]],
    flows: list[dict[str, Any]],
    min_sessions: int,
) -> dict[str, Any]:
    """Recall, wrong directions and false signals per 1,000 ordinary windows (windows with
    enough baseline to be scored that hold no flow)."""
    out = match_truth([(i, s, WINDOW_NS, d) for i, s, d in signals], flows)
    planted = {
        (f["instrument_id"], f["start"] + w * WINDOW_NS) for f in flows for w in range(f["windows"])
    }
    ordinary = sum(
        1
        for r in pressure
        if r.get("baseline_sessions", 0) >= min_sessions
        and (r["instrument_id"], r["start"]) not in planted
    )
    out["ordinary_windows"] = ordinary
    out["false_per_1000"] = 1000 * out["false_signals"] / ordinary if ordinary else None
    return out


def run_one(cfg: FlowGen, settings: Settings, workdir: Path) -> dict[str, Any]:
    """Generate, run the file driver, and return its pressure rows, signals and the truth."""
    path = workdir / f"flows-{cfg.noise}-{cfg.seed}.mbo.dbn"
    flows = generate(path, cfg)
    result = run_files([str(path)], settings, progress=False)
    path.unlink()
    truth_file(path).unlink()
    pressure = sorted(result.row_topics["pressure"], key=lambda r: (r["end"], r["instrument_id"]))
    signals = [
        (s["instrument_id"], s["start"], s["direction"])
        for s in result.row_topics["signals"]
        if s["kind"] == "ifd"
    ]
    return {"pressure": pressure, "signals": signals, "flows": flows}


THRESHOLDS = [round(0.5 + 0.25 * i, 2) for i in range(31)] + list(range(9, 21))  # 0.5 .. 20


def roc(runs: list[dict[str, Any]], config: SignalConfig) -> dict[str, dict[str, list]]:
    """Per noise level, statistic and threshold: recall and false signals per 1,000, pooled
    over the level's seeds."""
    out: dict[str, dict[str, list]] = {}
    for r in runs:
        r.setdefault("net_volume_z", _net_volume_z(r["pressure"], 20))
    for noise in dict.fromkeys(r["noise"] for r in runs):
        mine = [r for r in runs if r["noise"] == noise]
        out[noise] = {}
        for stat in STATISTICS:
            points = []
            for t in THRESHOLDS:
                cfg = replace(config, z_net=t, z_flow=0.0)
                total = defaultdict(int)
                for r in mine:
                    sig = fired(r["pressure"], cfg, stat, r["net_volume_z"])
                    for k, v in score(sig, r["pressure"], r["flows"], cfg.min_sessions).items():
                        if isinstance(v, int):
                            total[k] += v
                points.append(
                    {
                        "threshold": t,
                        "recall": total["found"] / total["flows"],
                        "wrong_direction": total["wrong_direction"],
                        "false_per_1000": 1000 * total["false_signals"] / total["ordinary_windows"],
                    }
                )
            out[noise][stat] = points
    return out


def plot(curves: dict[str, dict[str, list]], default: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "net_score": "net score z (the engine's)",
        "tfi": "TFI z (the rule before)",
        "net_volume": "net signed volume z",
    }
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.5), squeeze=False)
    for ax, (noise, stats) in zip(axes[0], curves.items(), strict=True):
        for stat, points in stats.items():
            xs = [p["false_per_1000"] for p in points]
            ys = [p["recall"] for p in points]
            ax.plot(xs, ys, marker=".", label=labels[stat])
            for p in points:
                if p["threshold"] == default:
                    ax.annotate(f"{default:g}", (p["false_per_1000"], p["recall"]), fontsize=8)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("false signals per 1,000 ordinary windows")
        ax.set_ylim(0, 1.02)
        ax.axvline(1.0, color="grey", lw=0.5, ls="--")
        ax.axhline(0.95, color="grey", lw=0.5, ls="--")
        ax.set_title(f"noise: {noise}", fontsize=10)
    axes[0][0].set_ylabel("recall of planted flows")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("flows", "found", "wrong_direction", "false_signals", "ordinary_windows")
    total: dict[str, Any] = {k: sum(r[k] for r in rows) for k in keys}
    total["recall"] = total["found"] / total["flows"]
    total["false_per_1000"] = 1000 * total["false_signals"] / total["ordinary_windows"]
    return total


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--noise", default="low,medium,high")
    ap.add_argument("--multiple", type=_pair, default=(3.0, 8.0), help="LO,HI volume multiple")
    ap.add_argument("--one-sided", type=_pair, default=(0.7, 0.9), help="LO,HI flow share")
    ap.add_argument("--duration", type=int, default=1, help="windows a flow lasts")
    ap.add_argument("--sizes", choices=SIZES, default="uniform")
    ap.add_argument("--flows", type=int, default=40)
    ap.add_argument("--sessions", type=int, default=25)
    ap.add_argument("--z-volume", type=float, help="threshold on z_vol (default: the engine's)")
    ap.add_argument("--z-net", type=float, help="threshold on z_net (default: the engine's)")
    ap.add_argument("--png", type=Path, help="save the ROC plot here")
    ap.add_argument(
        "--write",
        type=Path,
        help="only write the first seed's sessions here (DBN MBO) with <file>.truth.json, to "
        "backfill and evaluate yourself",
    )
    args = ap.parse_args(argv)

    base = Settings()
    overrides = {}
    if args.z_volume is not None:
        overrides["signal_z_volume"] = args.z_volume
    if args.z_net is not None:
        overrides["signal_z_net"] = args.z_net
    settings = base.model_copy(update=overrides)
    config = settings.ifd_config().signal
    seeds = [int(s) for s in args.seeds.split(",")]

    def gen_config(seed: int, noise: str) -> FlowGen:
        return FlowGen(
            seed=seed,
            noise=noise,
            sizes=args.sizes,
            multiple=args.multiple,
            one_sided=args.one_sided,
            duration=args.duration,
            flows=args.flows,
            sessions=args.sessions,
        )

    if args.write is not None:
        flows = generate(args.write, gen_config(seeds[0], args.noise.split(",")[0]))
        print(f"wrote {args.write} and {truth_file(args.write)} ({len(flows)} flows)")
        return 0
    table = []
    runs = []
    with tempfile.TemporaryDirectory(prefix="flow-power-") as tmp:
        for noise in args.noise.split(","):
            for seed in seeds:
                cfg = gen_config(seed, noise)
                r = run_one(cfg, settings, Path(tmp))
                r["noise"] = noise
                runs.append(r)
                s = score(r["signals"], r["pressure"], r["flows"], config.min_sessions)
                table.append({"noise": noise, "seed": seed, **s})
                print(
                    f"{noise:>6} seed {seed}: {s['found']}/{s['flows']} found, "
                    f"{s['wrong_direction']} wrong, {s['false_signals']} false "
                    f"({s['false_per_1000']:.2f}/1000)",
                    file=sys.stderr,
                )
    curves = roc(runs, config)
    by_noise = {n: _pooled([t for t in table if t["noise"] == n]) for n in curves}
    report = {
        "settings": {
            "z_volume": config.z_volume,
            "z_net": config.z_net,
            "z_flow": config.z_flow,
            "volume_floor": config.volume_floor,
            "min_sessions": config.min_sessions,
        },
        "generator": {
            "multiple": args.multiple,
            "one_sided": args.one_sided,
            "duration": args.duration,
            "sizes": args.sizes,
            "flows_per_run": args.flows,
            "sessions": args.sessions,
            "noise": {n: asdict(NOISE[n]) for n in args.noise.split(",")},
        },
        "runs": table,
        "by_noise": by_noise,
        "total": _pooled(table),
        "roc": curves,
    }
    if args.png is not None:
        plot(
            curves,
            config.z_net,
            args.png,
            f"{args.multiple[0]:g}-{args.multiple[1]:g}x volume, "
            f"{args.one_sided[0]:.0%}-{args.one_sided[1]:.0%} one-sided, noise {args.noise}, "
            f"seeds {args.seeds}; z_vol >= {config.z_volume:g}",
        )
        report["png"] = str(args.png)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
