"""`faust -A app alerts` against the real broker and stand-in Slack, webhook and SMTP servers:
each signal reaches each of its routes' channels once, through a channel that fails and then
recovers, with dead letters for a permanent refusal and a malformed message, and nothing twice
(neither alert nor dead letter) after a kill -9 and a restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from app.commands.alerts import LOG_TOPIC
from app.commands.replay import ensure_topic
from app.control import read_compacted
from app.settings import load_settings
from tests.conftest import ROOT
from tests.integration.conftest import Deployment, consume_all, wait_for
from tests.stand_ins import config_text, ports, stand_ins

FAUST = [sys.executable, "-m", "faust", "-A", "app"]


def _signal(n: int, kind: str = "ifd", strength: str = "strong") -> dict:
    return {
        "id": f"sig{n:04d}",
        "kind": kind,
        "direction": "BUY" if n % 2 else "SELL",
        "instrument_id": 1000 + n % 3,
        "confidence": 0.9,
        "strength": strength,
        "interval": "5m",
        "start": 1_700_000_000_000_000_000 + n * 300_000_000_000,
    }


def _produce(d: Deployment, values: list[bytes]) -> None:
    settings = load_settings(d.base_env)

    async def run() -> None:
        topic = settings.topic("signals")
        await ensure_topic(settings, topic, 4)
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        try:
            for v in values:
                await producer.send_and_wait(topic, v, key=b"1000")
        finally:
            await producer.stop()

    asyncio.run(run())


def _alerts(d: Deployment, config: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*FAUST, "alerts", "--config", str(config), "--from-beginning"],
        cwd=ROOT,
        env=d.env(**env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_alerts_reach_each_channel_once_through_failures_and_a_restart(
    deployment: Deployment, tmp_path: Path
) -> None:
    with stand_ins() as got:
        text, env = config_text(ports(got))
        config = tmp_path / "alerts.toml"
        config.write_text(text)
        log = tmp_path / "alerts.log"
        got["slack"].script = [503, 503]  # down twice, then back
        got["webhook"].script = [400]  # refuses the first one for good
        first = [_signal(n) for n in range(6)]
        weak = _signal(6, strength="weak")  # Slack and the webhook only (mail wants moderate+)
        values = [orjson.dumps(s) for s in [*first, weak]]
        values.insert(3, orjson.dumps(first[0]))  # a repeat, as at-least-once may deliver
        values.insert(5, b"not json")
        _produce(deployment, values)

        proc = _alerts(deployment, config, env, log)
        try:

            def delivered() -> bool:
                return (
                    len(got["slack"].received) == 7
                    and len(got["webhook"].received) == 6
                    and len(got["smtp"].received) == 6
                )

            settings = load_settings(deployment.base_env)

            def recorded() -> bool:
                # A stand-in counts a send before it answers, so the sink may not have written
                # the outcome yet; a kill then would leave a claim, rightly dead-lettered as
                # interrupted. The kill below is meant for a sink at rest.
                entries = asyncio.run(read_compacted(settings, settings.topic(LOG_TOPIC)))
                return delivered() and all(e["state"] != "claimed" for e in entries.values())

            wait_for(recorded, 120, "every alert delivered and its outcome recorded")
            # Kill it mid-life, restart: nothing is sent again; new signals go out once.
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            _produce(deployment, [orjson.dumps(_signal(n)) for n in (7, 8)])
            proc = _alerts(deployment, config, env, log)
            wait_for(lambda: len(got["smtp"].received) == 8, 120, "the new signals' mail")
            wait_for(lambda: len(got["slack"].received) == 9, 60, "the new signals' Slack")
            wait_for(lambda: len(got["webhook"].received) == 8, 60, "the new signals' webhook")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

    slack_ids = [m["text"].rsplit("[id ", 1)[1].rstrip("]") for m in got["slack"].received]
    assert sorted(slack_ids) == [f"sig{n:04d}" for n in range(9)]
    hook_ids = sorted(s["id"] for s in got["webhook"].received)
    assert hook_ids == [f"sig{n:04d}" for n in range(1, 9)]  # sig0000 was refused
    mail_ids = sorted(m["Subject"].rsplit("[id ", 1)[1].rstrip("]") for m in got["smtp"].received)
    assert mail_ids == [f"sig{n:04d}" for n in (0, 1, 2, 3, 4, 5, 7, 8)]

    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    dead = [
        orjson.loads(v)
        for _, v, _, _ in consume_all(bootstrap, f"{deployment.prefix}dead.letters", timeout=10)
    ]
    assert sorted((d["agent"], d["kind"]) for d in dead) == [
        ("alerts", "bad_signal"),
        ("alerts", "refused"),
    ]
    refused = next(d for d in dead if d["kind"] == "refused")
    assert refused["reason"] == "hook: HTTP 400"
    text = log.read_text(errors="replace")
    assert "SECRET" not in text and "/hook" not in text
