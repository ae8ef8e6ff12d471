"""Local table state survives a restart only when it can be trusted: always under
at_least_once, and under exactly_once only after a clean stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.local_state import CLEAN_MARK, mark_clean, open_local_state


def _tables(tmp_path: Path) -> Path:
    tabledir = tmp_path / "v1" / "tables"
    (tabledir / "books-0.db").mkdir(parents=True)
    (tabledir / "books-0.db" / "CURRENT").write_text("x")
    (tabledir / "stray.lock").write_text("")
    return tabledir


def test_exactly_once_wipes_what_an_unclean_stop_left(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert open_local_state(tabledir, exactly_once=True)
    assert list(tabledir.iterdir()) == []


def test_a_clean_stop_keeps_state_once(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    mark_clean(tabledir)
    assert not open_local_state(tabledir, exactly_once=True)
    assert (tabledir / "books-0.db" / "CURRENT").exists()
    assert not (tabledir / CLEAN_MARK).exists()  # this run must stop cleanly in its turn
    assert open_local_state(tabledir, exactly_once=True)  # killed before it did


@pytest.mark.parametrize("exists", [True, False])
def test_at_least_once_keeps_state_and_nothing_is_a_fresh_start(
    tmp_path: Path, exists: bool
) -> None:
    tabledir = _tables(tmp_path) if exists else tmp_path / "none"
    assert not open_local_state(tabledir, exactly_once=False)
    assert not open_local_state(tmp_path / "empty", exactly_once=True)
    if exists:
        assert (tabledir / "books-0.db" / "CURRENT").exists()
