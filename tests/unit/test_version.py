"""`faust -A app version` names tapestream's own version first."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_command_names_tapestream_and_what_it_runs_on() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert lines[0] == f"tapestream {project['version']}"
    assert any(line.startswith("faust-streaming ") for line in lines)
