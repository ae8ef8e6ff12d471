"""Which tapestream this is: what `faust -A app version` prints and `tapestream_build_info`
exposes."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def version() -> str:
    try:
        return metadata.version("tapestream")
    except metadata.PackageNotFoundError:
        return "unknown"


def python() -> str:
    return platform.python_version()


@cache
def commit() -> str:
    """`TAPESTREAM_COMMIT` (an image build sets it: images carry no .git), else the HEAD of the
    checkout this runs from, else "unknown"."""
    given = os.environ.get("TAPESTREAM_COMMIT", "").strip()
    if given:
        return given
    if not (ROOT / ".git").exists():
        return "unknown"  # rev-parse would answer for whatever repository holds this one
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"
