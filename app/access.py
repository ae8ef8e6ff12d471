"""Who may use a worker's web server: bearer tokens with a reader or an operator role (no Faust
here; agents/access.py applies it to every request).

Off while no token is configured. The web server is bound to 127.0.0.1 by default, so only this
machine reaches it. To expose it (`TAPESTREAM_WEB_HOST` not a loopback address), configure
tokens: a worker refuses to start exposed without them, unless `TAPESTREAM_WEB_INSECURE=1` says
that something in front of it (a proxy, a private network) decides who gets in.

    TAPESTREAM_READ_TOKENS       comma-separated: every GET view, /metrics and the WebSocket feed
    TAPESTREAM_OPERATOR_TOKENS   comma-separated: what readers may, and changing runtime settings

Tokens are read from the environment here and nowhere else, compared in constant time, and
never logged or echoed. A request presents one as `Authorization: Bearer <token>`; a browser's
WebSocket, which cannot set that header, as the subprotocol `bearer.<token>`. `/health` and
`/ready` stay open for probes, and so do reads of the dashboard's page and files (`/`,
`/dashboard/<file>`), which hold no data, for a browser's navigation cannot present a token
either; `/ingest/ticks` has its own token (app/tick_ingest.py). Routed requests carry the
caller's header on to the worker that owns the key, so every worker must be given the same
tokens, and a worker trusts the others of its consumer group with them: the broker is the
boundary of trust. Without tokens (and without `TAPESTREAM_WEB_INSECURE=1`) a
request must name a loopback host and a browser's page must come from one, so that a web page
on this machine cannot reach the worker through a name of its own (DNS rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

READER, OPERATOR = "reader", "operator"
READ_VARIABLE = "TAPESTREAM_READ_TOKENS"
OPERATOR_VARIABLE = "TAPESTREAM_OPERATOR_TOKENS"
INSECURE_VARIABLE = "TAPESTREAM_WEB_INSECURE"
OPEN_PATHS = frozenset({"/health", "/ready"})
DASHBOARD_PAGE = "/"
# The dashboard's files: one plain name of a served type, so no path that routes elsewhere.
DASHBOARD_FILES = re.compile(r"/dashboard/[A-Za-z0-9_-]+\.(?:html|js|css)")
WS_PATH = "/ws"
OWN_AUTH_PATHS = frozenset({"/ingest/ticks"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WS_PROTOCOL_PREFIX = "bearer."
MIN_TOKEN_CHARS = 16


class AccessError(ValueError):
    pass


@dataclass(frozen=True)
class Refusal:
    status: int  # 401: no token or an unknown one; 403: a reader asking to change something
    error: str


def read_tokens(env: Mapping[str, str], name: str) -> tuple[bytes, ...]:
    """The comma-separated tokens of variable `name`; AccessError (naming the variable, never
    the token) for one too short or with spaces or control characters."""
    out = []
    for t in env.get(name, "").split(","):
        t = t.strip()
        if not t:
            continue
        if len(t) < MIN_TOKEN_CHARS or not t.isprintable() or " " in t:
            # the message names the variable, never the token
            raise AccessError(
                f"{name}: a token must be at least {MIN_TOKEN_CHARS} printable characters "
                "with no spaces"
            )
        out.append(t.encode())
    return tuple(out)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Request:
    """What the rules look at."""

    method: str
    path: str
    authorization: str | None = None
    ws_protocols: str | None = None  # Sec-WebSocket-Protocol
    host: str | None = None  # the Host header
    origin: str | None = None  # the Origin header (browsers send it)


class Access:
    def __init__(
        self,
        readers: tuple[bytes, ...] = (),
        operators: tuple[bytes, ...] = (),
        insecure: bool = False,
    ) -> None:
        self._roles = [(t, READER) for t in readers] + [(t, OPERATOR) for t in operators]
        self.insecure = insecure

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Access:
        """The tokens configured; AccessError for a bad one."""
        return cls(
            read_tokens(env, READ_VARIABLE),
            read_tokens(env, OPERATOR_VARIABLE),
            env.get(INSECURE_VARIABLE) == "1",
        )

    def exposure_problem(self, bind: str) -> str | None:
        """Why a worker bound to `bind` must not serve: beyond this machine with no tokens."""
        if self.on or self.insecure or _is_loopback(bind):
            return None
        return (
            f"the web server is bound to {bind}, beyond this machine, with no tokens: set "
            f"{READ_VARIABLE} and {OPERATOR_VARIABLE}, or {INSECURE_VARIABLE}=1 if something "
            "in front of it decides who gets in"
        )

    @property
    def on(self) -> bool:
        return bool(self._roles)

    def role_of(self, token: str) -> str | None:
        role = None
        for known, r in self._roles:  # every one compared: the time says nothing of which
            if same_token(token, known) and role != OPERATOR:
                role = r
        return role

    def check(self, r: Request) -> Refusal | None:
        """None if the request may go on, else why not."""
        if not self.on:
            return None if self.insecure else _same_machine(r)
        if r.path in OPEN_PATHS or r.path in OWN_AUTH_PATHS or _dashboard_read(r):
            return None
        token = bearer(r.authorization)
        if token is None and r.path == WS_PATH:
            token = _from_protocols(r.ws_protocols)
        if token is None:
            return Refusal(401, "a bearer token is required (Authorization: Bearer ...)")
        role = self.role_of(token)
        if role is None:
            return Refusal(401, "the token is not one this worker accepts")
        if r.method.upper() not in READ_METHODS and role != OPERATOR:
            return Refusal(403, "changing anything takes an operator token")
        return None


def _dashboard_read(r: Request) -> bool:
    if r.method.upper() not in READ_METHODS:
        return False
    return r.path == DASHBOARD_PAGE or DASHBOARD_FILES.fullmatch(r.path) is not None


def _same_machine(r: Request) -> Refusal | None:
    """Without tokens, only this machine's own clients: a request for another host name (a
    web page's DNS rebinding) or a browser's WebSocket from another site is refused."""
    if r.host is not None and not _is_loopback(_hostname(r.host)):
        return Refusal(403, "without tokens this worker serves requests for 127.0.0.1 only")
    if r.origin and r.origin != "null" and not _is_loopback(_hostname(r.origin)):
        return Refusal(403, "without tokens this worker serves pages of this machine only")
    return None


def _hostname(value: str) -> str:
    """`host[:port]`, `[v6]:port` or an origin URL, to the bare host name."""
    value = value.split("://", 1)[-1].split("/", 1)[0]
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def same_token(given: str, known: bytes) -> bool:
    """In constant time. A header's bytes that are not UTF-8 reach here as surrogates, which
    encode back to themselves rather than fail."""
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), known)


def _from_protocols(header: str | None) -> str | None:
    for p in (header or "").split(","):
        p = p.strip()
        if p.startswith(WS_PROTOCOL_PREFIX) and len(p) > len(WS_PROTOCOL_PREFIX):
            return p[len(WS_PROTOCOL_PREFIX) :]
    return None
