"""The symbology table kept on the broker: the compacted one-partition topic `symbols`, one record
per name (key `NAMESPACE:SYMBOL`, value the JSON of `tables.symbology.Entry`: `namespace`,
`symbol`, `instrument_id`, `source`, `first_seen_ns`). Every process that gives a symbol an id
(the ticks and depth sources, the webhook on each worker) reads it first and writes the names it
adds, so a name whose id another holds is refused wherever it turns up; consumers read it to
name the instruments of every topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import orjson

from app import kafka
from app.control import ensure_compacted_topic, read_compacted
from app.settings import Settings
from tables.symbology import Entry, SymbolCollision, Symbology

log = logging.getLogger(__name__)

SYMBOLS_TOPIC = "symbols"


class SymbolTable:
    """The table as one process holds it: loaded once, added to and written through."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.settings = settings
        self.source = source
        self.symbology = Symbology()
        self._topic: str | None = None
        self._lock = asyncio.Lock()
        # names refused here, so that asking again does not read the topic again
        self._refused: dict[tuple[str, str], SymbolCollision] = {}

    async def load(self) -> None:
        self._topic = await ensure_compacted_topic(
            self.settings, self.settings.topic(SYMBOLS_TOPIC)
        )
        entries = []
        for key, body in (await read_compacted(self.settings, self._topic)).items():
            try:
                entries.append(Entry.from_json(body))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("symbols: the record of %s is not an entry (%s): skipped", key, exc)
        self.symbology = Symbology(entries)

    async def take(self, namespace: str, symbols: Iterable[str]) -> dict[str, Entry | Exception]:
        """Each symbol's entry, added and written if new, or the SymbolCollision that refuses
        it. Written before the answer: an id is never used before the table holds it."""
        symbols = list(dict.fromkeys(symbols))
        async with self._lock:
            if self._topic is None or not all(
                self.symbology.known(namespace, s) or (namespace, s) in self._refused
                for s in symbols
            ):
                # a new name: what other processes added since is read first, so that a
                # name one of them holds is refused here too
                await self.load()
            out: dict[str, Entry | Exception] = {}
            new: dict[str, Entry] = {}
            now = time.time_ns()
            for symbol in symbols:
                refused = self._refused.get((namespace, symbol))
                if refused is not None:
                    out[symbol] = refused
                    continue
                try:
                    entry, added = self.symbology.add(namespace, symbol, self.source, now)
                except SymbolCollision as exc:
                    out[symbol] = self._refused[(namespace, symbol)] = exc
                    continue
                out[symbol] = entry
                if added:
                    new[symbol] = entry
            if new:
                await self._write(list(new.values()))
                # Another process may have written a name on the same id at the same moment:
                # the first in the log holds it, here as everywhere.
                await self.load()
                for symbol, entry in new.items():
                    holder = self.symbology.get(entry.instrument_id)
                    if holder is not None and holder.name != entry.name:
                        exc = SymbolCollision(entry.name, holder.name, entry.instrument_id)
                        out[symbol] = self._refused[(namespace, symbol)] = exc
            return out

    async def _write(self, entries: list[Entry]) -> None:
        assert self._topic is not None
        producer = kafka.producer(self.settings, acks="all", enable_idempotence=True)
        try:
            await producer.start()
            sends = [
                await producer.send(self._topic, orjson.dumps(e.as_json()), key=e.name.encode())
                for e in entries
            ]
            await asyncio.gather(*sends)
        except BaseException:
            self.symbology.forget(entries)  # not written: not taken
            raise
        finally:
            await producer.stop()
        for e in entries:
            log.info("symbols: %s is instrument %d", e.name, e.instrument_id)


async def take_or_refuse(
    settings: Settings, source: str, namespace: str, symbols: list[str]
) -> None:
    """For a source that streams a fixed list of symbols: all of them taken, or SymbolCollision
    for the first one refused."""
    table = SymbolTable(settings, source)
    for result in (await table.take(namespace, symbols)).values():
        if isinstance(result, Exception):
            raise result


class SymbolNames:
    """The table for those who only read it (the web views): read again at most every
    `max_age_s`, so a listing names an instrument within seconds of its symbol's first use
    without reading the topic on every request."""

    def __init__(self, settings: Settings, max_age_s: float = 5.0) -> None:
        self.table = SymbolTable(settings, "web")
        self.max_age_s = max_age_s
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def entries(self) -> list[Entry]:
        """Every entry, by instrument; raises when the topic cannot be read."""
        async with self._lock:
            now = time.monotonic()
            if self._loaded_at is None or now - self._loaded_at > self.max_age_s:
                await self.table.load()
                self._loaded_at = now
        return sorted(self.table.symbology.entries(), key=lambda e: e.instrument_id)

    async def names(self) -> dict[int, Entry]:
        """Each named instrument's entry; the last ones read (or none) when the topic cannot
        be read now, since a listing must not fail for want of names."""
        try:
            entries = await self.entries()
        except Exception as exc:
            log.warning("symbols: the topic could not be read (%r); names may be missing", exc)
            entries = self.table.symbology.entries()
        return {e.instrument_id: e for e in entries}
