"""The dashboard's files: only plain names of served types from its own directory, never a
path beyond it; the page told the bar intervals; revalidation by ETag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.dashboard_files import CONTENT_TYPES, DIRECTORY, asset, index


def test_the_shipped_files_are_served_with_their_types() -> None:
    scripts = [(name, "text/javascript") for name in ("dashboard.js", "charts.js", "format.js")]
    for name, kind in [*scripts, ("dashboard.css", "text/css")]:
        found = asset(name)
        assert found is not None and found.body == (DIRECTORY / name).read_bytes()
        headers = found.headers()
        assert headers["Content-Type"].startswith(kind)
        assert headers["Cache-Control"] == "no-cache" and headers["ETag"] == found.etag
        assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = index(["1m", "5m"]).body.decode()
    assert 'data-intervals="1m,5m"' in page and "{{" not in page
    assert "/dashboard/dashboard.js" in page and "/dashboard/dashboard.css" in page
    for path in DIRECTORY.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path
        # the modules import each other by plain name, which the worker serves
        for imported in re.findall(r'from "\./([^"]+)"', text):
            assert asset(imported) is not None, (path.name, imported)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "index.html",  # the page is served at / only, filled in
        "../access.py",
        "..",
        "../dashboard_files.py",
        "/etc/passwd",
        "%2e%2e",
        ".hidden.js",
        "dashboard.js/",
        "dashboard.JS",
        "missing.js",
        "dashboard.js\x00.css",
    ],
)
def test_anything_else_is_not_served(name: str) -> None:
    assert asset(name) is None


def test_only_files_of_a_served_type_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<body data-intervals='{{intervals}}'>")
    (tmp_path / "app.js").write_text("1")
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.js").write_text("2")
    (tmp_path / "link.js").symlink_to(tmp_path / "app.js")
    assert asset("app.js", tmp_path) is not None
    for name in ("data.json", "sub", "x.js", "sub/x.js", "link.js"):
        assert asset(name, tmp_path) is None
    assert set(CONTENT_TYPES) == {".html", ".js", ".css"}
    assert index(["1m"], tmp_path).body == b"<body data-intervals='1m'>"


def test_an_unchanged_file_is_answered_not_modified() -> None:
    found = asset("dashboard.js")
    assert found is not None
    assert found.fresh_for(found.etag) and found.fresh_for(f'"x", {found.etag}')
    assert not found.fresh_for('"other"') and not found.fresh_for(None)
    assert index(["1m"]).etag != index(["1m", "5m"]).etag
