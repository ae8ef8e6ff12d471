"""Alerts (app/alert_config.py, alert_channels.py, alert_sink.py) with no broker: configuration
and its errors, routing, each channel against a stand-in server, and the sink's promises: at
most once per channel, retries of temporary failures, dead letters for permanent ones and for
sends a restart interrupted, and offsets committed only behind finished deliveries."""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any

import aiohttp
import pytest

from app.alert_channels import Permanent, Temporary, send, summary
from app.alert_config import AlertConfig, AlertConfigError, Channel, parse
from app.alert_sink import AlertSink
from tests.stand_ins import config_text, ports, stand_ins

SIGNAL = {
    "id": "abc123",
    "kind": "ifd",
    "direction": "BUY",
    "instrument_id": 1000,
    "confidence": 0.72,
    "strength": "moderate",
    "z_vol": 3.2,
    "z_net": 5.1,
    "interval": "5m",
    "start": 1_700_000_000_000_000_000,
    "last_price": 5_012_250_000_000,
}


ENV = {"T_SLACK_URL": "http://127.0.0.1:9/services/SECRET", "T_HOOK_URL": "http://127.0.0.1:9/h"}
TEXT, _ = config_text({"slack": 9, "webhook": 9, "smtp": 9})


def _config(env: dict[str, str] | None = None, text: str | None = None) -> AlertConfig:
    return parse(tomllib.loads(text or TEXT), env if env is not None else ENV)


def test_routes_pick_each_channel_once_and_filters_hold() -> None:
    cfg = _config()
    assert cfg.destinations(SIGNAL) == ["desk", "hook", "mail"]
    weak = {**SIGNAL, "strength": "weak"}
    assert cfg.destinations(weak) == ["desk", "hook"]
    spike = {"id": "x", "kind": "volume_spike", "direction": "SELL", "instrument_id": 1}
    assert cfg.destinations(spike) == []  # no strength: passes no min_strength


@pytest.mark.parametrize(
    ("change", "env", "error"),
    [
        ('url = "http://x"', ENV, "secrets come from the environment"),
        ("", {"T_HOOK_URL": "http://h"}, "T_SLACK_URL is not set"),
        ("", {**ENV, "T_SLACK_URL": "ftp://x"}, "not http"),
    ],
)
def test_bad_configuration_is_refused_with_the_entry_and_the_rule(
    change: str, env: dict[str, str], error: str
) -> None:
    text = TEXT.replace('url_env = "T_SLACK_URL"', f'url_env = "T_SLACK_URL"\n{change}')
    with pytest.raises(AlertConfigError, match=error):
        _config(env, text)
    for bad, why in (
        ('channels = ["nope"]', "no channel 'nope'"),
        ('channels = ["mail"]\nmin_strength = "huge"', "min_strength"),
        ('channels = ["mail"]\ndirections = ["UP"]', "BUY and/or SELL"),
        ('channels = ["mail"]\nsymbol = "ES"', "unknown key 'symbol'"),
    ):
        text = TEXT.replace('channels = ["mail"]\nmin_strength = "moderate"', bad)
        with pytest.raises(AlertConfigError, match=why):
            _config(ENV, text)


def test_a_channel_never_shows_its_secret() -> None:
    cfg = _config()
    assert "SECRET" not in repr(cfg.channels["desk"]) and "SECRET" not in str(cfg)


async def test_each_channel_against_its_stand_in() -> None:
    with stand_ins() as got:
        text, env = config_text(ports(got))
        cfg = parse(tomllib.loads(text), env)
        async with aiohttp.ClientSession() as session:
            for name in ("desk", "hook", "mail"):
                await send(session, cfg.channels[name], SIGNAL)
            got["slack"].script = [429]
            with pytest.raises(Temporary) as temp:
                await send(session, cfg.channels["desk"], SIGNAL)
            assert temp.value.retry_after == 0.1
            got["webhook"].script = [400]
            with pytest.raises(Permanent) as perm:
                await send(session, cfg.channels["hook"], SIGNAL)
            assert "SECRET" not in str(perm.value) and "/hook" not in str(perm.value)
            got["webhook"].script = [503]
            with pytest.raises(Temporary):
                await send(session, cfg.channels["hook"], SIGNAL)
            got["smtp"].script = [451]
            with pytest.raises(Temporary):
                await send(session, cfg.channels["mail"], SIGNAL)
            got["smtp"].script = [554]
            with pytest.raises(Permanent):
                await send(session, cfg.channels["mail"], SIGNAL)
            gone = Channel("gone", "webhook", url="http://127.0.0.1:9/SECRET")
            with pytest.raises(Temporary) as refused:
                await send(session, gone, SIGNAL)
            assert "SECRET" not in str(refused.value)
    assert got["slack"].received == [{"text": summary(SIGNAL)}]
    assert got["webhook"].received == [SIGNAL]
    mail = got["smtp"].received[0]
    assert mail["To"] == "desk@example.com" and "BUY ifd on 1000" in mail["Subject"]


class Recorder:
    """The sink's log, dead letters and sends, in memory; `outcomes` scripts each channel's
    next sends (an exception to raise, or None to succeed; "hang" never returns)."""

    def __init__(self, outcomes: dict[str, list[Any]] | None = None) -> None:
        self.log: list[tuple[str, dict]] = []
        self.dead: list[tuple[str, str, dict]] = []
        self.sent: list[tuple[str, str]] = []
        self.outcomes = outcomes or {}

    async def record(self, key: str, entry: dict) -> None:
        self.log.append((key, entry))

    async def dead_letter(self, kind: str, reason: str, signal: dict) -> None:
        self.dead.append((kind, reason, signal))

    async def send(self, channel: Channel, signal: dict) -> None:
        script = self.outcomes.get(channel.name, [])
        outcome = script.pop(0) if script else None
        if outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(outcome, Exception):
            raise outcome
        self.sent.append((channel.name, signal["id"]))


def _sink(rec: Recorder) -> AlertSink:
    return AlertSink(
        _config(), rec.record, rec.dead_letter, rec.send, attempts=3, base_backoff=0.01
    )


async def _settle(sink: AlertSink) -> None:
    for _ in range(200):
        if not sink.backlog() and all(p.left == 0 for dq in sink.pending.values() for p in dq):
            return
        await asyncio.sleep(0.01)


async def test_at_most_once_per_channel_with_retries_and_dead_letters() -> None:
    rec = Recorder(
        {
            "desk": [Temporary("desk: HTTP 503"), None],  # retried, then delivered
            "hook": [Permanent("hook: HTTP 400")],  # refused: dead letter, no retry
            "mail": [Temporary("mail: SMTP 451")] * 3,  # gave up after 3 attempts
        }
    )
    sink = _sink(rec)
    sink.start()
    sink.add("tp", 10, SIGNAL)
    sink.add("tp", 11, SIGNAL)  # a repeat of the same id (a redelivery)
    await _settle(sink)
    await sink.stop()
    assert rec.sent == [("desk", "abc123")]
    assert sorted((k, r.split(" (")[0]) for k, r, _ in rec.dead) == [
        ("refused", "hook: HTTP 400"),
        ("undelivered", "mail: SMTP 451"),
    ]
    states = [(k, e["state"]) for k, e in rec.log]
    assert states.count(("desk|abc123", "claimed")) == 1
    assert ("desk|abc123", "sent") in states and ("hook|abc123", "failed") in states
    assert sink.committable() == {"tp": 12}


async def test_a_claim_a_restart_interrupted_is_dead_lettered_not_sent_again() -> None:
    rec = Recorder()
    sink = _sink(rec)
    sink.start()
    await sink.recover(
        {"desk|abc123": {"state": "claimed", "signal": SIGNAL}, "hook|abc123": {"state": "sent"}}
    )
    sink.add("tp", 5, SIGNAL)
    await _settle(sink)
    await sink.stop()
    assert rec.sent == [("mail", "abc123")]  # the only channel with no entry yet
    assert [(k, s["id"]) for k, _, s in rec.dead] == [("interrupted", "abc123")]


async def test_a_stuck_channel_holds_back_only_its_own_offsets() -> None:
    rec = Recorder({"mail": ["hang"]})
    sink = _sink(rec)
    sink.start()
    sink.add("tp", 1, SIGNAL)  # goes to the stuck mail channel too
    sink.add("tp", 2, {**SIGNAL, "id": "second", "strength": "weak"})  # desk and hook only
    await asyncio.sleep(0.2)
    assert ("desk", "second") in rec.sent and ("hook", "second") in rec.sent
    assert sink.committable() == {}  # offset 1 is not finished, so nothing after it commits
    await sink.stop()


async def test_a_log_that_cannot_be_written_holds_the_offset_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = Recorder()
    failures = [ConnectionError("broker away")]

    async def record(key: str, entry: dict) -> None:
        if failures:
            raise failures.pop()
        await rec.record(key, entry)

    real_sleep = asyncio.sleep

    async def no_wait(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr("app.alert_sink.asyncio.sleep", no_wait)
    sink = AlertSink(_config(), record, rec.dead_letter, rec.send, attempts=3, base_backoff=0.01)
    sink.start()
    sink.add("tp", 3, {**SIGNAL, "strength": "weak", "kind": "volume_spike"})  # nowhere
    sink.add("tp", 4, {**SIGNAL, "strength": "weak"})  # desk and hook
    await _settle(sink)
    await sink.stop()
    assert sorted(rec.sent) == [("desk", "abc123"), ("hook", "abc123")]
    assert sink.committable() == {"tp": 5}
