"""Giving the C heap's free memory back to the system.

A worker's RSS crept up for as long as it ran (the soak, docs/testing-and-benchmarks.md), and
most of the growth was free memory: glibc keeps what is freed in its heap for reuse and returns
it only from the top, while RocksDB's memtables, Kafka's fetch buffers and large Python objects
come and go in the middle. `malloc_trim(0)` returns every free page, wherever it lies. On a C
library without it (musl), nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def available() -> bool:
    return _TRIM is not None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def trim() -> tuple[int, float]:
    """Return the heap's free pages to the system: (bytes of RSS given back, seconds taken).
    ctypes lets go of the GIL for the call, so it may run in a thread beside the event loop."""
    if _TRIM is None:
        return 0, 0.0
    before = rss_bytes()
    t0 = time.perf_counter()
    _TRIM(0)
    seconds = time.perf_counter() - t0
    return max(0, before - rss_bytes()), seconds
