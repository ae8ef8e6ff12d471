"""Runtime settings (tables/runtime_config.py): what `config set` accepts and refuses."""

from __future__ import annotations

import re

import pytest

from tables.patterns import PatternConfig
from tables.runtime_config import KEYS, RuntimeConfig, parse
from tables.signals import SignalConfig


def test_values_parse_or_are_refused_with_the_rule() -> None:
    assert parse("signal.z_volume", "2.5") == 2.5
    assert parse("signal.volume_floor", "0") == 0
    assert parse("filter.instruments", "5, 7") == "5,7"
    for key, text, rule in (
        ("signal.z_volume", "0", "a number > 0"),
        ("signal.volume_floor", "1.5", "an integer >= 0"),
        ("pattern.rsi_high", "100", "a number in (0, 100)"),
        ("filter.instruments", "5,x", "instrument ids"),
        ("signal.cooldown", "inf", "finite"),
        ("signal.z_net", "nan", "a number > 0"),
    ):
        with pytest.raises(ValueError, match=re.escape(rule)):
            parse(key, text)
    with pytest.raises(ValueError, match="unknown setting"):
        parse("signal.nope", "1")


def test_a_change_keeps_the_rest_and_the_whole_must_hold() -> None:
    base = RuntimeConfig(SignalConfig(), PatternConfig())
    assert set(base.values()) == set(KEYS)
    changed = base.with_value("signal.cooldown", 60.0)
    assert changed.signal.cooldown_ns == 60_000_000_000
    assert changed.values() == {**base.values(), "signal.cooldown": 60.0}
    with pytest.raises(ValueError):
        base.with_value("pattern.rsi_low", 75.0)  # above the high line
    only = base.with_value("filter.instruments", "5,7")
    assert only.publishes(5) and not only.publishes(6) and base.publishes(6)
    assert only.with_value("filter.instruments", "").publishes(6)
