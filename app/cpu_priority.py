"""Running a process below the workers on the CPUs they share (the lake sink): a nice value,
or Linux's idle scheduling class, set on every thread the process has; and waiting while the
workers leave too little CPU spare (`Yield`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
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


def _stat_busy() -> float:
    """The machine's busy CPU seconds since boot, from /proc/stat's first line."""
    with open("/proc/stat", "rb") as fh:
        fields = fh.readline().split()
    # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    ticks = [int(v) for v in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def default_spare_cpus() -> float:
    """A whole CPU, or half the machine's where it has fewer than two: on one CPU a whole one
    is never spare, since the kernel and the broker always take some."""
    return min(1.0, (os.cpu_count() or 1) / 2)


class SpareCpu:
    """CPUs the other processes left idle since the last reading: the machine's CPU count less
    what everything else kept busy. This process's own time is left out, so a sink that runs
    does not count itself as load."""

    def __init__(
        self,
        cpus: int | None = None,
        machine: Callable[[], float] = _stat_busy,
        own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus = cpus or os.cpu_count() or 1
        self._machine, self._own, self._clock = machine, own, clock
        self._last = self._read()

    def _read(self) -> tuple[float, float, float]:
        return self._clock(), self._machine(), self._own()

    def read(self) -> float | None:
        """Spare CPUs over the time since the last reading (None when too little has passed
        for the kernel's tick counts to say)."""
        now, busy, own = self._read()
        t0, busy0, own0 = self._last
        if now - t0 < 0.2:
            return None
        self._last = (now, busy, own)
        others = max((busy - busy0) - (own - own0), 0.0) / (now - t0)
        return max(self.cpus - others, 0.0)


class Yield:
    """When a process that must not slow the workers (the lake sink) should wait: while the
    other processes leave it less than `spare_cpus`, and until they have left that much for
    `settle_s` (a worker between two batches leaves a CPU idle for a moment, and is back before
    the sink has done anything useful); but never longer than `max_wait_s` in a row: after a
    wait that long it works at least `work_s` before it waits again, so a machine that is never
    quiet still gets its lake written, at the idle class's pace.

    A priority alone is not enough where the CPUs share a physical core or its caches (a small
    virtual machine): work on one slows the other whatever its class
    (load_tests/bench_lake.py, the idle_loop phase)."""

    def __init__(
        self,
        spare_cpus: float,
        max_wait_s: float = 60.0,
        work_s: float = 10.0,
        settle_s: float = 3.0,
        spare: SpareCpu | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spare_cpus = spare_cpus
        self.max_wait_s = max_wait_s
        self.work_s = work_s
        self.settle_s = settle_s
        self.spare = spare if spare is not None or spare_cpus <= 0 else SpareCpu()
        self._clock = clock
        self.waiting_since: float | None = None
        self._spare_since: float | None = None  # spare in every reading since
        self._work_until = 0.0
        self._measured = False

    def should_wait(self) -> bool:
        if self.spare is None:
            return False
        now = self._clock()
        got = self.spare.read()
        if got is not None:
            self._measured = True
            if got < self.spare_cpus:
                self._spare_since = None
            elif self._spare_since is None:
                self._spare_since = now
        if now < self._work_until or not self._measured:
            return self._go()
        if self._spare_since is not None and (
            self.waiting_since is None or now - self._spare_since >= self.settle_s
        ):
            return self._go()
        if self.waiting_since is None:
            self.waiting_since = now
        elif now - self.waiting_since >= self.max_wait_s:
            self._work_until = now + self.work_s
            return self._go()
        return True

    def _go(self) -> bool:
        self.waiting_since = None
        return False
