"""The Helm charts, rendered by Helm's own engine (helm-python-sdk, no helm binary, no
cluster, no network) and checked against the Kubernetes OpenAPI schemas
(kubernetes-validate's bundled ones, strict: unknown fields are errors).

Charts: helm/lipservice in `mode: gateway` and `mode: sidecar`, and the worked example
helm/examples/app-with-sidecar that includes the sidecar into an application Deployment.
The config each one renders into its ConfigMap must pass `lipservice validate`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lipservice"
EXAMPLE = REPO / "helm" / "examples" / "app-with-sidecar"
# The oldest release with native sidecars on by default, and the newest schemas shipped.
K8S_VERSIONS = ("1.29.0", "1.37.0")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
SECRET_ENV = {"POSTHOG_API_KEY", "OPENAI_API_KEY", "LIPSERVICE_API_TOKEN", "LIPSERVICE_REDIS_URL"}

Manifest = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def render(chart: Path, values: dict[str, Any] | None = None, *, name: str = "demo",
           namespace: str = "obs") -> list[Manifest]:
    """Every object the chart renders (NOTES.txt and empty templates left out)."""
    with helm.Chart.load(chart) as loaded:
        out = loaded.render(values=values, name=name, namespace=namespace)
    docs: list[Manifest] = []
    for path, text in sorted(out.items()):
        if path.endswith((".yaml", ".yml")):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[Manifest]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def check_monitor(doc: Manifest) -> None:
    """prometheus-operator CRDs have no schema in kubernetes-validate: check their shape."""
    spec = doc["spec"]
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert spec["selector"]["matchLabels"]
    endpoints = spec["endpoints"] if doc["kind"] == "ServiceMonitor" else spec["podMetricsEndpoints"]
    assert [e["path"] for e in endpoints] == ["/metrics"]
    assert all(re.fullmatch(r"\d+[smh]", e["interval"]) for e in endpoints)


def validate_all(docs: list[Manifest]) -> None:
    """Every manifest against the Kubernetes schemas (strict), for each version tested."""
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            check_monitor(doc)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes "
                            f"{version}: {err.message} at {list(err.path)}")


def containers_of(deployment: Manifest) -> dict[str, Manifest]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def config_text(docs: list[Manifest], name: str) -> str:
    return one(docs, "ConfigMap", name)["data"]["config.yaml"]


def lipservice_validate(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``lipservice validate`` of a rendered config, with the environment the pod gets
    from its secret (the Redis URL; validate refuses the redis backend without one)."""
    path = tmp_path / "rendered-config.yaml"
    path.write_text(text, encoding="utf-8")
    env = {**os.environ, "LIPSERVICE_REDIS_URL": "redis://:pw@redis:6379/0"}
    return subprocess.run([sys.executable, "-m", "collector", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
                          env=env)


def assert_hardened_lipservice_container(c: Manifest) -> None:
    """Security context, probes, ports, secrets by reference and mounts of the container."""
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"ls-otlp-grpc": 4317, "ls-otlp-http": 4318, "ls-metrics": 8888}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ls-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ls-metrics"}
    assert c["args"][:3] == ["run", "-c", "/etc/lipservice/config.yaml"]

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/lipservice"]["readOnly"] is True
    assert "/var/lib/lipservice" in mounts and "/tmp" in mounts, \
        "state dir and /tmp are the only writable paths"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def secret_refs(c: Manifest) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", [])
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}


@pytest.fixture(scope="module")
def example_chart(tmp_path_factory) -> Path:
    """The example chart with its file:// dependency resolved into charts/, in a copy (the
    repository keeps no vendored archive). Offline: the dependency is a local path."""
    root = tmp_path_factory.mktemp("charts")
    shutil.copytree(REPO / "helm", root / "helm")
    example = root / "helm" / "examples" / "app-with-sidecar"
    shutil.rmtree(example / "charts", ignore_errors=True)
    helm.dependency_update(example, skip_refresh=True)
    assert list((example / "charts").glob("lipservice-*.tgz"))
    return example


# --------------------------------------------------------------------------- gateway


def test_gateway_renders_deployment_service_and_config(tmp_path):
    docs = render(CHART, {"existingSecret": "lipservice-secrets"})
    assert kinds(docs) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    validate_all(docs)

    dep = one(docs, "Deployment", "demo-lipservice")
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == 2
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    container = containers_of(dep)["lipservice"]
    assert_hardened_lipservice_container(container)
    assert "restartPolicy" not in container

    refs = secret_refs(container)
    assert set(refs) == SECRET_ENV
    assert all(r["name"] == "lipservice-secrets" and r["key"] == env and r["optional"] is True
               for env, r in refs.items())
    assert not any("value" in e and e["name"] in SECRET_ENV for e in container["env"]), \
        "secret values never appear in the manifest"

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["lipservice-config"]["configMap"]["name"] == "demo-lipservice-config"
    assert "emptyDir" in volumes["lipservice-state"], "emptyDir state volume by default"

    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "8888" and ann["prometheus.io/path"] == "/metrics"

    svc = one(docs, "Service")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "otlp-grpc": (4317, "ls-otlp-grpc"), "otlp-http": (4318, "ls-otlp-http"),
        "metrics": (8888, "ls-metrics")}
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    pod_labels = pod["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())

    proc = lipservice_validate(config_text(docs, "demo-lipservice-config"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ": ok (receivers: otlp;" in proc.stdout


def test_gateway_without_secret_sets_no_secret_env():
    container = containers_of(one(render(CHART), "Deployment"))["lipservice"]
    assert not secret_refs(container)


def test_gateway_options_hpa_pdb_servicemonitor_dashboard_pvc():
    values = {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                        "targetMemoryUtilizationPercentage": 80},
        "podDisruptionBudget": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "dashboards": {"enabled": True},
        "storage": {"persistence": {"enabled": True, "accessModes": ["ReadWriteMany"],
                                    "storageClassName": "nfs", "size": "2Gi"}},
        "posthog": {"host": "https://eu.i.posthog.com"},
    }
    docs = render(CHART, values)
    assert kinds(docs) == ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                           "PersistentVolumeClaim", "PodDisruptionBudget", "Service",
                           "ServiceAccount", "ServiceMonitor"]
    validate_all(docs)

    dep = one(docs, "Deployment")
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]

    pvc = one(docs, "PersistentVolumeClaim")
    state = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}["lipservice-state"]
    assert state == {"name": "lipservice-state",
                     "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"

    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"].items() <= one(docs, "Service")["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"

    env = {e["name"]: e.get("value") for e in containers_of(dep)["lipservice"]["env"]}
    assert env["POSTHOG_HOST"] == "https://eu.i.posthog.com"


def test_gateway_with_redis_shares_state_with_the_url_from_the_secret(tmp_path):
    values = {"existingSecret": "lipservice-secrets", "redis": {"enabled": True},
              "config": {"storage": {"redis": {"lease_ttl": "10s"}}}}
    docs = render(CHART, values)
    validate_all(docs)
    text = config_text(docs, "demo-lipservice-config")
    storage = yaml.safe_load(text)["storage"]
    assert storage == {"backend": "redis", "redis_url": "${env:LIPSERVICE_REDIS_URL}",
                       "directory": "/var/lib/lipservice",
                       "redis": {"namespace": "demo-lipservice", "lease_ttl": "10s"}}
    container = containers_of(one(docs, "Deployment"))["lipservice"]
    assert secret_refs(container)["LIPSERVICE_REDIS_URL"] == {
        "name": "lipservice-secrets", "key": "LIPSERVICE_REDIS_URL", "optional": True}
    ann = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ann["checksum/lipservice-config"] == hashlib.sha256(
        text.rstrip("\n").encode()).hexdigest()
    proc = lipservice_validate(text, tmp_path)
    assert proc.returncode == 0, proc.stderr
    named = render(CHART, {**values, "redis": {"enabled": True, "namespace": "shop"}})
    assert yaml.safe_load(config_text(named, "demo-lipservice-config"))["storage"]["redis"][
        "namespace"] == "shop"


def test_redis_without_a_secret_is_refused():
    with pytest.raises(helm.HelmRenderError, match="redis.enabled needs the Redis URL"):
        render(CHART, {"redis": {"enabled": True}})
    with pytest.raises(helm.HelmRenderError, match="redis.enabled needs the Redis URL"):
        render(CHART, {"redis": {"enabled": True}, "existingSecret": "s",
                       "secretKeys": {"LIPSERVICE_REDIS_URL": ""}})


def test_example_app_sidecars_can_share_state_through_redis(example_chart, tmp_path):
    docs = render(example_chart, {"lipservice": {"redis": {"enabled": True}}}, name="shop")
    validate_all(docs)
    text = one(docs, "ConfigMap")["data"]["config.yaml"]
    storage = yaml.safe_load(text)["storage"]
    assert storage["backend"] == "redis" and storage["redis"]["namespace"] == "shop-lipservice"
    assert lipservice_validate(text, tmp_path).returncode == 0


def test_gateway_pvc_read_write_once_needs_a_single_replica():
    rwo = {"storage": {"persistence": {"enabled": True}}}
    with pytest.raises(helm.HelmRenderError, match="storage.persistence with a ReadWriteOnce"):
        render(CHART, rwo)
    docs = render(CHART, {**rwo, "replicaCount": 1})
    validate_all(docs)
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}, \
        "a RWO volume cannot attach to the old and the new pod at once"


def test_config_checksum_rolls_pods_when_config_changes():
    def checksum_and_text(values):
        docs = render(CHART, values)
        ann = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return ann["checksum/lipservice-config"], config_text(docs, "demo-lipservice-config")

    base_sum, base_text = checksum_and_text(None)
    dry_sum, dry_text = checksum_and_text({"config": {"processors": {"sampling": {"dry_run": True}}}})
    assert base_sum != dry_sum
    # The annotation is the digest of the exact YAML in the ConfigMap.
    assert base_sum == hashlib.sha256(base_text.rstrip("\n").encode()).hexdigest()
    assert dry_sum == hashlib.sha256(dry_text.rstrip("\n").encode()).hexdigest()


# --------------------------------------------------------------------------- sidecar


def test_sidecar_mode_renders_only_the_shared_objects(tmp_path):
    docs = render(CHART, {"mode": "sidecar", "metrics": {"podMonitor": {"enabled": True}},
                          "dashboards": {"enabled": True}})
    assert kinds(docs) == ["ConfigMap", "ConfigMap", "PodMonitor"]
    validate_all(docs)
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"lipservice/sidecar": "demo-lipservice"}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "ls-metrics"
    proc = lipservice_validate(config_text(docs, "demo-lipservice-config"), tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_example_app_runs_lipservice_as_native_sidecar(example_chart, tmp_path):
    docs = render(example_chart, name="shop", namespace="shop")
    assert kinds(docs) == ["ConfigMap", "Deployment"]
    validate_all(docs)

    dep = one(docs, "Deployment", "shop-app-with-sidecar")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["lipservice"]
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar starts first, stops last"
    assert_hardened_lipservice_container(sidecar)
    assert set(secret_refs(sidecar)) == SECRET_ENV
    assert {r["name"] for r in secret_refs(sidecar).values()} == {"lipservice-secrets"}
    assert sidecar["resources"]["requests"] == {"cpu": "50m", "memory": "96Mi"}, \
        "the example's lipservice values reach the sidecar"

    app = {c["name"]: c for c in spec["containers"]}["app"]
    app_env = {e["name"]: e.get("value") for e in app["env"]}
    assert app_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4318"

    cm = one(docs, "ConfigMap")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["lipservice-config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert "emptyDir" in volumes["lipservice-state"]
    mounted = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounted <= set(volumes)

    meta = pod["metadata"]
    assert meta["labels"]["lipservice/sidecar"] == "shop-lipservice"
    assert meta["annotations"]["checksum/lipservice-config"] == hashlib.sha256(
        cm["data"]["config.yaml"].rstrip("\n").encode()).hexdigest()
    assert meta["annotations"]["prometheus.io/port"] == "8888"

    proc = lipservice_validate(cm["data"]["config.yaml"], tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_example_app_with_regular_sidecar_container(example_chart):
    docs = render(example_chart, {"lipservice": {"sidecar": {"native": False}}}, name="shop")
    validate_all(docs)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    sidecar = {c["name"]: c for c in spec["containers"]}["lipservice"]
    assert "restartPolicy" not in sidecar
    assert_hardened_lipservice_container(sidecar)
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"][:2] == ["python", "-c"], \
        "SIGTERM is delayed so the application flushes its logs through the sidecar first"


def test_rendered_config_that_lipservice_rejects_is_caught(tmp_path):
    """The ConfigMap check can fail: a typo in values.config renders (Helm does not know
    LipService's schema) but `lipservice validate` names the key."""
    docs = render(CHART, {"config": {"processors": {"sampling": {"dry_runn": True}}}})
    proc = lipservice_validate(config_text(docs, "demo-lipservice-config"), tmp_path)
    assert proc.returncode == 2
    assert "processors.sampling.dry_runn: unknown key" in proc.stderr


# --------------------------------------------------------------------------- chart hygiene


@pytest.mark.parametrize("values,message", [
    ({"mode": "daemonset"}, "/mode"),
    ({"replicas": 3}, "replicas"),
    ({"ports": {"otlpHttp": 70000}}, "/ports/otlpHttp"),
])
def test_values_schema_rejects_bad_values(values, message):
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        render(CHART, values)


def test_charts_lint_clean(example_chart):
    for chart, opts in ((CHART, {}), (example_chart, {"with_subcharts": True})):
        report = helm.lint(chart, strict=True, **opts)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"] and not problems, report


def test_readme_documents_every_value():
    """Each values.yaml key (to the depth the table lists; `config` is free-form) has a row
    in the chart README's settings table."""
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))

    def keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in tree.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and v and k not in ("config", "resources", "securityContext",
                                                       "podSecurityContext", "livenessProbe",
                                                       "readinessProbe", "emptyDir", "secretKeys"):
                out.extend(keys(v, path + "."))
            else:
                out.append(path)
        return out

    missing = [k for k in keys(values) if k not in documented]
    assert not missing, f"values without a README row: {missing}"


# --------------------------------------------------------------------------- dashboard

# Metric names the dashboard uses that no code exposes yet: they are the names the sampling
# processor and the control loop are expected to publish (see the deploy report); the
# dashboard panels that use them stay empty until then.
ASSUMED_METRICS = {
    "lipservice_sampling_records_kept_total",     # labels: reason (and pattern for the top-K table)
    "lipservice_sampling_records_dropped_total",  # labels: pattern for the top-K table
    "lipservice_sampling_bytes_kept_total",
    "lipservice_sampling_bytes_dropped_total",
    "lipservice_policy_version",
    "lipservice_llm_calls_total",                 # label: outcome (optional)
    "lipservice_patterns",
}


def exposed_metric_names() -> set[str]:
    """Names as a Prometheus scrape shows them (counters with `_total`)."""
    from collector.metrics import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_dashboard_uses_known_metric_names():
    dashboard = json.loads((CHART / "dashboards" / "lipservice.json").read_text(encoding="utf-8"))
    assert dashboard["uid"] == "lipservice" and dashboard["panels"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:otelcol|lipservice)_[a-z_]+)\b", e)}
    exposed = exposed_metric_names()
    unknown = used - exposed - ASSUMED_METRICS
    assert not unknown, f"dashboard metrics that nothing exposes: {sorted(unknown)}"
    # The issue's panels: in/out, exporter failures, queue size, processors, policy, LLM.
    for name in ("otelcol_receiver_accepted_log_records_total",
                 "otelcol_exporter_sent_log_records_total",
                 "otelcol_exporter_send_failed_log_records_total", "otelcol_exporter_queue_size",
                 "otelcol_processor_incoming_items_total", "otelcol_processor_outgoing_items_total",
                 "lipservice_sampling_bytes_kept_total", "lipservice_sampling_records_kept_total",
                 "lipservice_policy_version", "lipservice_llm_calls_total"):
        assert name in used, name
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Record reduction", "Byte reduction", "Drops by reason", "Sending queue",
            "Top patterns by records dropped"} <= titles


def test_dashboard_configmap_carries_the_sidecar_label():
    docs = render(CHART, {"dashboards": {"enabled": True, "annotations": {"grafana_folder": "Logs"}}})
    cm = one(docs, "ConfigMap", "demo-lipservice-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Logs"}
    shipped = json.loads(cm["data"]["lipservice.json"])
    assert shipped == json.loads((CHART / "dashboards" / "lipservice.json").read_text(encoding="utf-8"))
    assert not [d for d in render(CHART) if d["metadata"]["name"].endswith("-dashboards")], \
        "the dashboard ConfigMap is optional (off by default)"
