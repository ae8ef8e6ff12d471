"""Sending one signal to one alert channel: Slack incoming webhooks, generic webhooks and SMTP.

Each send either returns (delivered) or raises `Temporary` (worth retrying: a timeout, a refused
connection, HTTP 408, 429 or 5xx, an SMTP 4xx reply) or `Permanent` (retrying cannot help: any
other HTTP 4xx, an SMTP 5xx reply). Reasons name the channel and the status, never the URL or a
credential: a webhook URL is a secret.
"""

from __future__ import annotations

import asyncio
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiohttp
import orjson

from app.alert_config import Channel

TIMEOUT = aiohttp.ClientTimeout(total=10)


class Temporary(Exception):
    """A failure worth retrying; `retry_after` (seconds) when the other side said."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Permanent(Exception):
    """A failure retrying cannot help."""


def _price(p: Any) -> str:
    return f"{p / 1e9:.9g}" if isinstance(p, int) else "?"


def _when(ns: Any) -> str:
    if not isinstance(ns, int):
        return "?"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def summary(signal: dict[str, Any]) -> str:
    """One line a person reads: what fired, where, how sure, and the numbers behind it."""
    who = signal.get("group") or signal.get("instrument_id")
    parts = [f"{signal.get('direction', '?')} {signal.get('kind', '?')} on {who}"]
    if "confidence" in signal:
        parts.append(f"confidence {signal['confidence']:.2f} ({signal.get('strength', '?')})")
    for z in ("z_vol", "z_net", "z_flow"):
        if isinstance(signal.get(z), int | float):
            parts.append(f"{z} {signal[z]:.1f}")
    if "last_price" in signal or "close" in signal:
        parts.append(f"price {_price(signal.get('last_price', signal.get('close')))}")
    parts.append(f"window {signal.get('interval', '?')} from {_when(signal.get('start'))}")
    return ", ".join(parts) + f" [id {signal.get('id', '?')}]"


def _http_outcome(channel: Channel, status: int, headers: Any) -> None:
    if 200 <= status < 300:
        return
    reason = f"{channel.name}: HTTP {status}"
    if status in (408, 429) or status >= 500:
        retry = headers.get("Retry-After")
        try:
            after = float(retry) if retry is not None else None
        except ValueError:
            after = None
        raise Temporary(reason, after)
    raise Permanent(reason)


async def _post(session: aiohttp.ClientSession, channel: Channel, body: bytes) -> None:
    try:
        async with session.post(
            channel.url, data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
        ) as resp:
            await resp.read()
            _http_outcome(channel, resp.status, resp.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The exception's text may hold the URL: only its type goes into the reason.
        raise Temporary(f"{channel.name}: {type(exc).__name__}") from None


def _mail(channel: Channel, signal: dict[str, Any]) -> None:
    msg = EmailMessage()
    who = signal.get("group") or signal.get("instrument_id")
    msg["Subject"] = (
        f"tapestream: {signal.get('direction', '?')} {signal.get('kind', '?')} on {who} "
        f"[id {signal.get('id', '?')}]"
    )
    msg["From"] = channel.sender
    msg["To"] = ", ".join(channel.to)
    msg.set_content(
        summary(signal) + "\n\n" + orjson.dumps(signal, option=orjson.OPT_INDENT_2).decode()
    )
    try:
        with smtplib.SMTP(channel.host, channel.port, timeout=10) as smtp:
            if channel.starttls:
                smtp.starttls()
            if channel.user is not None and channel.password is not None:
                smtp.login(channel.user, channel.password)
            smtp.send_message(msg)
    except smtplib.SMTPResponseException as exc:
        reason = f"{channel.name}: SMTP {exc.smtp_code}"
        if 400 <= exc.smtp_code < 500:
            raise Temporary(reason) from None
        raise Permanent(reason) from None
    except smtplib.SMTPRecipientsRefused:
        raise Permanent(f"{channel.name}: SMTP recipients refused") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise Temporary(f"{channel.name}: {type(exc).__name__}") from None


async def send(session: aiohttp.ClientSession, channel: Channel, signal: dict[str, Any]) -> None:
    """Deliver one signal to one channel, once; `Temporary` or `Permanent` if not."""
    if channel.type == "slack":
        await _post(session, channel, orjson.dumps({"text": summary(signal)}))
    elif channel.type == "webhook":
        await _post(session, channel, orjson.dumps(signal))
    else:
        await asyncio.to_thread(_mail, channel, signal)
