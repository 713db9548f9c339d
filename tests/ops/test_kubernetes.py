"""The Kubernetes manifests (deploy/kubernetes/): every kustomization renders with kustomize
(`kubectl kustomize`), every rendered resource validates against the Kubernetes OpenAPI
schemas of each version from 1.29 (native sidecars on by default) to the newest that
kubernetes-validate carries, strictly (unknown fields refused), and the Prometheus Operator
resources against tests/ops/crd_schemas.py. Then the pod is checked for what makes intact a
working sidecar: ordering, probes, the shared socket, the config as intact resolves it in the
pod, keys from the Secret, and a PodMonitor and PrometheusRule that match the rest."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from intact.config import Overrides, resolve
from intact.telemetry.runtime import DEFAULT_SHUTDOWN_TIMEOUT

from .crd_schemas import SCHEMAS

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
RULES = REPO / "deploy" / "prometheus" / "intact-rules.yml"
BUILDER = KUBERNETES / "monitoring" / "build_prometheusrule.py"
APPS = ("base", "overlays/example")  # an app pod with its sidecar
KUSTOMIZATIONS = (*APPS, "monitoring")
SECRET = "intact-api-keys"


def kubernetes_versions() -> list[str]:
    latest = int(kubernetes_validate.latest_version().split(".")[1])
    return [f"1.{minor}" for minor in range(29, latest + 1)]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Kustomization directory -> the resources `kubectl kustomize` renders from it."""
    out = {}
    for name in KUSTOMIZATIONS:
        done = subprocess.run(
            [kubectl, "kustomize", str(KUBERNETES / name)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {done.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return out


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (item,) = [i for i in items if i["name"] == name]
    return item


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` breaks its schema (empty when valid)."""
    where = f"{doc['kind']} {doc['metadata']['name']}"
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        validator = jsonschema.Draft202012Validator(SCHEMAS[doc["kind"]])
        return [f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    errors = []
    for version in kubernetes_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where} on Kubernetes {version}: {exc.json_path}: {exc.message}")
    return errors


def test_every_rendered_resource_is_valid_for_every_supported_kubernetes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in rendered.items()}
    assert kinds == {
        "base": ["ConfigMap", "Deployment"],
        "overlays/example": ["ConfigMap", "Deployment"],
        "monitoring": ["PodMonitor", "PrometheusRule"],
    }
    errors = [error for docs in rendered.values() for doc in docs for error in schema_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_validation_refuses_a_misspelt_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = copy.deepcopy(only(rendered["base"], "Deployment"))
    pod = deployment["spec"]["template"]["spec"]
    by_name(pod["initContainers"], "intact")["restartpolicy"] = "Always"
    assert any("'restartpolicy' was unexpected" in e for e in schema_errors(deployment))
    # before 1.28 an init container had no restartPolicy: no native sidecars
    sidecar = only(rendered["base"], "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(sidecar, "1.27", strict=True)
    monitor = copy.deepcopy(only(rendered["monitoring"], "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert any("'intervall' was unexpected" in e for e in schema_errors(monitor))
    rules = copy.deepcopy(only(rendered["monitoring"], "PrometheusRule"))
    del rules["spec"]["groups"][0]["rules"][0]["expr"]
    assert any("'expr' is a required property" in e for e in schema_errors(rules))


def test_the_prometheusrule_is_generated_from_the_rule_file_promtool_tests(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    done = subprocess.run(
        [sys.executable, str(BUILDER), "--check"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rule_file = yaml.safe_load(RULES.read_text())
    assert only(rendered["monitoring"], "PrometheusRule")["spec"]["groups"] == rule_file["groups"]


def sidecar_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(only(docs, "Deployment")["spec"]["template"]["spec"])


@pytest.mark.parametrize("app", APPS)
def test_intact_is_a_native_sidecar_that_starts_before_and_stops_after_the_app(
    rendered: dict[str, list[dict[str, Any]]], app: str
) -> None:
    pod = sidecar_pod(rendered[app])
    (intact,) = pod["initContainers"]
    assert intact["name"] == "intact" and intact["restartPolicy"] == "Always"
    # the app starts once this passes, and intact serves /healthz only once its socket listens
    (port,) = intact["ports"]
    probes = {
        kind: (intact[kind]["httpGet"]["path"], intact[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", port["name"]),
        "livenessProbe": ("/healthz", port["name"]),
        "readinessProbe": ("/readyz", port["name"]),
    }
    env = {e["name"]: e.get("value") for e in intact["env"]}
    assert env["INTACT_METRICS_ADDR"] == f"0.0.0.0:{port['containerPort']}"
    assert intact["args"] == ["--config", "/etc/intact/intact.toml"]
    # a Service named intact would inject INTACT_SERVICE_HOST etc., which intact refuses
    assert pod["enableServiceLinks"] is False
    assert intact["resources"]["requests"].keys() == {"cpu", "memory"}
    assert intact["resources"]["limits"]["memory"]


@pytest.mark.parametrize("app", APPS)
def test_the_app_and_intact_share_the_socket_directory_and_nothing_else_writable(
    rendered: dict[str, list[dict[str, Any]]], app: str
) -> None:
    pod = sidecar_pod(rendered[app])
    (intact,) = pod["initContainers"]
    (app_container,) = pod["containers"]
    socket_path = Path(by_name(intact["env"], "INTACT_SOCKET")["value"])
    mounts = {m["mountPath"]: m["name"] for m in intact["volumeMounts"]}
    volume = by_name(pod["volumes"], mounts[str(socket_path.parent)])
    assert "emptyDir" in volume
    assert {"name": volume["name"], "mountPath": str(socket_path.parent)} in (
        app_container["volumeMounts"]
    )
    # the only writable path of intact: read-only root filesystem, non-root, no privileges
    security = intact["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert all(m.get("readOnly") for m in intact["volumeMounts"] if m["name"] != volume["name"])
    # the socket (mode 0660) belongs to the pod's fsGroup, which the app's processes have
    assert pod["securityContext"]["fsGroup"] == security["runAsGroup"]


@pytest.mark.parametrize("app", APPS)
def test_the_config_resolves_in_the_pod_with_every_key_from_the_secret(
    rendered: dict[str, list[dict[str, Any]]], app: str, tmp_path: Path
) -> None:
    """The ConfigMap's intact.toml under the sidecar's environment, through the same
    `resolve` as `intact run` (an unknown INTACT_* variable or key would fail here)."""
    docs = rendered[app]
    pod = sidecar_pod(docs)
    (intact,) = pod["initContainers"]
    mount = by_name(intact["volumeMounts"], "intact-config")
    config_map = only(docs, "ConfigMap")
    assert (
        by_name(pod["volumes"], "intact-config")["configMap"]["name"]
        == (config_map["metadata"]["name"])
    )
    config_path = Path(intact["args"][1])
    assert config_path.parent == Path(mount["mountPath"])
    toml = tmp_path / config_path.name
    toml.write_text(config_map["data"][config_path.name])
    literal = {e["name"]: e["value"] for e in intact["env"] if "value" in e}
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in intact["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert all(ref["name"] == SECRET for ref in from_secret.values())
    environ = {**literal, **{name: "sk-from-the-secret" for name in from_secret}}
    cfg = resolve(Overrides(config=str(toml)), environ=environ)
    assert cfg.socket_path() == literal["INTACT_SOCKET"]
    assert cfg.server.metrics_addr == literal["INTACT_METRICS_ADDR"]
    assert {u.api_key_env for u in cfg.upstreams} == set(from_secret)
    # SIGTERM reaches intact after the app has exited; its drain must fit in what is left
    assert pod["terminationGracePeriodSeconds"] > (
        cfg.server.drain_timeout + DEFAULT_SHUTDOWN_TIMEOUT
    )


def test_the_podmonitor_scrapes_every_sidecar_as_the_job_the_alerts_expect(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    monitor = only(rendered["monitoring"], "PodMonitor")["spec"]
    assert monitor["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "intact"} in (
        endpoint["relabelings"]
    )
    assert 'up{job="intact"}' in RULES.read_text()
    for app in APPS:
        template = only(rendered[app], "Deployment")["spec"]["template"]
        assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        (intact,) = template["spec"]["initContainers"]
        assert endpoint["port"] in {p["name"] for p in intact["ports"]}


def test_the_example_overlay_sets_the_images_and_replaces_the_config(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    base, example = (only(rendered[name], "ConfigMap") for name in APPS)
    assert base["data"] != example["data"]
    assert example["metadata"]["namespace"] == "chat"
    pod = sidecar_pod(rendered["overlays/example"])
    images = {c["name"]: c["image"] for c in (*pod["initContainers"], *pod["containers"])}
    assert images == {
        "intact": "registry.example.com/platform/intact:0.1.0",
        "app": "registry.example.com/chat/chat-api:2.3.1",
    }


def test_the_resource_requests_cite_the_soak_the_docs_report() -> None:
    ops = (REPO / "docs" / "operations.md").read_text()
    idle = re.search(r"\| idle, before \| ([\d.]+) MiB", ops)
    assert idle, "docs/operations.md has no soak table"
    manifest = (KUBERNETES / "base" / "deployment.yaml").read_text()
    comments = " ".join(line.strip().lstrip("#").strip() for line in manifest.splitlines())
    assert f"{round(float(idle.group(1)))} MiB RSS idle" in comments
    # The request covers what the soak settled at (65 MiB with 32 streams).
    assert "memory: 96Mi" in manifest
