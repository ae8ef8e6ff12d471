"""The compose file cannot run here (no Docker engine); keep it valid and in step with settings."""

from __future__ import annotations

import yaml

from app.settings import load_settings
from tests.conftest import ROOT


def test_compose_services_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redpanda", "worker", "replay"}
    for name in ("worker", "replay"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        s = load_settings(env)  # every value the compose file sets is a valid setting
        assert s.bootstrap_servers == "redpanda:9092"
    rp = " ".join(services["redpanda"]["command"])
    assert "auto_create_topics_enabled=false" in rp and "enable_transactions=true" in rp
    assert services["worker"]["ports"] == ["127.0.0.1:6066:6066"]
    assert services["replay"]["command"][:4] == ["faust", "-A", "app", "replay"]


def test_local_broker_script_keeps_transactions_and_topics_explicit() -> None:
    script = (ROOT / "deploy/local/kafka.sh").read_text()
    for line in (
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "offsets.topic.replication.factor=1",
        "auto.create.topics.enable=false",
        "listeners=PLAINTEXT://127.0.0.1:$port",
    ):
        assert line in script
