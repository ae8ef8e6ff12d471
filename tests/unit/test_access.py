"""Who may use a worker's web server: tokens and roles, the open probes, and a server exposed
beyond this machine without tokens refused."""

from __future__ import annotations

import pytest

from app.access import Access, AccessError

READ = "reader-token-0123456789"
OPER = "operator-token-0123456789"
ENV = {
    "TAPESTREAM_READ_TOKENS": f" {READ} , other-reader-token-99 ",
    "TAPESTREAM_OPERATOR_TOKENS": OPER,
}


def _access(env: dict[str, str] = ENV, host: str = "127.0.0.1") -> Access:
    return Access.from_env(env, host)


def test_off_without_tokens_on_this_machine() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        access = _access({}, host)
        assert not access.on and access.check("PUT", "/config/x", None) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "worker-0.tapestream"])
def test_exposed_without_tokens_is_refused_unless_said_so(host: str) -> None:
    with pytest.raises(AccessError, match="beyond this machine"):
        _access({}, host)
    assert not _access({"TAPESTREAM_WEB_INSECURE": "1"}, host).on
    assert _access(ENV, host).on


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
    refusal = _access().check(method, path, auth)
    assert (refusal.status if refusal else None) == status
    if refusal is not None:
        assert READ not in refusal.error and OPER not in refusal.error


def test_a_browser_websocket_presents_its_token_as_a_subprotocol() -> None:
    access = _access()
    assert access.check("GET", "/ws", None, f"tapestream, bearer.{READ}") is None
    refusal = access.check("GET", "/ws", None, "tapestream, bearer.nope-nope-nope-nope")
    assert refusal is not None and refusal.status == 401
    assert access.check("GET", "/ws", None, "tapestream").status == 401  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["short", "has a space in it ok", "tab\tinside-the-token-x"])
def test_a_bad_token_is_refused_without_showing_it(bad: str) -> None:
    with pytest.raises(AccessError) as exc:
        _access({"TAPESTREAM_READ_TOKENS": bad})
    assert bad not in str(exc.value) and "TAPESTREAM_READ_TOKENS" in str(exc.value)
