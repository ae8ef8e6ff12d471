"""Views while workers start and join: an instrument's view answers 503 with Retry-After, never
500, until the worker knows who owns the instrument; `/ready` says when it does. The OpenAPI
document validates, and every path in it answers as it says."""

from __future__ import annotations

import time

import requests
from openapi_spec_validator import validate

from tests.integration.conftest import Deployment, Worker

PATHS = ("/books/{iid}/", "/bars/{iid}/", "/indicators/{iid}/", "/instruments/{iid}/")


def _poll(workers: list[Worker], seconds: float) -> list[tuple[int, str | None, str]]:
    """(status, Retry-After, path) of every routed view on every worker, as fast as they
    answer, until each worker is ready (or the time is up)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for w in workers:
            for i, path in enumerate(PATHS):
                url = w.url + path.format(iid=1000 + i)
                r = requests.get(url, timeout=10)
                seen.append((r.status_code, r.headers.get("Retry-After"), url))
        if all(w.get_raw("/ready").status_code == 200 for w in workers):
            break
    return seen


def test_views_answer_503_with_retry_after_never_500_while_workers_start_and_join(
    deployment: Deployment,
) -> None:
    w1 = deployment.worker("w1")  # returns once its web server answers, before its assignment
    seen = _poll([w1], 60)
    w2 = deployment.worker("w2")  # a rebalance: both workers' views, routed to the owner
    seen += _poll([w1, w2], 90)
    deployment.wait_assigned(w1, w2)
    seen += _poll([w1, w2], 5)

    errors = [s for s in seen if s[0] >= 500 and s[0] != 503]
    assert not errors, errors[:5]
    assert all(retry == "2" for status, retry, _ in seen if status == 503)
    # Once ready, every instrument is known to no one here: its owner answers 404.
    for w in (w1, w2):
        assert w.get("/ready")["ready"] is True and w.get("/health")["ready"] is True
        for i, path in enumerate(PATHS):
            assert w.get_raw(path.format(iid=1000 + i)).status_code == 404
    for w in (w1, w2):
        assert "Error handling request" not in w.log_path.read_text(errors="replace")


def test_the_openapi_document_is_valid_and_every_path_answers_as_it_says(
    deployment: Deployment,
) -> None:
    w1, w2 = deployment.worker("w1"), deployment.worker("w2")
    deployment.wait_assigned(w1, w2)
    doc = w1.get("/openapi.json")
    validate(doc)
    assert doc == w2.get("/openapi.json")
    for path, item in doc["paths"].items():
        if path == "/ws":  # an upgrade, not a request; tests/integration/test_websocket.py
            continue
        if "get" not in item:  # POST /ingest/ticks: tests/integration/test_tick_ingest.py
            continue
        for w in (w1, w2):
            r = w.get_raw(path.replace("{instrument_id}", "1000"))
            assert str(r.status_code) in item["get"]["responses"], (path, r.status_code, r.text)
