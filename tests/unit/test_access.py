"""Who may use a worker's web server: tokens and roles, the open probes, and a server exposed
beyond this machine without tokens refused."""

from __future__ import annotations

import pytest

from app.access import Access, AccessError, Request

READ = "reader-token-0123456789"
OPER = "operator-token-0123456789"
ENV = {
    "TAPESTREAM_READ_TOKENS": f" {READ} , other-reader-token-99 ",
    "TAPESTREAM_OPERATOR_TOKENS": OPER,
}


def _access(env: dict[str, str] = ENV) -> Access:
    return Access.from_env(env)


def _check(access: Access, method: str, path: str, auth: str | None = None, **more: str):
    return access.check(Request(method, path, auth, **more))


def test_off_without_tokens_on_this_machine() -> None:
    access = _access({})
    for bind in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert access.exposure_problem(bind) is None
    for host in ("127.0.0.1:6066", "localhost:6066", "[::1]:6066", "127.0.0.1", None):
        assert _check(access, "PUT", "/config/x", host=host) is None  # type: ignore[arg-type]
    ok = _check(access, "GET", "/ws", host="127.0.0.1:6066", origin="http://localhost:6066")
    assert ok is None


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("evil.example:6066", None),
        ("10.1.2.3:6066", None),
        ("127.0.0.1:6066", "https://evil.example"),
    ],
)
def test_without_tokens_other_hosts_and_sites_are_refused(host: str, origin: str | None) -> None:
    refusal = _check(_access({}), "GET", "/books/", host=host, origin=origin)  # type: ignore[arg-type]
    assert refusal is not None and refusal.status == 403
    insecure = _access({"TAPESTREAM_WEB_INSECURE": "1"})
    assert _check(insecure, "GET", "/books/", host=host, origin=origin) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.1.2.3", "worker-0.tapestream"])
def test_exposed_without_tokens_is_refused_unless_said_so(bind: str) -> None:
    problem = _access({}).exposure_problem(bind)
    assert problem is not None and "beyond this machine" in problem
    assert _access({"TAPESTREAM_WEB_INSECURE": "1"}).exposure_problem(bind) is None
    assert _access(ENV).exposure_problem(bind) is None


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("GET", "/books/", None, 401),
        ("GET", "/books/", "Basic " + READ, 401),
        ("GET", "/books/", "Bearer " + READ[:-1], 401),
        ("GET", "/books/", "Bearer " + READ + "x", 401),
        ("GET", "/books/", "Bearer " + READ, None),
        ("GET", "/books/", "bearer  other-reader-token-99 ", None),
        ("GET", "/metrics", "Bearer " + READ, None),
        ("GET", "/metrics", None, 401),
        ("PUT", "/config/signal.z_net", "Bearer " + READ, 403),
        ("PUT", "/config/signal.z_net", "Bearer " + OPER, None),
        ("GET", "/books/", "Bearer " + OPER, None),
        ("GET", "/health", None, None),
        ("GET", "/ready", None, None),
        ("POST", "/ingest/ticks", None, None),  # its own token
    ],
)
def test_tokens_and_roles(method: str, path: str, auth: str | None, status: int | None) -> None:
    refusal = _check(_access(), method, path, auth)
    assert (refusal.status if refusal else None) == status
    if refusal is not None:
        assert READ not in refusal.error and OPER not in refusal.error


def test_a_browser_websocket_presents_its_token_as_a_subprotocol() -> None:
    access = _access()
    assert _check(access, "GET", "/ws", ws_protocols=f"tapestream, bearer.{READ}") is None
    refusal = _check(access, "GET", "/ws", ws_protocols="tapestream, bearer.nope-nope-nope-nope")
    assert refusal is not None and refusal.status == 401
    assert _check(access, "GET", "/ws", ws_protocols="tapestream").status == 401  # type: ignore[union-attr]
    # only the WebSocket takes a token that way
    assert _check(access, "GET", "/books/", ws_protocols=f"bearer.{READ}").status == 401  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["short", "has a space in it ok", "tab\tinside-the-token-x"])
def test_a_bad_token_is_refused_without_showing_it(bad: str) -> None:
    with pytest.raises(AccessError) as exc:
        _access({"TAPESTREAM_READ_TOKENS": bad})
    assert bad not in str(exc.value) and "TAPESTREAM_READ_TOKENS" in str(exc.value)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", None),
        ("HEAD", "/", None),
        ("GET", "/dashboard/dashboard.js", None),
        ("GET", "/dashboard/dashboard.css", None),
        ("GET", "/dashboard/index.html", None),
        ("PUT", "/", 401),  # reads only
        ("GET", "/dashboard/", 401),
        ("GET", "/dashboard/notes.txt", 401),
        ("GET", "/dashboard/../books/", 401),
        ("GET", "/dashboard/x.js/../../books/", 401),
        ("GET", "/dashboard/a/b.js", 401),
        ("GET", "/dashboardx.js", 401),
        ("GET", "//", 401),
    ],
)
def test_the_dashboard_page_and_files_are_open_and_nothing_beside_them(
    method: str, path: str, status: int | None
) -> None:
    """A browser's navigation cannot present a token: the page and its files, which hold no
    data, are open; the page then presents the token from its URL fragment to the data."""
    refusal = _check(_access(), method, path)
    assert (refusal.status if refusal else None) == status


def test_without_tokens_the_dashboard_is_for_this_machine_only() -> None:
    access = _access({})
    assert _check(access, "GET", "/", host="127.0.0.1:6066") is None
    refusal = _check(access, "GET", "/", host="evil.example:6066")
    assert refusal is not None and refusal.status == 403
