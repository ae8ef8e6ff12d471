"""Alert channels and routes, from a TOML file; secrets (webhook URLs, SMTP passwords) from the
environment variables the file names, never from the file itself.

    [channels.desk]                       # a Slack incoming webhook
    type = "slack"
    url_env = "TAPESTREAM_SLACK_DESK"     # the variable that holds the webhook URL
    per_minute = 30                       # at most this many messages a minute (default 60)

    [channels.hook]                       # any HTTP endpoint: the signal as JSON, POSTed
    type = "webhook"
    url_env = "TAPESTREAM_HOOK_URL"

    [channels.ops]                        # email
    type = "smtp"
    host = "smtp.example.com"
    port = 587
    starttls = true
    from = "tapestream@example.com"
    to = ["desk@example.com"]
    user_env = "TAPESTREAM_SMTP_USER"     # optional, with password_env
    password_env = "TAPESTREAM_SMTP_PASSWORD"

    [[routes]]                            # a signal goes to every channel of every route it
    channels = ["desk", "ops"]            # matches (once per channel)
    kinds = ["ifd", "options_flow"]       # optional filters; all of them must hold
    instruments = [1000, 1001]
    directions = ["BUY"]
    min_confidence = 0.6
    min_strength = "moderate"             # weak < moderate < strong

A signal without a strength or confidence (the pattern kinds) passes no `min_*` filter.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

TYPES = ("slack", "webhook", "smtp")
STRENGTHS = {"weak": 0, "moderate": 1, "strong": 2}


class AlertConfigError(ValueError):
    """The alert configuration cannot be used; the message names the entry and the rule."""


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    per_minute: float = 60.0
    url: str = ""  # slack and webhook: from the environment
    host: str = ""
    port: int = 25
    starttls: bool = False
    sender: str = ""
    to: tuple[str, ...] = ()
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never a secret in a log line or a traceback
        return f"Channel({self.name!r}, {self.type})"


@dataclass(frozen=True)
class Route:
    channels: tuple[str, ...]
    kinds: frozenset[str] | None = None
    instruments: frozenset[int] | None = None
    directions: frozenset[str] | None = None
    min_confidence: float | None = None
    min_strength: int | None = None

    def matches(self, signal: Mapping[str, Any]) -> bool:
        if self.kinds is not None and signal.get("kind") not in self.kinds:
            return False
        if self.instruments is not None and signal.get("instrument_id") not in self.instruments:
            return False
        if self.directions is not None and signal.get("direction") not in self.directions:
            return False
        if self.min_confidence is not None:
            conf = signal.get("confidence")
            if not isinstance(conf, int | float) or conf < self.min_confidence:
                return False
        if self.min_strength is not None:
            rank = STRENGTHS.get(signal.get("strength") or "")
            if rank is None or rank < self.min_strength:
                return False
        return True


@dataclass(frozen=True)
class AlertConfig:
    channels: dict[str, Channel]
    routes: list[Route] = field(default_factory=list)

    def destinations(self, signal: Mapping[str, Any]) -> list[str]:
        """The channels a signal goes to, each once, in the order the routes name them."""
        out: dict[str, None] = {}
        for r in self.routes:
            if r.matches(signal):
                out.update(dict.fromkeys(r.channels))
        return list(out)


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> AlertConfig:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise AlertConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AlertConfigError(f"{path}: not TOML ({exc})") from None
    return parse(doc, os.environ if environ is None else environ)


def parse(doc: Mapping[str, Any], environ: Mapping[str, str]) -> AlertConfig:
    raw_channels = doc.get("channels")
    if not isinstance(raw_channels, dict) or not raw_channels:
        raise AlertConfigError("[channels] must name at least one channel")
    channels = {n: _channel(n, c, environ) for n, c in raw_channels.items()}
    raw_routes = doc.get("routes", [])
    if not isinstance(raw_routes, list) or not raw_routes:
        raise AlertConfigError("[[routes]] must list at least one route")
    routes = [_route(i, r, channels) for i, r in enumerate(raw_routes)]
    unknown = set(doc) - {"channels", "routes"}
    if unknown:
        raise AlertConfigError(f"unknown section {sorted(unknown)[0]!r} (channels, routes)")
    return AlertConfig(channels, routes)


def _secret(where: str, spec: Mapping[str, Any], key: str, environ: Mapping[str, str]) -> str:
    var = spec.get(key)
    if not isinstance(var, str) or not var:
        raise AlertConfigError(f"{where}: {key} names the environment variable with the secret")
    value = environ.get(var)
    if not value:
        raise AlertConfigError(f"{where}: environment variable {var} is not set")
    return value


def _channel(name: str, spec: Any, environ: Mapping[str, str]) -> Channel:
    where = f"channels.{name}"
    if not isinstance(spec, dict):
        raise AlertConfigError(f"{where} must be a table")
    kind = spec.get("type")
    if kind not in TYPES:
        raise AlertConfigError(f"{where}: type must be one of {', '.join(TYPES)}, not {kind!r}")
    per_minute = spec.get("per_minute", 60)
    if not isinstance(per_minute, int | float) or per_minute <= 0:
        raise AlertConfigError(f"{where}: per_minute must be a number > 0")
    if any(k in spec for k in ("url", "password", "user")):
        raise AlertConfigError(
            f"{where}: secrets come from the environment (url_env, user_env, password_env)"
        )
    if kind in ("slack", "webhook"):
        url = _secret(where, spec, "url_env", environ)
        if not url.startswith(("http://", "https://")):
            raise AlertConfigError(f"{where}: the URL in {spec['url_env']} is not http(s)")
        return Channel(name, kind, float(per_minute), url=url)
    to = spec.get("to")
    if isinstance(to, str):
        to = [to]
    if not (isinstance(to, list) and to and all(isinstance(t, str) and "@" in t for t in to)):
        raise AlertConfigError(f"{where}: to must list one or more email addresses")
    sender = spec.get("from")
    if not isinstance(sender, str) or "@" not in sender:
        raise AlertConfigError(f"{where}: from must be an email address")
    host, port = spec.get("host"), spec.get("port", 25)
    if not isinstance(host, str) or not host:
        raise AlertConfigError(f"{where}: host is required")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise AlertConfigError(f"{where}: port must be 1-65535")
    user = password = None
    if "user_env" in spec or "password_env" in spec:
        user = _secret(where, spec, "user_env", environ)
        password = _secret(where, spec, "password_env", environ)
    return Channel(
        name,
        kind,
        float(per_minute),
        host=host,
        port=port,
        starttls=bool(spec.get("starttls", False)),
        sender=sender,
        to=tuple(to),
        user=user,
        password=password,
    )


def _strings(where: str, value: Any) -> frozenset[str]:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise AlertConfigError(f"{where} must be a list of strings")
    return frozenset(value)


def _route(i: int, spec: Any, channels: dict[str, Channel]) -> Route:
    where = f"routes[{i}]"
    if not isinstance(spec, dict):
        raise AlertConfigError(f"{where} must be a table")
    names = spec.get("channels")
    if not (isinstance(names, list) and names):
        raise AlertConfigError(f"{where}: channels must list one or more channels")
    for n in names:
        if n not in channels:
            raise AlertConfigError(f"{where}: no channel {n!r}")
    known = {"channels", "kinds", "instruments", "directions", "min_confidence", "min_strength"}
    unknown = set(spec) - known
    if unknown:
        raise AlertConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    route = Route(tuple(names))
    if "kinds" in spec:
        route = replace(route, kinds=_strings(f"{where}.kinds", spec["kinds"]))
    if "instruments" in spec:
        ids = spec["instruments"]
        if not (isinstance(ids, list) and all(isinstance(x, int) for x in ids)):
            raise AlertConfigError(f"{where}.instruments must be a list of instrument ids")
        route = replace(route, instruments=frozenset(ids))
    if "directions" in spec:
        dirs = _strings(f"{where}.directions", spec["directions"])
        if not dirs <= {"BUY", "SELL"}:
            raise AlertConfigError(f"{where}.directions are BUY and/or SELL")
        route = replace(route, directions=dirs)
    if "min_confidence" in spec:
        c = spec["min_confidence"]
        if not isinstance(c, int | float) or not 0 <= c <= 1:
            raise AlertConfigError(f"{where}.min_confidence must be from 0 to 1")
        route = replace(route, min_confidence=float(c))
    if "min_strength" in spec:
        s = spec["min_strength"]
        if s not in STRENGTHS:
            raise AlertConfigError(f"{where}.min_strength is one of {', '.join(STRENGTHS)}")
        route = replace(route, min_strength=STRENGTHS[s])
    return route
