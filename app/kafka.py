"""Every Kafka client tapestream makes, connected the same way: the broker's addresses, TLS and
SASL from the settings (TAPESTREAM_KAFKA_*, docs/configuration.md#broker-security). The worker's
own clients get the same through Faust's `broker_credentials`; everything else (replay, the
sources, the control topic, the lake, the feeds of the web views) builds its clients here.

The password lives in the settings as a SecretStr and goes to the client alone: no repr, log or
error message shows it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from app.backoff import Backoff
from app.settings import Settings

log = logging.getLogger(__name__)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL: the system's trust store, or the CA file given;
    a client certificate when one is given (mutual TLS)."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ca = str(settings.kafka_ca_file) if settings.kafka_ca_file else None
    ctx = ssl.create_default_context(cafile=ca)
    if settings.kafka_cert_file is not None and settings.kafka_key_file is not None:
        ctx.load_cert_chain(str(settings.kafka_cert_file), str(settings.kafka_key_file))
    return ctx


def client_options(settings: Settings) -> dict[str, Any]:
    """What every aiokafka client of this deployment is given."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        options["ssl_context"] = ctx
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_username
        options["sasl_plain_password"] = settings.kafka_password.get_secret_value()
    return options


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_options(settings), **options)


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **client_options(settings), **options)


def admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings), **options)


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The same for the worker's Faust app (its consumer, producer and topic creation)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    ctx = ssl_context(settings)
    if protocol == "SSL":
        assert ctx is not None
        return SSLCredentials(ctx)
    return SASLCredentials(
        username=settings.kafka_username,
        password=settings.kafka_password.get_secret_value(),
        ssl_context=ctx,
        mechanism=settings.kafka_sasl_mechanism,
    )


class BrokerUnreachable(Exception):
    pass


async def wait_for_broker(settings: Settings, limit_s: float) -> None:
    """Return once the broker answers a metadata request; retry with backoff, and give up
    after `limit_s` seconds. A worker (re)started while the broker restarts would otherwise
    exit at once: Faust's start-up makes one attempt (seen in the chaos run)."""
    deadline = time.monotonic() + limit_s
    backoff = Backoff(0.5, 10.0)
    never = asyncio.Event()
    attempt = 0
    while True:
        attempt += 1
        client = admin(settings, request_timeout_ms=10_000)
        try:
            await client.start()
            if attempt > 1:
                log.warning("the broker answers after %d attempts", attempt)
            return
        except Exception as exc:  # aiokafka raises several kinds for a broker away
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnreachable(
                    f"no broker at {settings.bootstrap_servers} after {limit_s:.0f} s "
                    f"(TAPESTREAM_BROKER_WAIT): {type(exc).__name__}: {exc}"
                ) from exc
            log.warning(
                "waiting for the broker at %s (%.0f s left): %s",
                settings.bootstrap_servers,
                left,
                type(exc).__name__,
            )
        finally:
            await client.close()
        await backoff.wait(never)
