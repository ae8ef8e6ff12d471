"""A stand-in for Databento's live gateway (LSG), on 127.0.0.1, for tests and the demo.

It speaks the protocol the real `databento.Live` client expects, unchanged: a version line and
a CRAM challenge; the client's `auth=` line (SHA-256 of `challenge|key`, then the key's last
five characters); subscription lines; `start_session`; then a DBN stream: metadata, one
symbol-mapping record per resolved symbol, the subscribed definitions, and the MBO records.

What it serves is recorded DBN (or CSV) MBO files, published on a clock: the first record's
`ts_recv` is published when the gateway starts, the rest as their `ts_recv` comes due at `speed`
times the recorded pace (`speed=None`: everything is published at once). A subscription
without `start` gets what is published from then on; with `start` it first gets every
published record with `ts_event >= start` (Databento filters MBO replay on `ts_event`), then a
REPLAY_COMPLETED system message, then the live records. A `start` older than `horizon_ns`
before the gateway's clock is refused with REPLAY_DATA_AGED_OUT. Heartbeats (system messages)
go out when nothing else did for the session's heartbeat interval.

Faults are scheduled by the count of MBO records served over all sessions (`Fault`), or asked
for at any time (`inject`): reset the connection, close it cleanly, stall (send nothing, not even
heartbeats), refuse the next logins, slow down, send bytes that are not a record, half a record,
a record of no known type, or a record of another schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import databento_dbn as dbn
import numpy as np

from app.feeds.mbo_files import is_definition_file, open_mbo, read_definitions
from models import definitions as defs
from models.mbo import (
    F_LAST,
    F_SNAPSHOT,
    MBO_DTYPE,
    MBO_SIZE,
    UNDEF_PRICE,
    mbo_row,
)
from tables.order_book import OrderBook

log = logging.getLogger(__name__)

VERSION = "0.0.0-tapestream-standin"
DEFAULT_HEARTBEAT_S = 30
DEFAULT_HORIZON_NS = 24 * 3600 * 1_000_000_000
SEND_RECORDS = 2048  # MBO records per socket write
FAULT_KINDS = (
    "reset",
    "close",
    "stall",
    "refuse",
    "slow",
    "garbage",
    "torn",
    "unknown_rtype",
    "wrong_schema",
)


class GatewayError(Exception):
    pass


@dataclass
class Fault:
    """`kind` after `after` MBO records served in all (`refuse` and `slow` take effect then
    and last: `refuse` for `count` logins, `slow` at `rate` records/s for `seconds`)."""

    kind: str
    after: int = 0
    seconds: float = 0.0
    count: int = 1
    rate: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """`KIND@AFTER[:ARG]`: reset@5000, close@9000, stall@12000:20 (seconds),
        refuse@0:2 (logins), slow@3000:500 (records/s, for 5 s), garbage@7000, torn@7500,
        unknown_rtype@7800, wrong_schema@8000."""
        kind, _, rest = spec.partition("@")
        if kind not in FAULT_KINDS:
            raise GatewayError(f"fault {spec!r}: kind must be one of {', '.join(FAULT_KINDS)}")
        after_s, _, arg = rest.partition(":")
        try:
            after = int(after_s or 0)
            value = float(arg) if arg else None
        except ValueError:
            raise GatewayError(f"fault {spec!r}: expected KIND@RECORDS[:NUMBER]") from None
        if kind == "stall":
            return cls(kind, after, seconds=value if value is not None else 20.0)
        if kind == "refuse":
            return cls(kind, after, count=int(value) if value is not None else 1)
        if kind == "slow":
            return cls(kind, after, rate=value or 500.0, seconds=5.0)
        return cls(kind, after)


@dataclass
class Feed:
    """What the gateway publishes: MBO records in stream order, definitions, symbols."""

    dataset: str
    records: np.ndarray
    definitions: dict[int, bytes] = field(default_factory=dict)  # instrument -> v3 record
    symbols: dict[str, int] = field(default_factory=dict)  # raw symbol -> instrument

    @classmethod
    def from_files(cls, paths: Sequence[str], dataset: str | None = None) -> Feed:
        parts: list[np.ndarray] = []
        found: dict[int, bytes] = {}
        symbols: dict[str, int] = {}
        ds = dataset or ""
        for p in paths:
            if is_definition_file(p):
                for d in read_definitions(p):
                    found[int(d.instrument_id)] = defs.encode(d)
                    if d.raw_symbol:
                        symbols[str(d.raw_symbol)] = int(d.instrument_id)
                continue
            f = open_mbo(p)
            parts.extend(f.chunks())
            for d in f.definitions():
                found[int(d.instrument_id)] = defs.encode(d)
            for iid, sym in f.symbols.items():
                symbols.setdefault(sym, iid)
            ds = ds or f.dataset
        records = np.concatenate(parts) if parts else np.empty(0, MBO_DTYPE)
        return cls(ds or "GLBX.MDP3", records, found, symbols)

    def resolve(self, stype_in: str, symbols: str) -> tuple[set[int], dict[str, int], list[str]]:
        """Instruments a subscription names, the symbols resolved, and those not found."""
        ids = {int(i) for i in np.unique(self.records["instrument_id"])} | set(self.definitions)
        if symbols.strip() in ("ALL_SYMBOLS", ""):
            return ids, {str(i): i for i in ids}, []
        chosen: set[int] = set()
        resolved: dict[str, int] = {}
        missing: list[str] = []
        for sym in (s.strip() for s in symbols.split(",")):
            iid = None
            if stype_in == "instrument_id" and sym.isdigit() and int(sym) in ids:
                iid = int(sym)
            elif stype_in == "raw_symbol":
                iid = self.symbols.get(sym)
            if iid is None:
                missing.append(sym)
            else:
                chosen.add(iid)
                resolved[sym] = iid
        return chosen, resolved, missing


@dataclass
class Subscription:
    schema: str
    stype_in: str
    symbols: str
    start: int | None
    snapshot: bool


@dataclass
class GatewayStats:
    sessions: int = 0
    logins_refused: int = 0
    records_served: int = 0  # MBO records written to sockets, over all sessions
    faults_done: list[str] = field(default_factory=list)


class _Closed(Exception):
    """The session ends here (a fault, or the client went away)."""


class StandInGateway:
    def __init__(
        self,
        feed: Feed,
        *,
        keys: Sequence[str] = (),
        speed: float | None = 1.0,
        horizon_ns: int = DEFAULT_HORIZON_NS,
        faults: Sequence[Fault] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.feed = feed
        self.keys = list(keys)  # empty: any well-formed key logs in
        self.speed = speed
        self.horizon_ns = horizon_ns
        self.faults = sorted(faults, key=lambda f: f.after)
        self.host = host
        self.port = port
        self.stats = GatewayStats()
        self._server: asyncio.Server | None = None
        self._t0_wall = 0.0
        self._recv = feed.records["ts_recv"].astype(np.int64)
        self._event = feed.records["ts_event"].astype(np.int64)
        self._refuse = 0
        self._stall_until = 0.0
        self._slow_until = 0.0
        self._slow_rate = 0.0
        self._asked: list[Fault] = []
        self._sessions: set[asyncio.Task] = set()
        self._generation = 0
        self._current = 0

    # -- the clock --------------------------------------------------------------------------
    def published(self) -> int:
        """How many records of the feed are published by now (a prefix of it)."""
        if self.speed is None or not len(self._recv):
            return len(self._recv)
        now_ns = self._recv[0] + (time.monotonic() - self._t0_wall) * self.speed * 1e9
        return int(np.searchsorted(self._recv, now_ns, side="right"))

    def _now_ns(self) -> int:
        n = self.published()
        if not len(self._recv):
            return time.time_ns()
        return int(self._recv[max(n - 1, 0)])

    def _due_in(self, index: int) -> float:
        """Seconds until record `index` is published."""
        if self.speed is None or index >= len(self._recv):
            return 0.0
        due = self._t0_wall + (self._recv[index] - self._recv[0]) / (self.speed * 1e9)
        return max(0.0, due - time.monotonic())

    # -- serving ----------------------------------------------------------------------------
    async def start(self) -> int:
        self._t0_wall = time.monotonic()
        self.t0_epoch = time.time()  # when the first record was published, wall clock
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("stand-in gateway on %s:%d, %d records", self.host, self.port, len(self._recv))
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._sessions):
                t.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def inject(self, fault: Fault) -> None:
        """Apply `fault` to the running sessions at once."""
        self._asked.append(fault)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self.stats.sessions += 1
        try:
            await self._serve(reader, writer)
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("stand-in gateway session failed")
        finally:
            self._sessions.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        challenge = secrets.token_hex(8)
        writer.write(f"lsg_version={VERSION}\ncram={challenge}\n".encode())
        auth = _fields(await reader.readline())
        if not self._login_ok(challenge, auth.get("auth", "")):
            self.stats.logins_refused += 1
            writer.write(b"success=0|error=Authentication failed.\n")
            await writer.drain()
            raise _Closed
        if auth.get("dataset") != self.feed.dataset:
            writer.write(f"success=0|error=Unknown dataset {auth.get('dataset')}.\n".encode())
            await writer.drain()
            raise _Closed
        session_id = secrets.randbelow(1 << 31)
        writer.write(f"success=1|session_id={session_id}\n".encode())
        heartbeat_s = float(auth.get("heartbeat_interval_s") or DEFAULT_HEARTBEAT_S)
        subs: list[Subscription] = []
        while True:
            line = await reader.readline()
            if not line:
                raise _Closed
            f = _fields(line)
            if "start_session" in f:
                break
            start = f.get("start")
            subs.append(
                Subscription(
                    schema=f.get("schema", ""),
                    stype_in=f.get("stype_in", "raw_symbol"),
                    symbols=f.get("symbols", ""),
                    start=int(start) if start not in (None, "") else None,
                    snapshot=f.get("snapshot") == "1",
                )
            )
        # Only the newest session serves: one the client has given up on (after a stall, say)
        # must not go on writing, nor take the faults scheduled for the next.
        self._generation += 1
        self._current = self._generation
        await self._stream(writer, subs, heartbeat_s, self._generation)

    def _login_ok(self, challenge: str, response: str) -> bool:
        if self._refuse > 0:
            self._refuse -= 1
            return False
        sha, _, bucket = response.partition("-")
        if len(sha) != 64 or len(bucket) != 5:
            return False
        if not self.keys:
            return True
        return any(
            k.endswith(bucket) and hashlib.sha256(f"{challenge}|{k}".encode()).hexdigest() == sha
            for k in self.keys
        )

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        subs: list[Subscription],
        heartbeat_s: float,
        generation: int,
    ) -> None:
        mbo = [s for s in subs if s.schema == "mbo"]
        bad = [s.schema for s in subs if s.schema not in ("mbo", "definition")]
        now = self._now_ns()
        wanted: set[int] = set()
        mappings: dict[str, int] = {}
        for s in subs:
            ids, resolved, _missing = self.feed.resolve(s.stype_in, s.symbols)
            if s.schema == "mbo":
                wanted |= ids
            mappings.update(resolved)
        # start=0 asks for all the replay the gateway holds (Databento's convention)
        starts = [s.start or now - self.horizon_ns for s in mbo if s.start is not None]
        start = min(starts) if starts else None
        meta = dbn.Metadata(
            dataset=self.feed.dataset,
            start=start if start is not None else now,
            stype_in=dbn.SType.from_str(subs[0].stype_in) if subs else None,
            stype_out=dbn.SType.INSTRUMENT_ID,
            schema=dbn.Schema.MBO if len({s.schema for s in subs}) == 1 and mbo else None,
            symbols=sorted({sym for s in subs for sym in s.symbols.split(",")}),
            version=3,
            ts_out=False,
        )
        out = bytearray(bytes(meta.encode()))
        if bad:
            out += _error(now, f"Unsupported schema {bad[0]} in the stand-in gateway")
            writer.write(bytes(out))
            await writer.drain()
            raise _Closed
        if start is not None and start < now - self.horizon_ns:
            out += _error(
                now,
                f"Replay from {start} is older than the {self.horizon_ns // 10**9} s horizon",
                dbn.ErrorCode.REPLAY_DATA_AGED_OUT,
            )
            writer.write(bytes(out))
            await writer.drain()
            raise _Closed
        for sym, iid in sorted(mappings.items()):
            out += bytes(
                dbn.SymbolMappingMsg(
                    1,
                    iid,
                    now,
                    dbn.SType.RAW_SYMBOL,
                    sym,
                    dbn.SType.INSTRUMENT_ID,
                    str(iid),
                    now,
                    now + 86_400 * 10**9,
                )
            )
        if any(s.schema == "definition" for s in subs):
            for iid in sorted(wanted or self.feed.definitions):
                if iid in self.feed.definitions:
                    out += self.feed.definitions[iid]
        writer.write(bytes(out))
        await writer.drain()
        ids = np.fromiter(wanted, dtype=np.uint32) if wanted else np.empty(0, np.uint32)
        if start is None and any(s.snapshot for s in mbo):
            pos = self.published()
            snap = self.snapshot(ids, pos)
            writer.write(snap.tobytes())
            await writer.drain()
            await self._send_range(writer, ids, pos, None, heartbeat_s, generation)
            return
        if start is not None:
            pos = 0
            replay_end = self.published()
            await self._send_range(
                writer, ids, pos, replay_end, heartbeat_s, generation, start=start
            )
            writer.write(
                bytes(
                    dbn.SystemMsg(now, "Finished mbo replay", code=dbn.SystemCode.REPLAY_COMPLETED)
                )
            )
            pos = replay_end
        else:
            pos = self.published()
        await self._send_range(writer, ids, pos, None, heartbeat_s, generation)

    async def _send_range(
        self,
        writer: asyncio.StreamWriter,
        ids: np.ndarray,
        pos: int,
        end: int | None,
        heartbeat_s: float,
        generation: int,
        start: int | None = None,
    ) -> None:
        """Serve records [pos, end) of those published (end None: forever, as they come due)."""
        recs = self.feed.records
        last_sent = time.monotonic()
        total = len(recs)
        while end is None or pos < end:
            if self._current != generation:
                raise _Closed
            await self._faults(writer)
            limit = self.published() if end is None else end
            if pos >= limit:
                if end is None and pos >= total:
                    wait = heartbeat_s
                else:
                    wait = min(self._due_in(pos), heartbeat_s)
                idle = time.monotonic() - last_sent
                if idle >= heartbeat_s:
                    writer.write(
                        bytes(
                            dbn.SystemMsg(
                                self._now_ns(), "Heartbeat", code=dbn.SystemCode.HEARTBEAT
                            )
                        )
                    )
                    await writer.drain()
                    last_sent = time.monotonic()
                    continue
                await asyncio.sleep(min(max(wait, 0.001), heartbeat_s - idle, 0.2))
                continue
            step = SEND_RECORDS
            if self._slow_until > time.monotonic():
                step = max(1, int(self._slow_rate * 0.05))
            stop = min(limit, pos + step, self._next_fault_at(pos))
            if stop <= pos:
                stop = pos + 1
            chunk = recs[pos:stop]
            mask = np.isin(chunk["instrument_id"], ids)
            if start is not None:
                mask &= self._event[pos:stop] >= start
            pos = stop
            if mask.any():
                sent = chunk[mask]
                writer.write(sent.tobytes())
                self.stats.records_served += len(sent)
                await writer.drain()
                last_sent = time.monotonic()
            if self._slow_until > time.monotonic():
                await asyncio.sleep(0.05)
            elif pos % (SEND_RECORDS * 16) == 0:
                await asyncio.sleep(0)  # other sessions get a turn

    def snapshot(self, ids: np.ndarray, published: int) -> np.ndarray:
        """Each instrument's book as of the first `published` records, as Databento sends an
        MBO snapshot: an R, then one add per resting order in priority, best levels first,
        flagged F_SNAPSHOT, F_LAST on the last."""
        recs = self.feed.records[:published]
        recs = recs[np.isin(recs["instrument_id"], ids)]
        books: dict[tuple[int, int], OrderBook] = {}
        seqs: dict[tuple[int, int], int] = {}
        for r in recs:
            key = (int(r["publisher_id"]), int(r["instrument_id"]))
            book = books.get(key)
            if book is None:
                book = books[key] = OrderBook(*key)
            book.apply(
                int(r["action"]),
                int(r["side"]),
                int(r["price"]),
                int(r["size"]),
                int(r["order_id"]),
                int(r["flags"]),
            )
            seqs[key] = int(r["sequence"])
        now = self._now_ns()
        rows: list[tuple] = []
        for (pub, iid), book in sorted(books.items()):
            event = [(ord("R"), ord("N"), UNDEF_PRICE, 0, 0)]
            for side in (ord("B"), ord("A")):
                event += [(ord("A"), side, px, size, oid) for oid, px, size in book.resting(side)]
            for i, (action, side, price, size, oid) in enumerate(event):
                flags = F_SNAPSHOT | (F_LAST if i == len(event) - 1 else 0)
                rows.append(
                    mbo_row(
                        pub, iid, now, now, action, side, price, size, oid, flags, seqs[(pub, iid)]
                    )
                )
        return np.array(rows, dtype=MBO_DTYPE)

    def _next_fault_at(self, pos: int) -> int:
        """A chunk ends where the next scheduled fault is due, so it lands on its count."""
        if not self.faults:
            return 1 << 62
        return pos + max(1, self.faults[0].after - self.stats.records_served)

    async def _faults(self, writer: asyncio.StreamWriter) -> None:
        due = list(self._asked)
        self._asked.clear()
        while self.faults and self.faults[0].after <= self.stats.records_served:
            due.append(self.faults.pop(0))
        for fault in due:
            self.stats.faults_done.append(fault.kind)
            log.warning(
                "stand-in gateway: %s after %d records", fault.kind, self.stats.records_served
            )
            if fault.kind == "reset":
                _reset(writer)
                raise _Closed
            if fault.kind == "close":
                await writer.drain()
                writer.close()
                raise _Closed
            if fault.kind == "stall":
                await asyncio.sleep(fault.seconds)  # nothing at all, not even heartbeats
            elif fault.kind == "refuse":
                self._refuse += fault.count
                _reset(writer)
                raise _Closed
            elif fault.kind == "slow":
                self._slow_until = time.monotonic() + fault.seconds
                self._slow_rate = fault.rate
            elif fault.kind == "garbage":
                writer.write(secrets.token_bytes(3) + b"\xff" * 61)
                await writer.drain()
                await asyncio.sleep(0.5)
                _reset(writer)
                raise _Closed
            elif fault.kind == "torn":  # half a record, and the line drops
                writer.write(self.feed.records[:1].tobytes()[: MBO_SIZE // 2])
                await writer.drain()
                _reset(writer)
                raise _Closed
            elif fault.kind == "unknown_rtype":  # a well-formed header of no known type
                writer.write(
                    bytes([4, 0xEE, 1, 0, 1, 0, 0, 0]) + self._now_ns().to_bytes(8, "little")
                )
                await writer.drain()
            elif fault.kind == "wrong_schema":
                writer.write(_trade_record(self._now_ns()))
                await writer.drain()


def _fields(line: bytes) -> dict[str, str]:
    text = line.decode("utf-8", "replace").strip()
    return {k: v for k, _, v in (t.partition("=") for t in text.split("|") if t)}


def _error(ts: int, text: str, code: dbn.ErrorCode | None = None) -> bytes:
    return bytes(dbn.ErrorMsg(ts, text, code=code))


def _trade_record(ts: int) -> bytes:
    """A TradeMsg (rtype 0, 48 bytes): a record of another schema on an MBO subscription."""
    return struct.pack(
        "<BBHIQqIBBBBQiI",
        12,
        0,
        1,
        5602,
        ts,
        5_000_000_000_000,
        1,
        ord("T"),
        ord("B"),
        0,
        0,
        ts,
        0,
        1,
    )


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a dropped line does, not a clean close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
