"""Local table state survives a restart under at_least_once; under exactly_once a worker
starts from the changelogs (its local tables may hold aborted writes)."""

from __future__ import annotations

from pathlib import Path

from app.local_state import open_local_state


def _tables(tmp_path: Path) -> Path:
    tabledir = tmp_path / "v1" / "tables"
    (tabledir / "books-0.db").mkdir(parents=True)
    (tabledir / "books-0.db" / "CURRENT").write_text("x")
    (tabledir / "stray.lock").write_text("")
    return tabledir


def test_exactly_once_starts_from_the_changelogs(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert open_local_state(tabledir, exactly_once=True)
    assert list(tabledir.iterdir()) == []
    assert not open_local_state(tabledir, exactly_once=True)  # nothing left to wipe
    assert not open_local_state(tmp_path / "none", exactly_once=True)


def test_at_least_once_keeps_local_state(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert not open_local_state(tabledir, exactly_once=False)
    assert (tabledir / "books-0.db" / "CURRENT").exists()
