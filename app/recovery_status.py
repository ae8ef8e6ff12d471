"""Whether a worker is restoring tables after a rebalance, and how far it has come, so an
operator (and a readiness probe) can tell recovery from a hang."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def recovery_status(app: Any) -> dict[str, Any]:
    """`recovering`: a rebalance or a table restore is under way (views may answer 503 until
    it ends); per changelog partition still being restored, how many records are left."""
    recovery = app.tables.recovery
    remaining = {
        f"{tp.topic}:{tp.partition}": int(n)
        for tp, n in sorted(recovery.active_remaining().items())
        if n > 0
    }
    return {
        "recovering": bool(app.in_recovery or app.rebalancing),
        "rebalancing": bool(app.rebalancing),
        "restoring": bool(app.in_recovery),
        "changelog_records_remaining": sum(remaining.values()),
        "changelog_partitions_remaining": remaining,
        "standby_records_behind": int(recovery.standby_remaining_total()),
    }


def log_progress(app: Any) -> None:
    """One line while recovering: at the default log level Faust's own progress is not shown."""
    status = recovery_status(app)
    if not status["recovering"]:
        return
    parts = status["changelog_partitions_remaining"]
    log.warning(
        "recovering (%s): %d changelog records left to restore in %d partitions%s",
        "rebalancing" if status["rebalancing"] else "restoring tables",
        status["changelog_records_remaining"],
        len(parts),
        (": " + ", ".join(f"{k} {v}" for k, v in list(parts.items())[:8])) if parts else "",
    )
