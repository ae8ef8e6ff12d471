"""Institutional flow detection end to end, for one partition (or one file in backfill): the
books' trades and top of book in, `pressure` windows and `signals` out. No Faust here; each
piece is in its own module (pressure, baselines, signals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.book_events import BBO, TRADES
from models.mbo import F_VOLUME_ONLY
from models.trades import empty_trades, trades_from_columns
from tables.baselines import Baselines, SessionClock
from tables.options import DEFAULT_GROUPS, OptionInfo, option_parts, parse_groups
from tables.pressure import FlowState, PressureEngine
from tables.signals import SignalConfig, SignalEngine

PRESSURE = "pressure"
SIGNALS = "signals"


@dataclass(frozen=True)
class IfdConfig:
    interval_ns: int = 5 * 60_000_000_000
    lateness_ns: int = 2_000_000_000
    large_size: int = 50
    session_start_ns: int = 0
    venue_starts: tuple[tuple[str, int], ...] = ()  # (venue MIC, session start) overrides
    sessions: int = 20
    signal: SignalConfig = field(default_factory=SignalConfig)
    # the fields of each options group (tables/options.py); () aggregates none
    option_groups: tuple[tuple[str, ...], ...] = parse_groups(DEFAULT_GROUPS)


class IfdStage:
    def __init__(self, config: IfdConfig | None = None) -> None:
        self.config = cfg = config or IfdConfig()
        self.flows: dict[int, FlowState] = {}
        # instrument -> the publisher its first trade or quote came from: its venue's session
        self.publishers: dict[int, int] = {}
        # instrument -> what its definition says, for options only
        self.options: dict[int, OptionInfo] = {}
        # closed option windows as parts of their groups, until the caller takes them
        self.option_parts: list[list[Any]] = []
        self.pressure = PressureEngine(cfg.interval_ns, cfg.lateness_ns, cfg.large_size)
        self.signals = SignalEngine(
            SessionClock(cfg.interval_ns, cfg.session_start_ns, cfg.venue_starts),
            Baselines(cfg.sessions),
            cfg.signal,
        )

    def add(
        self,
        instrument_id: int,
        trades: np.ndarray,
        trade_events: np.ndarray,
        bbo: dict[str, Any] | None = None,
    ) -> int:
        """One instrument's trades (with their book event numbers) and top-of-book changes
        from one message, in book order; returns how many items were late."""
        if instrument_id not in self.publishers:
            if len(trades):
                self.publishers[instrument_id] = int(trades["publisher_id"][0])
            elif bbo is not None and len(bbo["publisher_id"]):
                self.publishers[instrument_id] = int(bbo["publisher_id"][0])
        state = self.flows.get(instrument_id)
        if state is None:
            state = self.flows[instrument_id] = FlowState()
        return self.pressure.add(instrument_id, state.flow(trades, trade_events, bbo))

    def define(self, instrument_id: int, info: OptionInfo | None) -> None:
        """An instrument's definition: an option's windows become parts of its groups from
        now on; any other instrument's definition (or a new one that is no option) stops it."""
        if info is None:
            self.options.pop(instrument_id, None)
        else:
            self.options[instrument_id] = info

    def take_option_parts(self) -> list[list[Any]]:
        parts, self.option_parts = self.option_parts, []
        return parts

    def add_book_output(self, instrument_id: int, messages: dict[str, dict]) -> bool:
        """What the books published for one message (models/book_events.py, by topic); False
        when it holds neither trades nor a top-of-book change."""
        trades_msg, bbo = messages.get(TRADES), messages.get(BBO)
        if trades_msg is None and bbo is None:
            return False
        if trades_msg is not None:
            trades, events = trades_from_columns(trades_msg)
            priced = (trades["flags"] & F_VOLUME_ONLY) == 0
            if not priced.all():
                # Pressure prices every trade it takes (VWAP, last price, the tick rule): a
                # trade that must set no price (tables/bars.py) is left out of it.
                trades, events = trades[priced], events[priced]
        else:
            trades, events = empty_trades(), np.zeros(0, np.int64)
        self.add(instrument_id, trades, events, bbo)
        return True

    def advance(self, received_through: int) -> list[tuple[str, dict[str, Any]]]:
        """Move the watermark; each window it closes, scored, and any signal it fires."""
        self.pressure.advance(received_through)
        return self._score(self.pressure.close())

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        return self._score(self.pressure.flush())

    def _score(self, windows: list) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for w in windows:
            scored = self.signals.score(w, self.publishers.get(w.instrument_id))
            row = {**w.as_dict(), "session": scored.session, "bucket": scored.bucket}
            if scored.z is not None:
                row.update(scored.z)
                row["baseline_sessions"] = scored.baseline["log_volume"].n  # type: ignore[index]
            out.append((PRESSURE, row))
            info = self.options.get(w.instrument_id)
            if info is not None:
                self.option_parts += option_parts(
                    w, info, self.config.option_groups, self.publishers.get(w.instrument_id)
                )
            if scored.signal is not None:
                out.append((SIGNALS, scored.signal))
        return out

    def baseline_rows(self) -> list[dict[str, Any]]:
        """Each (instrument, bucket)'s baseline as the next session would see it."""
        return self.signals.baselines.rows("instrument_id")
