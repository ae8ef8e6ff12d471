"""Raw-topic messages that are not runs of MBO records of their key's instrument."""

from __future__ import annotations

import pytest

from models.mbo import MalformedMessage, empty_records, parse_message


def _payload(iid: int = 5, n: int = 3) -> bytes:
    r = empty_records(n)
    r["instrument_id"] = iid
    r["action"] = ord("A")
    r["side"] = ord("B")
    return r.tobytes()


def test_good_message() -> None:
    assert len(parse_message(b"5", _payload())) == 3


@pytest.mark.parametrize(
    ("key", "payload", "kind", "text"),
    [
        (b"5", b"", "empty", "no payload"),
        (b"x", _payload(), "bad_key", "not an instrument id"),
        (b"5", _payload()[:-1], "bad_length", "not a whole number"),
        (b"5", b"\x0c\x01" + _payload()[2:], "not_mbo", "record 0 is not MBO"),
        (b"6", _payload(5), "key_mismatch", "record 0 is instrument 5, key says 6"),
        (b"5", _payload()[:38] + b"Z" + _payload()[39:], "bad_field", "unknown action"),
    ],
)
def test_malformed(key: bytes, payload: bytes, kind: str, text: str | None) -> None:
    with pytest.raises(MalformedMessage) as err:
        parse_message(key, payload)
    assert err.value.kind == kind
    if text:
        assert text in str(err.value)


def test_unknown_action_is_named() -> None:
    r = empty_records(2)
    r["instrument_id"] = 5
    r["action"] = [ord("A"), ord("Q")]
    r["side"] = ord("N")
    with pytest.raises(MalformedMessage, match=r"record 1 has unknown action b'Q'"):
        parse_message(b"5", r.tobytes())
