"""Instrument definitions as they travel on the raw topic: Databento `InstrumentDefMsg`
records in DBN version 3 layout (520 bytes each), keyed like MBO by instrument id.

A definition goes to its instrument's partition before the instrument's MBO (replay and
backfill read definition files first; a live Databento session subscribed to both schemas sends
them first too), so every worker knows an instrument's definition from the same point of its
stream on, whatever the pace or a restart. Only options' definitions change anything today:
they place an option in its aggregation groups (tables/options.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import databento_dbn

from models.mbo import MalformedMessage, key_instrument

DEFINITION_RTYPE: Final = 0x13
DBN_VERSION: Final = 3
DEFINITION_SIZE: Final = 520  # an InstrumentDefMsg in DBN version 3


def is_dbn_panic(exc: BaseException) -> bool:
    """databento_dbn panics on some malformed input (a record shorter than its type's layout);
    pyo3 raises that as PanicException, a BaseException that no `except Exception` stops: it
    would end the agent or the command that met it."""
    return type(exc).__name__ == "PanicException"


def dbn_call(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), a databento_dbn decode: ValueError for input it panics on."""
    try:
        return fn(*args)
    except BaseException as exc:
        if is_dbn_panic(exc):
            raise ValueError(f"undecodable DBN ({str(exc).splitlines()[0]})") from None
        raise


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
    iid = key_instrument(key)
    # Framed here, before the decoder: each record a whole v3 definition by its header
    if len(payload) % DEFINITION_SIZE:
        whole = len(payload) // DEFINITION_SIZE * DEFINITION_SIZE
        raise MalformedMessage(
            "bad_definition",
            f"{len(payload) - whole} of {len(payload)} bytes are not whole definition records",
        )
    for i in range(0, len(payload), DEFINITION_SIZE):
        length, rtype = payload[i] * 4, payload[i + 1]
        if length != DEFINITION_SIZE or rtype != DEFINITION_RTYPE:
            raise MalformedMessage(
                "bad_definition",
                f"record {i // DEFINITION_SIZE} is not a v3 definition "
                f"(rtype=0x{rtype:02x}, length={length} bytes)",
            )
    decoder = databento_dbn.DBNDecoder(has_metadata=False, input_version=DBN_VERSION)
    try:
        decoder.write(bytes(payload))
        records = dbn_call(decoder.decode)
    except Exception as exc:
        raise MalformedMessage("bad_definition", f"not DBN v3 definitions: {exc}") from None
    for i, r in enumerate(records):
        if not isinstance(r, databento_dbn.InstrumentDefMsg):
            raise MalformedMessage("bad_definition", f"record {i} is {type(r).__name__}")
        if r.instrument_id != iid:
            raise MalformedMessage(
                "key_mismatch", f"definition {i} is instrument {r.instrument_id}, key says {iid}"
            )
    return records
