"""Which venue a Databento publisher id stands for (databento's own publisher table), for
settings that differ by venue."""

from __future__ import annotations

from functools import lru_cache

from databento.common.publishers import Publisher, Venue


@lru_cache(maxsize=1024)
def venue_of(publisher_id: int) -> str | None:
    """The venue's MIC (`XNAS`, `GLBX`, ...), or None for a publisher id Databento does not
    list."""
    try:
        return str(Publisher.from_int(publisher_id).venue.value)
    except ValueError:
        return None


def known_venue(code: str) -> bool:
    try:
        Venue(code)
    except ValueError:
        return False
    return True


# Publisher ids the project gives feeds Databento does not list.
BINANCE_USDM = 65_001
MASSIVE = 65_002  # US equities trades and quotes from Massive (formerly Polygon.io)
