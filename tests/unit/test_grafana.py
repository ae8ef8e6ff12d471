"""deploy/grafana/tapestream.json against the metrics: every query of every panel and variable
parses as PromQL (promql-parser, a port of Prometheus's own parser) and names only metrics
that a worker registers, each documented in docs/operations.md; the provisioning and the
scrape config hold together. tests/integration/test_input_errors.py checks the same names
against a real worker's /metrics."""

from __future__ import annotations

import json
import re
from typing import Any

import prometheus_client
import promql_parser
import pytest
import yaml

from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy/grafana/tapestream.json"
PROVISIONING = ROOT / "deploy/grafana/provisioning"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
# Grafana's own variables, replaced as Grafana replaces them before a query reaches Prometheus.
# The dashboard's ($job, $instance) appear only inside quoted label matchers.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Grafana's variable query `label_values(selector, label)`: only the selector is PromQL.
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$")
# The samples a family of each type adds to its name in the text exposition.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    out = []
    for p in items:
        out.append(p)
        out += panels(p.get("panels", []))
    return out


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable, Grafana's variables
    replaced."""
    out = []
    for p in panels(board["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            m = LABEL_VALUES.match(v["definition"])
            assert m, f"variable {v['name']}: not label_values(selector, label)"
            out.append((f"variable {v['name']}", m.group(1)))
    for where, expr in out:
        assert expr.strip(), f"{where}: empty"
    return [(where, _grafana_replaced(expr)) for where, expr in out]


def _grafana_replaced(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression selects (ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    assert m.op == promql_parser.MatchOp.Equal, f"{expr}: __name__ by pattern"
                    names.add(m.value)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_metrics() -> dict[str, set[str]]:
    """metric -> where the dashboard uses it."""
    out: dict[str, set[str]] = {}
    for where, expr in queries(dashboard()):
        for name in metric_names(expr):
            out.setdefault(name, set()).add(where)
    return out


def exposed_names(exposition: str) -> set[str]:
    """Every metric name a Prometheus text exposition offers to a query: its samples' names,
    and for each family (`# TYPE` is printed for a labelled family with no sample yet) the
    names its samples would take."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def registered() -> str:
    """The exposition of a worker's registry: the app with every agent, not started."""
    import app  # noqa: F401  (registers every agent, and with them every metric)

    return prometheus_client.generate_latest().decode()


def test_every_query_parses_as_promql() -> None:
    found = queries(dashboard())
    assert len(found) > 30
    for where, expr in found:
        try:
            promql_parser.parse(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}: {expr}")
    with pytest.raises(ValueError):  # the parser does refuse what Prometheus refuses
        promql_parser.parse("sum by (stage) (rate(tapestream_stage_records_in_total[$x]))")


def test_the_dashboard_names_only_metrics_a_worker_registers(registered: str) -> None:
    used = dashboard_metrics()
    missing = {name: sorted(where) for name, where in used.items()}
    for name in exposed_names(registered):
        missing.pop(name, None)
    assert not missing, missing
    # What the issue asks a dashboard to answer, each charted.
    for name in (
        "tapestream_stage_records_in_total",
        "tapestream_stage_records_out_total",
        "tapestream_consumer_lag",
        "tapestream_processing_lag_seconds",
        "tapestream_late_trades_total",
        "tapestream_sequence_gaps_total",
        "tapestream_suspect_books",
        "tapestream_signals_total",
        "tapestream_dead_letters_total",
        "tapestream_ws_clients",
        "tapestream_ws_events_dropped_total",
        "tapestream_ws_gap_notices_total",
        "tapestream_alerts_total",
        "tapestream_checkpoint_seconds_bucket",
        "tapestream_build_info",
        "tapestream_rocksdb_memory_bytes",
    ):
        assert name in used, name


def test_metrics_are_in_base_units_and_documented(registered: str) -> None:
    from app import metrics

    ours = {
        getattr(m, "_name", None) or m.name
        for m in vars(metrics).values()
        if hasattr(m, "_name") or isinstance(m, metrics.Polled)
    }
    assert "tapestream_consumer_lag" in ours and "tapestream_build_info" in ours
    docs = (ROOT / "docs/operations.md").read_text()
    undocumented = sorted(n for n in ours if n.removesuffix("_total") not in docs)
    assert not undocumented, undocumented
    for line in registered.splitlines():
        if line.startswith("# TYPE tapestream_"):
            name = line.split()[2]
            # Faust's own sensors share the prefix (the app id) and count milliseconds.
            if name.removesuffix("_total").removesuffix("_created") in ours:
                assert not re.search(r"_(ms|milliseconds|minutes|kb|mb)(_|$)", name), name


def test_panels_and_provisioning_hold_together() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] == "tapestream"
    every = panels(board["panels"])
    assert len({p["id"] for p in every}) == len(every)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for p in every:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
            assert p.get("description"), p["title"]
    (source,) = yaml.safe_load((PROVISIONING / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["uid"] == ds["current"]["value"]
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards/tapestream.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    scrape = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    workers = jobs["tapestream-workers"]
    assert workers["metrics_path"] == "/metrics"
    assert "127.0.0.1:6066" in workers["static_configs"][0]["targets"]
    interval = source["jsonData"]["timeInterval"]
    assert scrape["global"]["scrape_interval"] == interval
    assert "credentials_file:" in PROMETHEUS.read_text()  # how to scrape with tokens on
