"""Running a process below the workers on the CPUs they share (the lake sink): a nice value,
or Linux's idle scheduling class, set on every thread the process has."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def _threads() -> set[int]:
    # Linux keeps a nice value and a scheduling policy per thread, and a thread takes its
    # creator's when it starts: setting them on the calling thread alone would leave the
    # threads already running (the consumer's, the thread pools') at the workers' priority.
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return {0}
    return {int(tid.name) for tid in tasks.iterdir()}


def _each_thread(set_one: Callable[[int], None]) -> None:
    """`set_one` on every thread, again on any a thread started meanwhile, until none is new."""
    done: set[int] = set()
    while todo := _threads() - done:
        for tid in todo:
            with contextlib.suppress(ProcessLookupError):  # it ended since the list was read
                set_one(tid)
        done |= todo


def _idle(tid: int) -> None:
    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def run_below_workers(nice: int, idle: bool) -> str:
    """Lower this process's CPU priority; return what was set, for the log.

    `idle`: the SCHED_IDLE class, which runs the process only on CPU time no ordinary process
    wants, so a busy worker beside it loses next to nothing to it; the process catches up when
    the workers go quiet. Otherwise (or where the class is missing or refused) the nice value,
    which still leaves the process about a tenth of a contended CPU at 10."""
    if idle and hasattr(os, "SCHED_IDLE"):
        try:
            _each_thread(_idle)
            return "idle scheduling class"
        except OSError as exc:  # refused: a sandbox, say
            log.warning("could not use the idle scheduling class (%s); using nice", exc)
    # Never above where the process already runs: raising a priority needs privileges.
    nice = max(nice, os.getpriority(os.PRIO_PROCESS, 0))
    _each_thread(lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice))
    return f"nice {nice}"
