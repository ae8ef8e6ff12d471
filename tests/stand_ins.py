"""Stand-in Slack, webhook and SMTP servers on 127.0.0.1 for the alert tests: they record what
they receive and answer with the statuses a test scripts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

import orjson
from aiohttp import web


@dataclass
class StandIn:
    """What one stand-in received, and the statuses it answers next (then 200 / 250)."""

    received: list[Any] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    port: int = 0

    def next_status(self, ok: int) -> int:
        return self.script.pop(0) if self.script else ok


class ThreadLoop:
    """An event loop in a thread of its own, for servers a synchronous test talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


async def _http(stand_in: StandIn, slack: bool) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        status = stand_in.next_status(200)
        if status == 200:
            stand_in.received.append(orjson.loads(body))
        headers = {"Retry-After": "0.1"} if status == 429 else {}
        text = "ok" if status == 200 else ("invalid_payload" if slack else "no")
        return web.Response(status=status, text=text, headers=headers)

    server = web.Application()
    server.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stand_in.port = runner.addresses[0][1]
    return runner


async def _smtp(stand_in: StandIn) -> asyncio.AbstractServer:
    """Enough of SMTP for smtplib: EHLO, MAIL, RCPT, DATA, QUIT; the scripted code answers
    the end of DATA."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stand-in ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250 stand-in\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    writer.write(b"250 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    data = b""
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        data += chunk
                    code = stand_in.next_status(250)
                    if code == 250:
                        stand_in.received.append(message_from_bytes(data))
                    writer.write(f"{code} {'ok' if code == 250 else 'no'}\r\n".encode())
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"502 not here\r\n")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    stand_in.port = server.sockets[0].getsockname()[1]
    return server


@contextmanager
def stand_ins() -> Iterator[dict[str, StandIn]]:
    """Slack, webhook and SMTP stand-ins, running until the block ends."""
    loop = ThreadLoop()
    got = {"slack": StandIn(), "webhook": StandIn(), "smtp": StandIn()}
    runners = [loop.run(_http(got["slack"], True)), loop.run(_http(got["webhook"], False))]
    smtp = loop.run(_smtp(got["smtp"]))
    try:
        yield got
    finally:
        for r in runners:
            loop.run(r.cleanup())
        smtp.close()
        loop.close()


def config_text(ports: dict[str, int]) -> tuple[str, dict[str, str]]:
    """An alert configuration for stand-ins on these ports (slack, webhook, smtp), and the
    environment holding its secrets."""
    env = {
        "T_SLACK_URL": f"http://127.0.0.1:{ports['slack']}/services/T000/B000/SECRET",
        "T_HOOK_URL": f"http://127.0.0.1:{ports['webhook']}/hook",
    }
    text = f"""
[channels.desk]
type = "slack"
url_env = "T_SLACK_URL"
per_minute = 6000

[channels.hook]
type = "webhook"
url_env = "T_HOOK_URL"
per_minute = 6000

[channels.mail]
type = "smtp"
host = "127.0.0.1"
port = {ports["smtp"]}
from = "tapestream@example.com"
to = ["desk@example.com"]
per_minute = 6000

[[routes]]
channels = ["desk", "hook"]
kinds = ["ifd"]

[[routes]]
channels = ["mail"]
min_strength = "moderate"
"""
    return text, env


def ports(got: dict[str, StandIn]) -> dict[str, int]:
    return {name: s.port for name, s in got.items()}
