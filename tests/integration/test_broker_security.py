"""Every client reaches the broker through its SASL/SCRAM and TLS listeners with nothing but the
settings from the environment: a real worker (Faust's consumer, producer, changelogs and topic
creation), replay (its producer and admin client) and the control commands; the password is in
no log or output; a wrong one is refused with a clear error. The listeners and their credentials
are made by deploy/local/kafka.sh."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from app import kafka
from app.settings import Settings, load_settings
from load_tests.gen_mbo import GenConfig, write
from tests.integration.conftest import BOOTSTRAP, ROOT, Deployment, wait_for

RECORDS = 20_000


@pytest.fixture(scope="module")
def secured(broker: str) -> dict[str, str]:
    """The local broker's secured listeners, its SASL user and the CA of its TLS listener."""
    if broker != BOOTSTRAP or not broker.startswith("127.0.0.1:"):
        pytest.skip("the secured listeners are the local broker's (deploy/local/kafka.sh)")
    out = subprocess.run(
        ["bash", str(ROOT / "deploy/local/kafka.sh"), "secure"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = dict(line.split("=", 1) for line in out.split())
    creds = Path(info["CREDENTIALS_FILE"]).read_text().split()
    return {**info, **dict(line.split("=", 1) for line in creds)}


def _listener(secured: dict[str, str], kind: str) -> dict[str, str]:
    if kind == "scram":
        return {
            "KAFKA_BROKER": f"kafka://{secured['SASL_BOOTSTRAP']}",
            "TAPESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "TAPESTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "TAPESTREAM_KAFKA_USERNAME": secured["TAPESTREAM_KAFKA_USERNAME"],
            "TAPESTREAM_KAFKA_PASSWORD": secured["TAPESTREAM_KAFKA_PASSWORD"],
        }
    return {
        "KAFKA_BROKER": f"kafka://{secured['SSL_BOOTSTRAP']}",
        "TAPESTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
        "TAPESTREAM_KAFKA_CA_FILE": secured["CA_FILE"],
    }


@pytest.mark.parametrize("kind", ["scram", "tls"])
def test_a_worker_replay_and_control_through_a_secured_listener(
    deployment: Deployment,
    secured: dict[str, str],
    tmp_path: Path,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deployment.base_env.update(_listener(secured, kind))
    path = tmp_path / "small.mbo.dbn.zst"
    write(path, GenConfig(records=RECORDS, instruments=4, events_per_second=2_000))
    w = deployment.worker()
    replay = deployment.replay(path, "--max")
    _, replay_err = replay.communicate(timeout=120)
    assert replay.returncode == 0, replay_err
    wait_for(lambda: w.get("/instruments/")["records"] == RECORDS, 60, "every record counted")
    run = deployment.cli("config", "set", "signal.z_net", "4.5")
    assert run.returncode == 0, run.stderr
    wait_for(
        lambda: w.get("/config/")["settings"]["signal.z_net"]["value"] == 4.5,
        30,
        "the worker to apply the setting from the control topic",
    )
    if kind == "scram":
        password = secured["TAPESTREAM_KAFKA_PASSWORD"]
        for text in (w.log_path.read_text(), replay_err.decode(), run.stdout, run.stderr):
            assert password not in text

        # A wrong password: refused at once and said so, the password in no message.
        settings = load_settings(deployment.env(TAPESTREAM_KAFKA_PASSWORD="not-the-password-0123"))
        with (
            caplog.at_level(logging.ERROR, logger="aiokafka"),
            pytest.raises(KafkaConnectionError) as refused,
        ):
            asyncio.run(_connect(settings))
        said = caplog.text + str(refused.value)
        assert "not-the-password-0123" not in said
        assert "Authentication failed" in said, said


async def _connect(settings: Settings) -> None:
    producer = kafka.producer(settings)
    try:
        await producer.start()
    finally:
        await producer.stop()
