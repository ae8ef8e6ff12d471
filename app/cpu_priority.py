"""Running a process below the workers on the CPUs they share (the lake sink): a nice value,
or Linux's idle scheduling class, set on every thread the process already has."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _threads() -> list[int]:
    # Linux keeps a nice value and a scheduling policy per thread, and a thread takes its
    # creator's when it starts: setting them on the calling thread alone would leave the
    # threads already running (the consumer's, the thread pools') at the workers' priority.
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return [0]
    return [int(tid.name) for tid in tasks.iterdir()]


def run_below_workers(nice: int, idle: bool) -> str:
    """Lower this process's CPU priority; return what was set, for the log.

    `idle`: the SCHED_IDLE class, which runs the process only on CPU time no ordinary process
    wants, so a busy worker beside it loses next to nothing; the process catches up when the
    workers go quiet. Otherwise (or where the class is missing) the nice value, which still
    leaves the process about a tenth of a contended CPU at 10."""
    if idle and hasattr(os, "SCHED_IDLE"):
        try:
            for tid in _threads():
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "idle scheduling class"
        except (OSError, ProcessLookupError) as exc:
            log.warning("could not use the idle scheduling class (%s); using nice %d", exc, nice)
    for tid in _threads():
        try:
            # Never above where it already runs: raising a priority needs privileges.
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, current))
        except ProcessLookupError:
            continue  # the thread ended since the list was read
    return f"nice {nice}"
