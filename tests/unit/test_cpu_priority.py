"""The lake sink's lower CPU priority reaches every thread of its process, not only the one
that set it (Linux keeps both per thread). Run in a child process: the test's own stays as it
is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
