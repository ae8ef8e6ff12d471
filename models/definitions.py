"""Instrument definitions as they travel on the raw topic: Databento `InstrumentDefMsg`
records in DBN version 3 layout (520 bytes each), keyed like MBO by instrument id.

A definition goes to its instrument's partition before the instrument's MBO (replay and
backfill read definition files first; a live Databento session subscribed to both schemas sends
them first too), so every worker knows an instrument's definition from the same point of its
stream on, whatever the pace or a restart. Only options' definitions change anything today:
they place an option in its aggregation groups (tables/options.py).
"""

from __future__ import annotations

from typing import Any, Final

import databento_dbn

from models.mbo import MalformedMessage

DEFINITION_RTYPE: Final = 0x13
DBN_VERSION: Final = 3


def is_definition(payload: bytes | None) -> bool:
    """A raw-topic payload of definition records (by its first record's rtype)."""
    return bool(payload) and len(payload) >= 2 and payload[1] == DEFINITION_RTYPE  # type: ignore[index]


def encode(definition: Any) -> bytes:
    """A decoded definition (databento reads every DBN version into version 3) as it travels."""
    raw = bytes(definition)
    if raw[1] != DEFINITION_RTYPE or len(raw) != raw[0] * 4:
        raise ValueError(f"not a definition record (rtype 0x{raw[1]:02x})")
    return raw


def parse_definitions(key: bytes | None, payload: bytes) -> list[Any]:
    """The definitions of one raw-topic message, checked against its key; raises
    MalformedMessage."""
    try:
        iid = int(key or b"")
    except ValueError:
        raise MalformedMessage("bad_key", f"key {key!r} is not an instrument id") from None
    decoder = databento_dbn.DBNDecoder(has_metadata=False, input_version=DBN_VERSION)
    try:
        decoder.write(bytes(payload))
        records = decoder.decode()
    except Exception as exc:
        raise MalformedMessage("bad_definition", f"not DBN v3 definitions: {exc}") from None
    size = sum(len(bytes(r)) for r in records)
    if size != len(payload):
        raise MalformedMessage(
            "bad_definition",
            f"{len(payload) - size} of {len(payload)} bytes are not whole definition records",
        )
    for i, r in enumerate(records):
        if not isinstance(r, databento_dbn.InstrumentDefMsg):
            raise MalformedMessage("bad_definition", f"record {i} is {type(r).__name__}")
        if r.instrument_id != iid:
            raise MalformedMessage(
                "key_mismatch", f"definition {i} is instrument {r.instrument_id}, key says {iid}"
            )
    return records
