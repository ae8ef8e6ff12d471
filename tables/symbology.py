"""The instruments of feeds that have no ids of their own (a tick vendor's tickers, a crypto
venue's symbols, LOBSTER files) and the ids they go by.

An id is CRC-32 of `NAMESPACE:SYMBOL` in 31 bits (`models.mbo.instrument_id_for`): every process
that meets a symbol gives it the same id without asking anyone, which is what lets live, replay
and backfill agree. What a hash cannot promise is that two names never share an id. CRC is linear,
so names of one length that differ in fewer than 31 bits never do (tickers of up to six capital
letters among themselves); names of mixed lengths and characters do, about one pair in n²/2³² for
n names (W1EXHT and SSIUEYF4Q are one such pair). The table keeps every name met, with its id, so
that a second name on an id is refused with both names, never merged into the first one's books
and bars. Which name holds an id is first come, first served, in the order of the table's log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from models.mbo import instrument_id_for


class SymbolCollision(ValueError):
    def __init__(self, name: str, holder: str, instrument_id: int) -> None:
        super().__init__(
            f"{name} hashes to instrument id {instrument_id}, which {holder} holds already: "
            f"{name} cannot be taken (its records would be counted as {holder}'s)"
        )
        self.name, self.holder, self.instrument_id = name, holder, instrument_id


@dataclass(frozen=True)
class Entry:
    namespace: str  # US-EQUITY, BINANCE-USDM, LOBSTER...
    symbol: str
    instrument_id: int
    source: str  # what met it first: ticks, depth, ingest, a file
    first_seen_ns: int

    @property
    def name(self) -> str:
        return f"{self.namespace}:{self.symbol}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Entry:
        entry = cls(
            str(body["namespace"]),
            str(body["symbol"]),
            int(body["instrument_id"]),
            str(body.get("source", "")),
            int(body.get("first_seen_ns", 0)),
        )
        if entry.instrument_id != instrument_id_for(entry.name):
            raise ValueError(f"{entry.name} is not instrument {entry.instrument_id}")
        return entry


class Symbology:
    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._by_id: dict[int, Entry] = {}
        self._by_name: dict[str, Entry] = {}
        # Two processes that met colliding names at the same moment may both have written
        # theirs: the first in the table's log keeps the id (every process reads the same
        # log; their clocks may disagree), the other stays refused.
        self.refused: list[SymbolCollision] = []
        for e in entries:
            try:
                self._keep(e)
            except SymbolCollision as exc:
                self.refused.append(exc)

    def __len__(self) -> int:
        return len(self._by_name)

    def known(self, namespace: str, symbol: str) -> bool:
        return f"{namespace}:{symbol}" in self._by_name

    def get(self, instrument_id: int) -> Entry | None:
        return self._by_id.get(instrument_id)

    def entries(self) -> list[Entry]:
        return list(self._by_name.values())

    def add(self, namespace: str, symbol: str, source: str, ts: int) -> tuple[Entry, bool]:
        """The name's entry, and whether it is new; SymbolCollision if its id is another's."""
        name = f"{namespace}:{symbol}"
        known = self._by_name.get(name)
        if known is not None:
            return known, False
        entry = Entry(namespace, symbol, instrument_id_for(name), source, ts)
        self._keep(entry)
        return entry, True

    def _keep(self, entry: Entry) -> None:
        holder = self._by_id.get(entry.instrument_id)
        if holder is not None and holder.name != entry.name:
            raise SymbolCollision(entry.name, holder.name, entry.instrument_id)
        self._by_id[entry.instrument_id] = entry
        self._by_name[entry.name] = entry

    def forget(self, entries: Iterable[Entry]) -> None:
        """Take back entries just added (their write failed)."""
        for e in entries:
            if self._by_name.get(e.name) == e:
                del self._by_name[e.name]
                del self._by_id[e.instrument_id]
