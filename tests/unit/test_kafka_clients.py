"""Every Kafka client is built in app/kafka.py, so the broker's security settings reach them all;
the password is given to the client and shown nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app import kafka
from app.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
SCRAM = {
    "TAPESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "TAPESTREAM_KAFKA_USERNAME": "tapestream",
    "TAPESTREAM_KAFKA_PASSWORD": "a-password-of-the-test",
}


def test_no_client_is_built_outside_the_one_place() -> None:
    built = re.compile(r"AIOKafka(Producer|Consumer|AdminClient)\(")
    places = [
        f"{p.relative_to(ROOT)}:{n}"
        for d in ("app", "agents", "pipeline")
        for p in (ROOT / d).rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if built.search(line)
    ]
    # delete_topics serves tests and benchmarks on the local broker only
    assert sorted(places) == sorted(
        [*(f"app/kafka.py:{n}" for n in _lines("app/kafka.py", built)), _delete_topics()]
    )


def _lines(path: str, pattern: re.Pattern[str]) -> list[int]:
    text = (ROOT / path).read_text().splitlines()
    return [n for n, line in enumerate(text, 1) if pattern.search(line)]


def _delete_topics() -> str:
    n = _lines("app/commands/replay.py", re.compile(r"AIOKafkaAdminClient\(bootstrap_servers="))
    assert len(n) == 1
    return f"app/commands/replay.py:{n[0]}"


def test_sasl_settings_reach_the_client_and_no_repr() -> None:
    settings = load_settings(SCRAM)
    options = kafka.client_options(settings)
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "a-password-of-the-test"
    assert "a-password-of-the-test" not in repr(settings) + str(settings.model_dump())
    credentials = kafka.faust_credentials(settings)
    assert credentials is not None and "a-password" not in repr(credentials)


def test_plaintext_is_the_default_and_tls_takes_the_ca(tmp_path: Path) -> None:
    assert kafka.client_options(load_settings({}))["security_protocol"] == "PLAINTEXT"
    assert kafka.faust_credentials(load_settings({})) is None
    with pytest.raises(SettingsError, match=r"TAPESTREAM_KAFKA_CA_FILE: .* is not a file"):
        load_settings({"TAPESTREAM_KAFKA_CA_FILE": str(tmp_path / "none.pem")})


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TAPESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "TAPESTREAM_KAFKA_USERNAME"),
        ({"TAPESTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "TAPESTREAM_KAFKA_SECURITY_PROTOCOL"),
        ({**SCRAM, "TAPESTREAM_KAFKA_SASL_MECHANISM": "GSSAPI"}, "TAPESTREAM_KAFKA_SASL_MECHANISM"),
    ],
)
def test_bad_security_settings_name_the_variable(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says) as exc:
        load_settings(env)
    assert "a-password-of-the-test" not in str(exc.value)
