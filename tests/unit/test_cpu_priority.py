"""The lake sink's lower CPU priority reaches every thread of its process, not only the one
that set it (Linux keeps both per thread). Run in a child process: the test's own stays as it
is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.cpu_priority import SpareCpu, Yield

CHILD = """
import os, sys, threading
from app.cpu_priority import run_below_workers

started, stop = threading.Event(), threading.Event()
def wait():
    started.set()
    stop.wait()
threading.Thread(target=wait, daemon=True).start()
started.wait()
set_to = run_below_workers(int(sys.argv[1]), sys.argv[2] == "idle")

def seen(tid):
    return f"{os.sched_getscheduler(tid) == os.SCHED_IDLE} {os.getpriority(os.PRIO_PROCESS, tid)}"

lines = [seen(int(tid)) for tid in os.listdir("/proc/self/task")]
t = threading.Thread(target=lambda: lines.append(seen(threading.get_native_id())))
t.start(); t.join()
print(set_to)
for line in lines:
    print(line)
stop.set()
"""


def _idle_class_usable() -> bool:
    if not hasattr(os, "SCHED_IDLE"):
        return False  # not Linux
    if os.sched_getscheduler(0) == os.SCHED_IDLE:
        return False  # already idle: nothing a child could show
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))",
        ],
        capture_output=True,
    )
    return probe.returncode == 0  # some sandboxes refuse the call


linux_only = pytest.mark.skipif(not _idle_class_usable(), reason="Linux's idle class refused here")


def _child(nice: int, mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(nice), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    return out.stdout.splitlines()


@linux_only
def test_the_idle_class_reaches_threads_already_running_and_those_started_later() -> None:
    said, *threads = _child(10, "idle")
    assert said == "idle scheduling class"
    assert len(threads) >= 3  # the main thread, the one already waiting, one started after
    assert all(line.split()[0] == "True" for line in threads)


@linux_only
def test_without_the_idle_class_every_thread_gets_the_nice_value() -> None:
    # Never above where the process already runs (raising a priority needs privileges).
    nice = max(7, os.getpriority(os.PRIO_PROCESS, 0))
    said, *threads = _child(7, "nice")
    assert said == f"nice {nice}"
    assert len(threads) >= 3
    assert all(line.split() == ["False", str(nice)] for line in threads)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _spare(clock: _Clock, busy: list[float], own: list[float]) -> SpareCpu:
    """A 2-CPU machine whose busy seconds and this process's CPU seconds the test sets."""
    return SpareCpu(2, lambda: busy[0], lambda: own[0], clock)


def test_spare_cpu_leaves_the_process_own_time_out() -> None:
    clock, busy, own = _Clock(), [0.0], [0.0]
    spare = _spare(clock, busy, own)
    clock.now, busy[0], own[0] = 1.0, 1.5, 0.5  # others kept one CPU busy; the sink half of one
    assert spare.read() == pytest.approx(1.0)
    clock.now += 0.1
    assert spare.read() is None  # too soon for the kernel's tick counts to say
    clock.now, busy[0] = 2.0, 3.5  # others kept both busy
    assert spare.read() == pytest.approx(0.0)


def test_yield_waits_while_cpu_is_short_but_never_too_long_in_a_row() -> None:
    clock, busy, own = _Clock(), [0.0], [0.0]
    spare = _spare(clock, busy, own)
    yielding = Yield(1.0, max_wait_s=5.0, work_s=2.0, settle_s=1.0, spare=spare, clock=clock)
    assert not yielding.should_wait()  # nothing measured yet

    def tick(others_busy: float) -> bool:
        clock.now += 0.5
        busy[0] += others_busy * 0.5
        return yielding.should_wait()

    assert not tick(0.5)  # 1.5 CPUs spare
    assert all(tick(1.8) for _ in range(10))  # 0.2 spare: wait, 5 s
    assert not tick(1.8)  # 5 s waited: work now
    assert not any(tick(1.8) for _ in range(3))  # for 2 s at least
    assert tick(1.8)  # then wait again
    assert tick(0.2) and tick(0.2)  # the workers went quiet: wait till it holds for 1 s
    assert not tick(0.2)
    assert tick(1.8)  # busy again


def test_yield_with_no_spare_asked_never_waits() -> None:
    assert not Yield(0.0).should_wait()
