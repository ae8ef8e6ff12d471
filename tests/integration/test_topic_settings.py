"""Retention and replication of the topics tapestream creates, from the settings (the hot
tier's disk use is set when a topic is made)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import ARL_MBO_CSV, require
from tests.integration.conftest import BOOTSTRAP, Deployment, wait_for

pytestmark = pytest.mark.integration


async def _configs(names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        out: dict[str, dict[str, str]] = {}
        for response in await admin.describe_configs(resources):
            for _, _, _, name, entries in response.resources:
                out[name] = {e[0]: e[1] for e in entries}
        return out
    finally:
        await admin.close()


def test_topics_are_made_with_the_configured_retention(deployment: Deployment) -> None:
    extra = {"TAPESTREAM_RETENTION": "2d", "TAPESTREAM_RETENTION_BYTES": "1000000000"}
    deployment.base_env.update(extra)
    # Replay first: the raw topic is replay's to make (the worker's helper makes it too).
    run = deployment.cli("replay", str(require(ARL_MBO_CSV)), "--no-progress")
    assert run.returncode == 0, run.stderr
    w = deployment.worker("w1")
    wait_for(lambda: w.get("/instruments/"), 60, "the worker to take the records")
    p = deployment.prefix
    raw, bars, changelog = f"{p}mbo.raw", f"{p}bars.1m", f"{deployment.app_id}-books-changelog"
    configs = wait_for(
        lambda: (
            (c := asyncio.run(_configs([raw, bars, changelog])))
            and all("cleanup.policy" in c.get(n, {}) for n in (raw, bars, changelog))
            and c
        ),
        30,
        "the topics' configs",
    )
    for name in (raw, bars):
        assert configs[name]["retention.ms"] == str(2 * 86_400_000), name
        assert configs[name]["retention.bytes"] == "1000000000", name
        assert configs[name]["cleanup.policy"] == "delete", name
    assert configs[changelog]["cleanup.policy"] == "compact"
