"""Static checks of what cannot run here (no Docker engine, no cluster): compose, k8s, Prometheus, Grafana."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.fields import FieldInfo

from shared.runtime.settings import ServiceSettings
from services.assessment.config import AssessmentSettings
from services.enrollment.config import EnrollmentSettings
from services.subsidy.config import SubsidySettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
SETTINGS: dict[str, type[ServiceSettings]] = {
    "enrollment": EnrollmentSettings, "assessment": AssessmentSettings, "subsidy": SubsidySettings,
}
PORTS = {"enrollment": 8001, "assessment": 8002, "subsidy": 8003}
SERVICE_IMAGE = "skills-subsidy"
# Official images the manifests may pull, pinned to a version (never :latest).
OFFICIAL = {"apache/kafka", "postgres", "prom/prometheus", "grafana/grafana"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (apt-get install -y prometheus; deploy/local/bootstrap.sh "
    "should run `ensure_cmd promtool prometheus`)",
)


def env_names(settings: type[ServiceSettings]) -> set[str]:
    """Every environment variable a settings class reads (aliases unprefixed, fields prefixed)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, field in settings.model_fields.items():
        assert isinstance(field, FieldInfo)
        alias = field.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


def k8s_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in k8s_documents() if d["kind"] == kind}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_manifest_is_valid_yaml() -> None:
    paths = [COMPOSE, *K8S.glob("*.yaml"), *DEPLOY.glob("prometheus/*.yml"),
             *DEPLOY.glob("compose/*.yml"), *DEPLOY.glob("grafana/provisioning/*/*.yml")]
    assert len(paths) >= 12
    for path in paths:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_the_settings_know_their_environment_variables() -> None:
    assert {"KAFKA_BOOTSTRAP_SERVERS", "PERSON_ID_SECRET", "SUBSIDY_DATABASE_URL",
            "SUBSIDY_POLICY_DIR", "SUBSIDY_HTTP_PORT"} <= env_names(SubsidySettings)
    assert "DATA_ENCRYPTION_KEY" in env_names(EnrollmentSettings)
    assert "ENROLLMENT_DATABASE_URL" not in env_names(SubsidySettings)


def test_compose_sets_only_real_settings_of_each_service() -> None:
    services = compose()["services"]
    for name, settings in SETTINGS.items():
        unknown = set(services[name]["environment"]) - env_names(settings)
        assert not unknown, f"compose {name} sets {sorted(unknown)}, not settings of the service"


def test_compose_runs_each_service_on_its_port_from_the_dockerfile_image() -> None:
    services = compose()["services"]
    for name, port in PORTS.items():
        service = services[name]
        assert service["command"][0] == f"services.{name}"
        assert service["environment"][f"{name.upper()}_HTTP_PORT"] == str(port)
        assert service["environment"][f"{name.upper()}_HTTP_HOST"] == "0.0.0.0"
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"]  # never on every interface
        assert service["image"].split(":")[0] == SERVICE_IMAGE
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"] / "deploy" / "Dockerfile").exists()
        assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_compose_images_are_official_and_pinned() -> None:
    for name, service in compose()["services"].items():
        image, _, tag = service["image"].partition(":")
        assert image in OFFICIAL | {SERVICE_IMAGE}, f"{name}: unknown image {image}"
        assert tag and tag != "latest", f"{name}: pin {image} to a version"


def test_compose_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"


def test_the_dockerfile_copies_what_exists_and_exposes_the_ports() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / source).exists(), source
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert set(PORTS.values()) <= exposed


def deployments() -> dict[str, dict[str, Any]]:
    found = k8s_kind("Deployment")
    assert set(found) == set(SETTINGS)
    return found


def test_k8s_deployments_set_only_real_settings_of_each_service() -> None:
    configmaps, secrets = k8s_kind("ConfigMap"), k8s_kind("Secret")
    for name, deployment in deployments().items():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names |= set(configmaps[source["configMapRef"]["name"]]["data"])
                if "secretRef" in source:
                    names |= set(secrets[source["secretRef"]["name"]]["stringData"])
            unknown = names - env_names(SETTINGS[name])
            assert not unknown, f"k8s {name}/{container['name']} sets {sorted(unknown)}"
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], entry
            assert container["image"].split(":")[0] == SERVICE_IMAGE
            assert container["args"][0] == f"services.{name}"


def test_k8s_probes_hit_readyz_and_healthz_on_the_service_port() -> None:
    services = k8s_kind("Service")
    for name, deployment in deployments().items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": PORTS[name], "metrics": PORTS[name] + 1100}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[f"{name.upper()}_HTTP_PORT"] == str(PORTS[name])
        assert env[f"{name.upper()}_HTTP_HOST"] == "0.0.0.0"
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(PORTS[name] + 1100)  # METRICS_PORT
        [port] = services[name]["spec"]["ports"]
        assert port["port"] == PORTS[name] and port["targetPort"] == "http"
        assert services[name]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_k8s_mounts_the_policies_configmap_where_the_subsidy_service_reads_them() -> None:
    spec = deployments()["subsidy"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "policies"]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SUBSIDY_POLICY_DIR"] == mount["mountPath"]
    assert volume["configMap"]["name"] == "subsidy-policies"


def test_the_policies_configmap_equals_the_policy_files() -> None:
    data = k8s_kind("ConfigMap")["subsidy-policies"]["data"]
    files = {p.name: p.read_text() for p in (ROOT / "services/subsidy/policies").glob("*.json")}
    assert data == files, "regenerate deploy/k8s/policies.yaml (see its header)"


def test_k8s_autoscaling_follows_the_consumer_group_of_each_service() -> None:
    scaled = k8s_kind("ScaledObject")
    assert set(scaled) == set(SETTINGS)
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] == name
        [trigger] = obj["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == SETTINGS[name]().group_id
        assert obj["spec"]["maxReplicaCount"] <= int(k8s_kind("ConfigMap")["skills-config"]["data"]["TOPIC_PARTITIONS"])


def test_k8s_topics_are_replicated_and_keep_their_history() -> None:
    config = k8s_kind("ConfigMap")["skills-config"]["data"]
    settings = ServiceSettings.model_validate(config)
    assert settings.topic_replication_factor >= 3
    assert 2 <= settings.topic_min_insync_replicas < settings.topic_replication_factor
    assert settings.topic_retention_ms == -1  # tools.rebuild needs every record
    assert settings.dlq_retention_ms > 0


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@needs_promtool
def test_promtool_accepts_the_alert_rules_and_their_unit_tests() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"],
                 ["check", "config", "prometheus.yml"]):
        run = subprocess.run([PROMTOOL, *args],  # type: ignore[list-item]  # skipped without promtool
                             cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}{run.stderr}"


@needs_promtool
def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    run = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=tmp_path,  # type: ignore[list-item]  # as above
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_prometheus_scrapes_the_three_service_ports() -> None:
    local = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    in_compose = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    for config, host in ((local, "127.0.0.1"), (in_compose, None)):
        [job] = config["scrape_configs"]
        targets = {c["labels"]["service"]: c["targets"] for c in job["static_configs"]}
        assert targets == {n: [f"{host or n}:{p}"] for n, p in PORTS.items()}


def test_every_alert_has_a_severity_and_a_summary() -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "ServiceDown", "ServiceNotReady", "ConsumerLagGrowing", "DeadLetters", "OutboxStale",
        "BudgetNearlySpent", "RejectionReasonSpike"}
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "warning", "finance"}
        assert rule["annotations"]["summary"]


def test_the_grafana_dashboard_is_what_its_generator_writes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboard", DEPLOY / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DEPLOY / "grafana" / "dashboards" / "skills.json").read_text() == module.render(), (
        "run .venv/bin/python deploy/grafana/dashboard.py")


def test_the_grafana_dashboard_has_a_row_per_service_and_a_business_row() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "skills.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [f"{n}: runtime" for n in PORTS] + ["subsidy: money (finance)"]
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert uids == {d["uid"] for d in provisioned["datasources"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
