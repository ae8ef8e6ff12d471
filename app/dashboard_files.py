"""The dashboard's files (app/dashboard/): which names are served, as what, with which headers.
No Faust here; agents/dashboard.py serves them at `/` and `/dashboard/{name}`.

Only a file that is in the directory, named plainly (no separator, no leading dot) and of a
served type is answered; anything else is None, which the view answers 404. So no request can
reach beyond the directory, whatever it encodes in the name.

The files hold no market data: they are open to every caller (app/access.py), and the page
takes the caller's token from its URL fragment to ask the data views and the feed.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DIRECTORY: Final = Path(__file__).with_name("dashboard")
INDEX: Final = "index.html"
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
INTERVALS_MARK: Final = "{{intervals}}"
# Everything the page loads comes from the worker itself: no CDN, and no other origin can be
# reached even by a bug. 'self' covers the same host's ws:// in the browsers of today; the
# explicit ws:/wss: keep older ones working. No framing: the page holds the token.
CSP: Final = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Revalidated on every load (cheap: the ETag answers 304), so a worker upgraded under an open
# browser never serves it yesterday's script with today's page.
CACHE_CONTROL: Final = "no-cache"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": self.content_type,
            "Cache-Control": CACHE_CONTROL,
            "ETag": self.etag,
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CSP,
            "Referrer-Policy": "no-referrer",
        }

    def fresh_for(self, if_none_match: str | None) -> bool:
        """Whether the client's cached copy (`If-None-Match`) is this one: answer 304."""
        if not if_none_match:
            return False
        return any(tag.strip() in (self.etag, "*") for tag in if_none_match.split(","))


def _asset(name: str, body: bytes) -> Asset:
    suffix = Path(name).suffix
    digest = hashlib.sha256(body).hexdigest()[:20]
    return Asset(body, CONTENT_TYPES[suffix], f'"{digest}"')


def asset(name: str, directory: Path = DIRECTORY) -> Asset | None:
    """The file `name` of the directory, or None for anything not served."""
    if not name or name.startswith(".") or Path(name).suffix not in CONTENT_TYPES:
        return None
    # An exact name from the listing, never a path built from the request.
    found = {p.name: p for p in directory.iterdir() if p.is_file() and not p.is_symlink()}
    path = found.get(name)
    if path is None or name == INDEX:  # the page itself is served at `/`, filled in
        return None
    return _asset(name, path.read_bytes())


def index(intervals: Iterable[str], directory: Path = DIRECTORY) -> Asset:
    """The page, told the bar intervals this deployment builds (a setting, not data), so that
    it can offer them without a call that would need a token."""
    text = (directory / INDEX).read_text(encoding="utf-8")
    filled = text.replace(INTERVALS_MARK, html.escape(",".join(intervals), quote=True))
    return _asset(INDEX, filled.encode("utf-8"))
