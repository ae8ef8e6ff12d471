"""The lake's files: where each goes, how one is put in place whole, and where each topic
partition resumes.

    <root>/<topic>/date=YYYY-MM-DD/hour=HH/p<partition>-<first offset>-<last offset>.parquet

Offsets are zero-padded, so names sort in offset order. A file holds whole messages of one
partition with consecutive offsets (markers and gaps included in the range); the next file of
the partition starts after its last. So the highest last offset on disk says where the
partition resumes, and no second store can disagree with it.

On a local disk a file is written under a name starting with a dot and ending in `.tmp`,
synced, renamed into place and its directory synced: a reader never sees part of a file, and a
crash leaves at most a temporary file, which the next start removes. An object store (any
`pyarrow.fs` URI such as `s3://bucket/lake`) gets the file under its final name in one PUT,
which such stores make visible whole.

One sink writes a partition at a time, by the consumer group's say; but a sink that stood still
(SIGSTOP, a frozen VM) past the session timeout wakes up still holding a file of a partition
another sink has taken over and written from the same offset. So before a file goes in place,
the files of its hour and partition are listed, and a file whose span overlaps one already there
is refused (`Superseded`): the sink that took the partition over wrote those records first. Any
overlapping file is in that hour's directory, since a file starts with a record and a record's
hour decides its directory. On a local disk the list and the rename are one step under a lock
per partition; an object store has no such lock, so there the check narrows the window without
closing it.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_NAME = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet$")
_LOCK = re.compile(r"^\.p\d+\.lock$")
COMPRESSION = "zstd"
LEFTOVER_S = 600


@dataclass(frozen=True)
class Span:
    partition: int
    first: int
    last: int


def overlaps(a: Span, b: Span) -> bool:
    return a.partition == b.partition and a.first <= b.last and b.first <= a.last


class Superseded(Exception):
    """A file refused because another sink put a file over part of its span in place first
    (one of the two stood still past the session timeout)."""

    def __init__(self, span: Span, there: Span) -> None:
        super().__init__(
            f"partition {span.partition} offsets {span.first}-{span.last} overlap"
            f" {there.first}-{there.last}, put in place first by another sink"
        )
        self.span = span


def file_name(span: Span) -> str:
    return f"p{span.partition:04d}-{span.first:020d}-{span.last:020d}.parquet"


def parse_name(name: str) -> Span | None:
    m = _NAME.match(name)
    return Span(int(m[1]), int(m[2]), int(m[3])) if m else None


def lock_name(partition: int) -> str:
    """A partition's lock file, in its topic's directory (local disks only)."""
    return f".p{partition:04d}.lock"


def is_lock_name(name: str) -> bool:
    return _LOCK.match(name) is not None


def hour_dir(hour: int) -> str:
    t = datetime.fromtimestamp(hour * 3600, UTC)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


class Lake:
    """A lake root: a local directory or a pyarrow filesystem URI."""

    def __init__(self, root: str, instance: str = "") -> None:
        """`instance`: the sink's name, in its temporary files' names (its process id when
        it has none), so that a sink clears only what it or a dead sink left."""
        self.instance = instance or f"pid{os.getpid()}"
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            os.makedirs(root, exist_ok=True)
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def topic_dir(self, topic: str) -> str:
        return f"{self.root}/{topic}"

    def files(self, topic: str) -> list[tuple[str, Span]]:
        """Every file of the topic, with its span, in (partition, offset) order."""
        selector = pafs.FileSelector(self.topic_dir(topic), recursive=True, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(selector):
            span = parse_name(info.base_name) if info.type == pafs.FileType.File else None
            if span is not None:
                out.append((info.path, span))
        return sorted(out, key=lambda f: (f[1].partition, f[1].first))

    def resume_offsets(self, topic: str) -> dict[int, int]:
        """Partition -> the offset after its last file."""
        out: dict[int, int] = {}
        for _, span in self.files(topic):
            out[span.partition] = max(out.get(span.partition, 0), span.last + 1)
        return out

    def remove_leftovers(self, topic: str) -> int:
        """Temporary files a crash left behind (never visible as part of the lake): this
        sink's own, and any older than LEFTOVER_S (another sink's would be in place by then)."""
        if not self.local:
            return 0
        selector = pafs.FileSelector(self.topic_dir(topic), recursive=True, allow_not_found=True)
        gone = 0
        now = time.time()
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.base_name.endswith(".tmp"):
                continue
            old = info.mtime is not None and now - info.mtime.timestamp() > LEFTOVER_S
            if info.base_name.endswith(f".{self.instance}.tmp") or old:
                self.fs.delete_file(info.path)
                gone += 1
        return gone

    def write(self, topic: str, hour: int, span: Span, table: pa.Table) -> tuple[str, int]:
        """Put a file in place, whole; returns its path and size. Raises `Superseded` if a
        file there overlaps its span."""
        directory = f"{self.topic_dir(topic)}/{hour_dir(hour)}"
        path = f"{directory}/{file_name(span)}"
        if not self.local:
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer, compression=COMPRESSION)
            data = buffer.getvalue()
            # Listed just before the PUT, once the file is encoded: the window it leaves open
            # is the upload's
            self._refuse_overlap(directory, span)
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return path, data.size
        os.makedirs(directory, exist_ok=True)
        tmp = f"{directory}/.{file_name(span)}.{self.instance}.tmp"
        pq.write_table(table, tmp, compression=COMPRESSION)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        with self._partition_lock(topic, span.partition):
            try:
                self._refuse_overlap(directory, span)
            except Superseded:
                os.remove(tmp)
                raise
            os.replace(tmp, path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path, os.path.getsize(path)

    def _refuse_overlap(self, directory: str, span: Span) -> None:
        selector = pafs.FileSelector(directory, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            there = parse_name(info.base_name) if info.type == pafs.FileType.File else None
            if there is not None and overlaps(there, span):
                raise Superseded(span, there)

    @contextmanager
    def _partition_lock(self, topic: str, partition: int) -> Iterator[None]:
        """Held by one process at a time (flock: let go when the process dies, however)."""
        lock = f"{self.topic_dir(topic)}/{lock_name(partition)}"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
