from __future__ import annotations

import ctypes

import pytest

from app import heap_trim


@pytest.mark.skipif(not heap_trim.available(), reason="a C library without malloc_trim")
def test_a_trim_gives_back_memory_freed_in_the_middle_of_the_heap() -> None:
    # Blocks under glibc's mmap threshold come from the heap; freeing all but the last leaves
    # the free memory in the middle, where glibc alone keeps it.
    blocks = [ctypes.create_string_buffer(64 << 10) for _ in range(800)]
    for b in blocks:
        ctypes.memset(b, 1, len(b))
    last = blocks[-1]
    del blocks
    released, seconds = heap_trim.trim()
    assert released > 10 << 20, released
    assert seconds >= 0
    assert last.raw[:1] == b"\x01"
