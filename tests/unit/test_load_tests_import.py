"""Every benchmark and load test imports: they run outside `make test`, so a name renamed
under them would otherwise go unnoticed until someone needs the figure."""

from __future__ import annotations

import importlib

import pytest

from tests.conftest import ROOT

MODULES = sorted(p.stem for p in (ROOT / "load_tests").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_load_test_imports(name: str) -> None:
    module = importlib.import_module(f"load_tests.{name}")
    assert module.__doc__, f"load_tests/{name}.py says nothing of what it measures"
