"""The Databento MBO record as it travels on the raw topic: 56 little-endian bytes.

Layout follows DBN (`MboMsg`), unchanged across DBN versions 1-3, so a raw-topic
message is simply a run of these records and decodes with one `np.frombuffer`.
"""

from __future__ import annotations

import zlib
from typing import Final

import numpy as np

MBO_DTYPE: Final = np.dtype(
    [
        ("length", "u1"),  # record length in 4-byte words: 14 for MBO
        ("rtype", "u1"),
        ("publisher_id", "<u2"),
        ("instrument_id", "<u4"),
        ("ts_event", "<u8"),
        ("order_id", "<u8"),
        ("price", "<i8"),
        ("size", "<u4"),
        ("flags", "u1"),
        ("channel_id", "u1"),
        ("action", "u1"),  # ASCII code: A C M R T F N
        ("side", "u1"),  # ASCII code: B A N
        ("ts_recv", "<u8"),
        ("ts_in_delta", "<i4"),
        ("sequence", "<u4"),
    ]
)
MBO_SIZE: Final = 56
MBO_RTYPE: Final = 0xA0
MBO_LENGTH_WORDS: Final = MBO_SIZE // 4
assert MBO_DTYPE.itemsize == MBO_SIZE

UNDEF_PRICE: Final = (1 << 63) - 1
PRICE_SCALE: Final = 1_000_000_000

# Record flags.
F_LAST: Final = 128
F_TOB: Final = 64
F_SNAPSHOT: Final = 32
F_MBP: Final = 16
F_BAD_TS_RECV: Final = 8
F_MAYBE_BAD_BOOK: Final = 4
# tapestream's own, in a bit Databento leaves unused, on T records of its own publishers only:
# a trade that counts in volume and sets no price (a vendor's sale condition; tables/bars.py).
F_VOLUME_ONLY: Final = 2

ACTIONS: Final = "ACMRTFN"
SIDES: Final = "BAN"
ACTION_CODES: Final = frozenset(ord(a) for a in ACTIONS)
SIDE_CODES: Final = frozenset(ord(s) for s in SIDES)
# Indexed by a byte: is it a valid action / side? One gather checks a whole message, where
# np.isin sorted on every call.
_VALID_ACTION: Final = np.zeros(256, dtype=bool)
_VALID_ACTION[list(ACTION_CODES)] = True
_VALID_SIDE: Final = np.zeros(256, dtype=bool)
_VALID_SIDE[list(SIDE_CODES)] = True


def instrument_key(instrument_id: int) -> bytes:
    """The key of every instrument-partitioned topic and table: the id in ASCII decimal."""
    return str(instrument_id).encode()


def mbo_row(
    publisher_id: int,
    instrument_id: int,
    ts_event: int,
    ts_recv: int,
    action: int,
    side: int,
    price: int,
    size: int,
    order_id: int = 0,
    flags: int = 0,
    sequence: int = 0,
) -> tuple:
    """One record as a tuple in `MBO_DTYPE`'s field order, for `np.array(rows, MBO_DTYPE)`:
    feeds that translate another format build their records row by row."""
    return (
        MBO_LENGTH_WORDS, MBO_RTYPE, publisher_id, instrument_id, ts_event, order_id, price,
        size, flags, 0, action, side, ts_recv, 0, sequence,
    )  # fmt: skip


class OutOfRange(ValueError):
    """A row a record cannot hold; `row` is its index among the rows converted."""

    def __init__(self, row: int, detail: str) -> None:
        self.row = row
        super().__init__(detail)


def records_from_rows(rows: list[tuple]) -> np.ndarray:
    """`mbo_row` tuples as records; OutOfRange for the first value a field cannot hold (numpy's
    own OverflowError names neither the row nor the field)."""
    try:
        return np.array(rows, dtype=MBO_DTYPE)
    except OverflowError:
        for i, row in enumerate(rows):
            for name, value in zip(MBO_DTYPE.names or (), row, strict=True):
                info = np.iinfo(MBO_DTYPE[name])
                if not info.min <= value <= info.max:
                    raise OutOfRange(i, f"{name} {value} is out of its field's range") from None
        raise


def instrument_id_for(name: str) -> int:
    """A stable instrument id for a feed that has none of its own (LOBSTER, crypto venues):
    CRC-32 of the name, in 31 bits."""
    return zlib.crc32(name.encode()) & 0x7FFF_FFFF


def by_instrument(records: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(instrument, its records in stream order) for each instrument in a run of records."""
    iids = records["instrument_id"]
    if not len(records):
        return []
    if (iids == iids[0]).all():
        return [(int(iids[0]), records)]
    order = np.argsort(iids, kind="stable")
    cuts = np.flatnonzero(np.diff(iids[order])) + 1
    return [(int(iids[idx[0]]), records[idx]) for idx in np.split(order, cuts)]


def decode_records(payload: bytes | bytearray | memoryview) -> np.ndarray:
    """View a run of MBO records. Raises ValueError if it is not whole MBO records."""
    if len(payload) % MBO_SIZE:
        raise ValueError(f"payload of {len(payload)} bytes is not a whole number of MBO records")
    records = np.frombuffer(payload, dtype=MBO_DTYPE)
    bad = (records["rtype"] != MBO_RTYPE) | (records["length"] != MBO_LENGTH_WORDS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"record {i} is not MBO (rtype=0x{int(records['rtype'][i]):02x}, "
            f"length={int(records['length'][i])} words)"
        )
    return records


def validate_fields(records: np.ndarray) -> str | None:
    """Return why a run of MBO records is malformed, or None if every field is in range."""
    for field, valid in (("action", _VALID_ACTION), ("side", _VALID_SIDE)):
        codes = records[field]
        ok = valid[codes]
        if not ok.all():
            i = int(np.argmin(ok))
            return f"record {i} has unknown {field} {bytes([codes[i]])!r}"
    return None


def empty_records(n: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=MBO_DTYPE)
    out["length"] = MBO_LENGTH_WORDS
    out["rtype"] = MBO_RTYPE
    return out


class MalformedMessage(ValueError):
    """A raw-topic message that is not a run of MBO records of its key's instrument.

    `kind` is a short fixed label (for metrics); the message says exactly what is wrong.
    """

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        super().__init__(detail)


def key_instrument(key: bytes | None) -> int:
    """The instrument a raw-topic key names; MalformedMessage unless the key is the id exactly as
    `instrument_key` writes it: int() also reads b"05", b" 5" or b"+5", which the producer's
    partitioner hashes to another partition than b"5", splitting the instrument's state."""
    try:
        iid = int(key or b"")
    except ValueError:
        iid = -1
    if iid < 0 or key != instrument_key(iid):
        raise MalformedMessage("bad_key", f"key {key!r} is not an instrument id")
    return iid


def parse_message(key: bytes | None, payload: bytes | None) -> np.ndarray:
    """Records of one raw-topic message, checked against its key; raises MalformedMessage."""
    if not payload:
        raise MalformedMessage("empty", "message has no payload")
    iid = key_instrument(key)
    try:
        records = decode_records(payload)
    except ValueError as exc:
        kind = "bad_length" if len(payload) % MBO_SIZE else "not_mbo"
        raise MalformedMessage(kind, str(exc)) from None
    problem = validate_fields(records)
    if problem:
        raise MalformedMessage("bad_field", problem)
    wrong = records["instrument_id"] != iid
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise MalformedMessage(
            "key_mismatch",
            f"record {i} is instrument {int(records['instrument_id'][i])}, key says {iid}",
        )
    return records
