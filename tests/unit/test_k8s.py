"""deploy/k8s against Kubernetes' own API schemas and against tapestream: every manifest validates
(kubernetes-validate, strict: an unknown field fails too) with the schemas it bundles, nothing
fetched; and the probes, the volume, the settings, the secrets, the image and the command hold
together with app/settings.py, docs/web.md, docs/live.md and deploy/Dockerfile."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.access import OPERATOR_VARIABLE, READ_VARIABLE, AccessError, read_tokens
from app.settings import Settings, load_settings
from tests.conftest import ROOT

K8S = ROOT / "deploy/k8s"
TEMPLATE = "secret.template.yaml"
# The oldest Kubernetes the manifests are meant for (no field newer than it) and the newest the
# validator bundles: a field removed or renamed on the way fails one of the two.
SCHEMA_VERSIONS = ("1.30", "1.37")
DOCKERFILE = (ROOT / "deploy/Dockerfile").read_text()
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

Doc = dict[str, Any]


def _docs(name: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
RESOURCES = [(name, doc) for name in KUSTOMIZATION["resources"] for doc in _docs(name)]
MANIFESTS = [*RESOURCES, *((TEMPLATE, doc) for doc in _docs(TEMPLATE))]


def one(kind: str, name: str | None = None) -> Doc:
    found = [d for _, d in MANIFESTS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def pod_specs() -> dict[str, Doc]:
    """The pod template of every workload, by its kind."""
    return {
        d["kind"]: d["spec"]["template"]
        for _, d in MANIFESTS
        if d["kind"] in ("StatefulSet", "Deployment")
    }


def containers(pod: Doc) -> list[Doc]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def flag(command: list[str], name: str) -> str:
    assert command.count(name) == 1, (name, command)
    return command[command.index(name) + 1]


def probe_port(container: Doc, probe: Doc) -> int:
    port = probe["httpGet"]["port"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return named[port] if isinstance(port, str) else port


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def dockerfile_cmd() -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1))


def dockerfile_env(name: str) -> str:
    return re.search(rf"^\s*(?:ENV\s+)?{name}=(\S+)", DOCKERFILE, re.M).group(1)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt at the network fails the test: the schemas must come with the package."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network use during validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_manifest_fits_the_kubernetes_schemas(version: str, offline: None) -> None:
    assert MANIFESTS
    for name, doc in MANIFESTS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {path}: {exc.message}")


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == files - {TEMPLATE}
    # Namespace-agnostic: `kubectl apply -k ... -n NS` or kustomize's `namespace:` decides.
    assert all("namespace" not in d["metadata"] for _, d in MANIFESTS)
    # The one image, as deploy/Dockerfile's build command tags it, pulled from where the
    # kustomization says.
    tag = re.search(r"docker build .*-t (\S+)", DOCKERFILE).group(1)
    assert [i["name"] for i in KUSTOMIZATION["images"]] == [tag]
    for pod in pod_specs().values():
        assert {c["image"] for c in containers(pod)} == {tag}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_resources_with_the_image_set() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in built} == {
        (d["kind"], d["metadata"]["name"]) for _, d in RESOURCES
    }
    image = KUSTOMIZATION["images"][0]
    for d in built:
        if d["kind"] in ("StatefulSet", "Deployment"):
            for c in containers(d["spec"]["template"]):
                assert c["image"] == f"{image['newName']}:{image['newTag']}"


def test_every_variable_is_one_tapestream_reads() -> None:
    """ConfigMap keys, Secret keys and container env: each a setting of app/settings.py or a
    variable of docs/configuration.md's table; the downward API's only to expand a command."""
    table = (ROOT / "docs/configuration.md").read_text()
    first_cells = [ln.split("|")[1] for ln in table.splitlines() if ln.startswith("| `")]
    known = {f.description for f in Settings.model_fields.values()} | set(
        re.findall(r"`([A-Z][A-Z0-9_]+)`", "\n".join(first_cells))
    )
    config = one("ConfigMap", "tapestream-config")
    secret = one("Secret", "tapestream-secrets")
    named = {*config["data"], *secret["stringData"]}
    for pod in pod_specs().values():
        for c in containers(pod):
            for ref in c.get("envFrom", []):
                assert ref == {"configMapRef": {"name": config["metadata"]["name"]}}
            for name, e in env_of(c).items():
                # an entry that repeats a ConfigMap key would silently override it
                assert name not in config["data"] or not c.get("envFrom"), name
                source = e.get("valueFrom", {})
                if "fieldRef" in source:
                    assert f"$({name})" in " ".join(c["command"]), name
                    continue
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] in secret["stringData"] and ref["key"] == name
                named.add(name)
    assert not named - known, f"variables tapestream does not read: {sorted(named - known)}"
    # And the ConfigMap's values are settings app/settings.py takes.
    s = load_settings(config["data"])
    assert s.replication >= 3 and 2 <= s.min_insync < s.replication


def test_shared_settings_are_those_of_the_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    shared = compose["x-tapestream-env"]
    data = one("ConfigMap", "tapestream-config")["data"]
    assert set(shared) <= set(data)
    assert data["TAPESTREAM_PROCESSING_GUARANTEE"] == shared["TAPESTREAM_PROCESSING_GUARANTEE"]
    worker = compose["services"]["worker"]
    assert worker["environment"]["TAPESTREAM_WEB_HOST"] == "0.0.0.0"
    [state] = [v.split(":")[1] for v in worker["volumes"] if v.startswith("worker-state:")]
    sts = pod_specs()["StatefulSet"]["spec"]["containers"][0]
    assert env_of(sts)["TAPESTREAM_DATA_DIR"]["value"] == state


def test_workers_probe_ready_and_health_on_their_web_port() -> None:
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]
    [worker] = pod["spec"]["containers"]
    env = env_of(worker)
    values = {k: e["value"] for k, e in env.items() if "value" in e}
    settings = load_settings({**one("ConfigMap")["data"], **values})
    assert worker["command"][: len(dockerfile_cmd())] == dockerfile_cmd()
    web = settings.web_port
    assert [p["containerPort"] for p in worker["ports"] if p["name"] == "web"] == [web]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    assert worker["startupProbe"]["httpGet"]["path"] == "/health"
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe_port(worker, worker[kind]) == web, kind
    # /health stays 200 while tables restore; the probes that restart a worker leave it minutes
    # to start (imports, broker, kernels) and a minute of silence once it runs.
    start, live = worker["startupProbe"], worker["livenessProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 300
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60


def test_workers_keep_table_state_on_their_volume_claim() -> None:
    sts = one("StatefulSet")
    [worker] = sts["spec"]["template"]["spec"]["containers"]
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    data_dir = env_of(worker)["TAPESTREAM_DATA_DIR"]["value"]
    [mount] = [m for m in worker["volumeMounts"] if m["mountPath"] == data_dir]
    assert mount["name"] in claims and not mount.get("readOnly")
    assert data_dir == dockerfile_env("TAPESTREAM_DATA_DIR")
    retention = sts["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_workers_advertise_their_own_address_to_their_peers() -> None:
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]
    [worker] = pod["spec"]["containers"]
    service = sts["spec"]["serviceName"]
    assert flag(worker["command"], "--web-host") == f"$(POD_NAME).{service}"
    pod_name = env_of(worker)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod_name == "metadata.name"
    headless = one("Service", service)["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert matches(headless["selector"], pod["metadata"]["labels"])
    # The clients' Service, on the web port, and the disruption budget take the same pods.
    clients = one("Service", "tapestream")["spec"]
    assert matches(clients["selector"], pod["metadata"]["labels"])
    assert [p["targetPort"] for p in clients["ports"]] == ["web"]
    pdb = one("PodDisruptionBudget")["spec"]
    assert pdb["selector"] == sts["spec"]["selector"] and pdb["maxUnavailable"] == 1


def test_workers_are_at_most_the_partitions() -> None:
    partitions = load_settings(one("ConfigMap")["data"]).partitions
    assert 1 <= one("StatefulSet")["spec"]["replicas"] <= partitions


def test_workers_bound_beyond_loopback_have_tokens() -> None:
    [worker] = pod_specs()["StatefulSet"]["spec"]["containers"]
    env = env_of(worker)
    assert env["TAPESTREAM_WEB_HOST"]["value"] not in LOOPBACK
    assert "TAPESTREAM_WEB_INSECURE" not in env
    for name in (READ_VARIABLE, OPERATOR_VARIABLE):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "tapestream-secrets"


def test_the_compiled_kernels_reach_a_writable_numba_cache() -> None:
    """Numba takes a cache directory only if it can write there; the image's is read-only."""
    cache = dockerfile_env("NUMBA_CACHE_DIR")
    for kind, pod in pod_specs().items():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        [init] = [c for c in pod["spec"]["initContainers"] if c["name"] == "numba-cache"]
        [into] = init["volumeMounts"]
        assert init["command"] == ["cp", "-R", f"{cache}/.", f"{into['mountPath']}/"], kind
        [main] = pod["spec"]["containers"]
        [mount] = [m for m in main["volumeMounts"] if m["mountPath"] == cache]
        assert mount["name"] == into["name"] and "emptyDir" in volumes[mount["name"]], kind


def test_pods_run_unprivileged_with_a_read_only_root() -> None:
    for kind, pod in pod_specs().items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, kind
        assert spec["automountServiceAccountToken"] is False, kind
        # Service links would put TAPESTREAM_<SERVICE>_PORT variables beside the settings.
        assert spec["enableServiceLinks"] is False, kind
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (kind, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (kind, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (kind, c["name"])
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) >= {"cpu", "memory"}, (kind, c["name"])


def test_one_live_source_probed_on_its_status_port() -> None:
    deployment = one("Deployment", "tapestream-live")
    # never two sources at once (docs/live.md): one replica, the old pod gone before the new
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]
    [live] = pod["spec"]["containers"]
    command = live["command"]
    assert command[:4] == ["faust", "-A", "app", "live"]
    options = set(re.findall(r"^\| `(--[a-z-]+)", (ROOT / "docs/live.md").read_text(), re.M))
    assert {a for a in command if a.startswith("--")} <= options
    assert flag(command, "--dataset") and flag(command, "--symbols")
    port = int(flag(command, "--web-port"))
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert live[kind]["httpGet"]["path"] == "/status", kind
        assert probe_port(live, live[kind]) == port, kind
    env = env_of(live)
    assert env["TAPESTREAM_WEB_HOST"]["value"] not in LOOPBACK  # the kubelet must reach it
    assert env["DATABENTO_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "DATABENTO_API_KEY"
    # /status takes no token: no Service publishes it
    for _, d in MANIFESTS:
        if d["kind"] == "Service":
            assert not matches(d["spec"]["selector"], pod["metadata"]["labels"])


def test_the_secret_template_holds_no_secret() -> None:
    secret = one("Secret", "tapestream-secrets")
    assert "data" not in secret  # nothing base64-encoded, where a real value would hide
    for name, value in secret["stringData"].items():
        assert "REPLACE" in value, name
        assert not re.search(r"[A-Za-z0-9_+/=-]{16,}", value), name  # nothing key-like
        assert not value.startswith("db-"), name  # the form of a Databento key
    # A worker given the placeholders refuses to start instead of serving behind them.
    for name in (READ_VARIABLE, OPERATOR_VARIABLE):
        with pytest.raises(AccessError):
            read_tokens(secret["stringData"], name)
