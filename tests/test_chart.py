"""The Helm chart, rendered by a real helm (tools/install_helm.py) with the default values and the
scenarios in charts/tuneloop/ci/: valid Kubernetes, Pod Security "restricted", least-privilege RBAC,
every image from the private registry, values checked by the schema, and checkov's verdict."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_registry import free_port, wait_until_healthy

from tuneloop.api import finetunejob, modeldeployment
from tuneloop.cli import build_parser, main
from tuneloop.config import OperatorConfig
from tuneloop.feedback.auth import TOKEN_FILE_ENV, TOKENS_FILE_ENV
from tuneloop.feedback.database import DATABASE_URL_FILE_ENV
from tuneloop.reconcile.modeldeployment import target_for
from tuneloop.runtime.manifests import training_objects
from tuneloop.registry.webhooks import SECRET_FILE_ENV as WEBHOOK_SECRET_FILE_ENV
from tuneloop.runtime.serving_manifests import deployment

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "tuneloop"
SCENARIOS = {"defaults": None, **{path.name.removesuffix("-values.yaml"): path
                                  for path in sorted((CHART / "ci").glob("*-values.yaml"))}}
NAMESPACE = "tuneloop-system"
K8S_VERSION = "1.33.0"
# Kinds the Kubernetes schemas do not hold: kopf's peering and the Prometheus operator's.
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor", "PrometheusRule"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
PRIVATE_REGISTRY = "registry.corp.internal:5000/mirror"


def tool(name: str) -> str:
    """A tool `make setup` installs beside the project's Python (checkov in a virtualenv of its own)."""
    beside_python = Path(sys.executable).parent
    for candidate in (beside_python / name, beside_python.parent / name / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make setup`")
    return found


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)


def render(values: Path | None = None, *settings: str) -> list[dict[str, Any]]:
    args = ["template", "t", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    for setting in settings:
        args += ["--set", setting]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=list(SCENARIOS))
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(SCENARIOS[request.param])


def values_of(scenario: str) -> dict[str, Any]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    path = SCENARIOS[scenario]
    return merged(defaults, yaml.safe_load(path.read_text(encoding="utf-8")) if path else {})


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"])
            for obj in objects if obj["kind"] in WORKLOADS]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def named(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    return next(obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"].endswith(suffix))


def operator_config(objects: list[dict[str, Any]]) -> OperatorConfig:
    config_map = named(objects, "ConfigMap", "-config")
    return OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return named(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]


# --- the chart as a whole ---------------------------------------------------------------------------

def test_the_charts_crds_are_the_repositorys():
    chart_crds = {path.name: path.read_text(encoding="utf-8") for path in (CHART / "crds").glob("*.yaml")}
    repository_crds = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "crds").glob("*.yaml")}
    assert chart_crds == repository_crds, "copy crds/*.yaml into charts/tuneloop/crds/"
    kinds = {document["spec"]["names"]["kind"] for text in chart_crds.values() for document in yaml.safe_load_all(text)}
    assert kinds == {"FineTuneJob", "ModelDeployment", "FineTuneSchedule", "ClusterKopfPeering", "KopfPeering"}


def test_the_packaged_chart_installs_from_a_file_with_nothing_to_fetch(tmp_path):
    assert "dependencies" not in yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    packaged = helm("package", str(CHART), "--destination", str(tmp_path))
    assert packaged.returncode == 0, packaged.stderr
    archive = tmp_path / "tuneloop-0.1.0.tgz"
    result = helm("template", "tuneloop", str(archive), "--namespace", NAMESPACE,
                  "--values", str(SCENARIOS["airgapped"]), "--include-crds")
    assert result.returncode == 0, result.stderr
    kinds = [document["kind"] for document in yaml.safe_load_all(result.stdout) if document]
    assert kinds.count("CustomResourceDefinition") == 5 and "Deployment" in kinds


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_helm_lint_passes(scenario):
    args = ["lint", str(CHART), "--strict"]
    if SCENARIOS[scenario] is not None:
        args += ["--values", str(SCENARIOS[scenario])]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    _, objects = rendered
    assert {obj["kind"] for obj in objects} >= {"Deployment", "ServiceAccount", "ConfigMap", "NetworkPolicy",
                                                "PodDisruptionBudget", "Service"}
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] in {"kopf.dev/v1", "monitoring.coreos.com/v1"}, obj["kind"]
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_every_namespaced_object_names_its_namespace(rendered):
    scenario, objects = rendered
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    allowed = {NAMESPACE, *values_of(scenario)["watchNamespaces"]}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") in allowed, f"{obj['kind']}/{obj['metadata']['name']}"


# --- Pod Security "restricted" ----------------------------------------------------------------------

def test_every_container_meets_pod_security_restricted(rendered):
    _, objects = rendered
    for where, pod in pod_specs(objects):
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), where
        assert not any("hostPath" in volume for volume in pod.get("volumes", [])), where
        pod_context = pod.get("securityContext", {})
        for container in containers(pod):
            context = container.get("securityContext", {})
            place = f"{where} container {container['name']}"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, place
            assert context.get("runAsUser", pod_context.get("runAsUser", 1)) != 0, place
            assert context.get("allowPrivilegeEscalation") is False, place
            assert context.get("privileged", False) is False, place
            assert context.get("readOnlyRootFilesystem") is True, place
            assert context.get("capabilities", {}).get("drop") == ["ALL"], place
            assert not context.get("capabilities", {}).get("add"), place
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", place
            assert "requests" in container.get("resources", {}) and "limits" in container["resources"], place
            assert "livenessProbe" in container and "readinessProbe" in container, place


def test_only_the_operator_mounts_a_service_account_token(rendered):
    _, objects = rendered
    for where, pod in pod_specs(objects):
        assert pod.get("automountServiceAccountToken") is where.endswith("-operator"), where


# --- RBAC ---------------------------------------------------------------------------------------------

def rbac_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for obj in objects if obj["kind"] in ("Role", "ClusterRole") for rule in obj["rules"]]


def test_rbac_has_no_wildcards(rendered):
    _, objects = rendered
    rules = rbac_rules(objects)
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), rule
            assert not any("*" in value for value in rule.get(key, [])), rule


def test_the_operator_may_only_read_the_secrets_it_is_told_about(rendered):
    scenario, objects = rendered
    secret_rules = [rule for rule in rbac_rules(objects) if "secrets" in rule["resources"]]
    assert secret_rules
    for rule in secret_rules:
        assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"], rule
        assert rule["resourceNames"] == values_of(scenario)["rbac"]["secretNames"], rule


def test_the_operator_gets_exactly_the_verbs_it_uses():
    objects = render(None)
    granted = {(group, resource, verb) for rule in rbac_rules(objects) for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    crds = {("tuneloop.dev", plural, verb) for plural in ("finetunejobs", "modeldeployments", "finetuneschedules")
            for verb in ("get", "list", "watch", "patch")}
    statuses = {("tuneloop.dev", f"{plural}/status", verb)
                for plural in ("finetunejobs", "modeldeployments", "finetuneschedules") for verb in ("get", "patch")}
    assert granted == crds | statuses | {
        ("tuneloop.dev", "finetunejobs", "create"), ("tuneloop.dev", "finetunejobs", "delete"),  # schedules
        ("batch", "jobs", "get"), ("batch", "jobs", "create"), ("batch", "jobs", "delete"),
        ("", "configmaps", "create"), ("", "configmaps", "delete"),
        ("", "pods", "list"),
        ("", "services", "get"), ("", "services", "create"), ("", "services", "patch"),
        ("apps", "deployments", "get"), ("apps", "deployments", "create"), ("apps", "deployments", "patch"),
        ("apps", "deployments", "update"),
        ("policy", "poddisruptionbudgets", "get"), ("policy", "poddisruptionbudgets", "create"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("", "events", "create"),
        ("kueue.x-k8s.io", "workloads", "get"), ("kueue.x-k8s.io", "workloads", "list"),
        ("kueue.x-k8s.io", "workloads", "watch"),  # why a queued Job waits
        ("", "secrets", "get"),
        ("kopf.dev", "clusterkopfpeerings", "get"), ("kopf.dev", "clusterkopfpeerings", "list"),
        ("kopf.dev", "clusterkopfpeerings", "watch"), ("kopf.dev", "clusterkopfpeerings", "patch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }


def test_watched_namespaces_get_roles_and_nothing_cluster_wide():
    objects = render(SCENARIOS["airgapped"])
    kinds = {obj["kind"] for obj in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    for kind in ("Role", "RoleBinding", "KopfPeering"):
        assert sorted(obj["metadata"]["namespace"] for obj in objects if obj["kind"] == kind) == \
            ["ml-team-a", "ml-team-b"], kind
    assert all("customresourcedefinitions" not in rule["resources"] for rule in rbac_rules(objects))
    args = operator_container(objects)["args"]
    assert "--namespace=ml-team-a" in args and "--namespace=ml-team-b" in args


def test_the_whole_cluster_gets_a_cluster_role_and_no_roles():
    objects = render(None)
    kinds = [obj["kind"] for obj in objects]
    assert kinds.count("ClusterRole") == 1 and kinds.count("ClusterRoleBinding") == 1
    assert "Role" not in kinds and "RoleBinding" not in kinds
    assert not any(arg.startswith("--namespace") for arg in operator_container(objects)["args"])


# --- images -------------------------------------------------------------------------------------------

def test_every_image_comes_from_the_private_registry_when_one_is_set():
    objects = render(SCENARIOS["airgapped"], "mlflow.trackingUri=", "mlflow.bundled.enabled=true")
    images = [container["image"] for _, pod in pod_specs(objects) for container in containers(pod)]
    assert len(images) >= 3
    for image in images:
        assert image.startswith(f"{PRIVATE_REGISTRY}/"), image
    for pod in (pod for _, pod in pod_specs(objects)):
        assert pod["imagePullSecrets"] == [{"name": "corp-registry"}]
    config = operator_config(objects)
    for image in (config.images.operator, config.images.trainer, config.images.evaluator, config.images.vllm,
                  config.images.adapter_fetcher, config.images.mlflow):
        assert image.startswith(f"{PRIVATE_REGISTRY}/") and "@sha256:" in image, image
    assert config.image_pull_secrets == ["corp-registry"]


def test_pods_the_operator_launches_pull_from_the_private_registry():
    config = operator_config(render(SCENARIOS["airgapped"]))
    job = finetunejob.parse_manifest(yaml.safe_load((ROOT / "examples/cluster/finetunejob.yaml").read_text()))
    md = modeldeployment.parse_manifest({
        **yaml.safe_load((ROOT / "examples/cluster/modeldeployment.yaml").read_text()),
        "metadata": {"name": "support-bot", "namespace": "ml-team-a", "uid": "7d1f0c52-2222-4b7e-9a55-0c3e5d9f1a20"}})
    md.spec.serving.image = "docker.io/vllm/vllm-openai:v0.11.0"   # a manifest's own image is rewritten too
    launched = [*training_objects(job, "ftj-train", config),
                deployment(md, "green", target_for(md.spec, "3"), 1, config)]
    images = [container["image"] for obj in launched if obj["kind"] in WORKLOADS
              for container in containers(obj["spec"]["template"]["spec"])]
    assert f"{PRIVATE_REGISTRY}/vllm/vllm-openai:v0.11.0" in images
    for image in images:
        assert image.startswith(f"{PRIVATE_REGISTRY}/"), image


def test_tuneloop_images_lists_every_image_the_chart_runs(tmp_path, capsys):
    objects = render(SCENARIOS["bundled-mlflow"])
    config_map = named(objects, "ConfigMap", "-config")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"])
    assert main(["images", "--config", str(config_file)]) == 0
    listed = capsys.readouterr().out.split()
    for _, pod in pod_specs(objects):
        for container in containers(pod):
            assert container["image"] in listed


def test_workload_defaults_go_into_the_operators_configuration():
    config = operator_config(render(SCENARIOS["airgapped"]))
    assert config.default_node_selector == {"nvidia.com/gpu.present": "true"}
    assert config.default_tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert config.catalog["llama-3.1-8b-instruct"] == "s3://models/llama-3.1-8b-instruct"
    assert config.s3_endpoint == "http://minio.storage.svc:9000" and config.s3_secret_name == "minio-credentials"
    assert config.mlflow_tracking_uri == "http://mlflow.mlops.svc:5000"
    assert (config.data_check.cpu, config.data_check.memory) == ("1", "4Gi")
    assert config.allowed_secrets == []
    listed = operator_config(render(None, "rbac.allowedSecrets={team-a/judge-key}"))
    assert listed.allowed_secrets == ["team-a/judge-key"]
    assert operator_config(render(None)).allowed_urls == []  # tenants' own Services only
    with_feedback = operator_config(render(None, "allowedUrls={https://judge.corp.internal/v1}", "feedback.enabled=true",
                                           "feedback.database.secretName=db", "feedback.token.secretName=token"))
    assert with_feedback.allowed_urls == [  # the bundled feedback service, as schedules name it
        "https://judge.corp.internal/v1", f"http://t-tuneloop-feedback.{NAMESPACE}:8080",
        f"http://t-tuneloop-feedback.{NAMESPACE}.svc:8080"]
    sized = operator_config(render(None, "workloads.dataCheck.cpu=2", "workloads.dataCheck.memory=16Gi"))
    assert (sized.data_check.cpu, sized.data_check.memory) == ("2", "16Gi")  # a number is a quantity too
    bundled = operator_config(render(SCENARIOS["bundled-mlflow"]))
    assert bundled.mlflow_tracking_uri == f"http://t-tuneloop-mlflow.{NAMESPACE}.svc:5000"
    assert bundled.webhook_port == 8088


def test_the_outbound_retry_policies_render_as_the_operators_defaults_and_can_be_changed():
    assert operator_config(render(None)).outbound == OperatorConfig().outbound
    changed = operator_config(render(None, "outbound.kubernetes.attempts=8", "outbound.mlflow.timeoutSeconds=2"))
    assert (changed.outbound.kubernetes.attempts, changed.outbound.mlflow.timeout_seconds) == (8, 2)


def test_queueing_grace_and_cost_values_reach_the_operators_configuration(tmp_path):
    defaults = operator_config(render(None))
    assert defaults.queueing.queue_for("ml-team-a") is None
    assert (defaults.termination_grace_seconds, defaults.cost_per_gpu_hour, defaults.cost_currency,
            defaults.gpu_peak_tflops) == (300, None, "USD", None)
    values = tmp_path / "shared-gpus.yaml"
    values.write_text(yaml.safe_dump({
        "queueing": {"defaultQueueName": "shared-gpus", "namespaces": {"ml-team-a": "team-a-gpus"}},
        "terminationGraceSeconds": 900, "costPerGpuHour": 3.5, "costCurrency": "EUR", "gpuPeakTflops": 989}))
    config = operator_config(render(values))
    assert config.queueing.queue_for("ml-team-a") == "team-a-gpus"
    assert config.queueing.queue_for("ml-team-b") == "shared-gpus"
    assert (config.termination_grace_seconds, config.cost_per_gpu_hour, config.cost_currency,
            config.gpu_peak_tflops) == (900, 3.5, "EUR", 989)


# --- what the chart runs is what the code reads ----------------------------------------------------------

def test_the_operators_arguments_are_ones_tuneloop_accepts(rendered):
    _, objects = rendered
    container = operator_container(objects)
    args = build_parser().parse_args(container["args"])
    assert args.command == "operator" and not args.standalone
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert (args.health_port, args.metrics_port) == (ports["health"], ports["metrics"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_secrets_reach_the_services_as_files_under_the_names_the_code_reads():
    objects = render(SCENARIOS["bundled-mlflow"], "feedback.enabled=true", "feedback.database.secretName=db",
                     "feedback.token.secretName=token", "feedback.tokens.secretName=team-tokens")
    pods = dict(pod_specs(objects))
    feedback = pods["Deployment/t-tuneloop-feedback"]["containers"][0]
    environment = {item["name"]: item.get("value") for item in feedback["env"]}
    assert set(environment) >= {TOKEN_FILE_ENV, TOKENS_FILE_ENV, DATABASE_URL_FILE_ENV}
    assert not any("valueFrom" in item for item in feedback["env"])
    operator = pods["Deployment/t-tuneloop-operator"]["containers"][0]
    assert WEBHOOK_SECRET_FILE_ENV in {item["name"] for item in operator["env"]}
    for container, variable in ((feedback, TOKEN_FILE_ENV), (feedback, TOKENS_FILE_ENV),
                                (feedback, DATABASE_URL_FILE_ENV), (operator, WEBHOOK_SECRET_FILE_ENV)):
        path = next(item["value"] for item in container["env"] if item["name"] == variable)
        assert any(path.startswith(mount["mountPath"] + "/") for mount in container["volumeMounts"]), variable
    teams_only = render(None, "feedback.enabled=true", "feedback.database.secretName=db",
                        "feedback.tokens.secretName=team-tokens")
    environment = {item["name"] for item in dict(pod_specs(teams_only))["Deployment/t-tuneloop-feedback"]
                   ["containers"][0]["env"]}
    assert TOKENS_FILE_ENV in environment and TOKEN_FILE_ENV not in environment
    no_token = helm("template", "t", str(CHART), "--set", "feedback.enabled=true",
                    "--set", "feedback.database.secretName=db")
    assert no_token.returncode != 0 and "/feedback/tokens/secretName" in no_token.stderr  # or token.secretName


# --- NetworkPolicies ------------------------------------------------------------------------------------

def policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{obj['metadata']['namespace']}/{obj['metadata']['name']}": obj["spec"]
            for obj in objects if obj["kind"] == "NetworkPolicy"}


def test_every_pod_of_the_chart_and_every_workload_namespace_has_a_policy(rendered):
    scenario, objects = rendered
    found = policies(objects)
    components = {pod["metadata"]["labels"].get("app.kubernetes.io/component") for obj in objects
                  if obj["kind"] == "Deployment" for pod in [obj["spec"]["template"]]}
    selected = {spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
                for spec in found.values()}
    assert components <= selected
    values = values_of(scenario)
    for namespace in values["watchNamespaces"] or [NAMESPACE]:
        assert found[f"{namespace}/t-tuneloop-workloads"]["podSelector"] == \
            {"matchLabels": {"app.kubernetes.io/managed-by": "tuneloop"}}
    for spec in found.values():
        assert spec["policyTypes"] == ["Ingress", "Egress"]


def test_the_operator_reaches_only_dns_the_api_server_mlflow_the_judge_and_what_it_analyses():
    found = policies(render(SCENARIOS["airgapped"]))
    egress = found[f"{NAMESPACE}/t-tuneloop-operator"]["egress"]
    destinations = [json.dumps(rule["to"], sort_keys=True) for rule in egress]
    assert '[{"ipBlock": {"cidr": "10.0.0.1/32"}}]' in destinations
    assert any("mlops" in destination for destination in destinations)
    assert any("llm-judge" in destination for destination in destinations)
    assert any("tuneloop-vllm" in destination for destination in destinations)
    assert not any("0.0.0.0/0" in destination for destination in destinations)
    assert not any("storage" in destination for destination in destinations)   # object storage: workloads only
    workloads = found["ml-team-a/t-tuneloop-workloads"]["egress"]
    assert any("storage" in json.dumps(rule["to"]) for rule in workloads)
    assert not any("10.0.0.1/32" in json.dumps(rule["to"]) for rule in workloads)   # no API server


# --- monitoring reads what the operator exports ----------------------------------------------------------

def exported_series() -> set[str]:
    """Every series name tuneloop.metrics can export, labelled ones included before their first use."""
    from prometheus_client import REGISTRY

    import tuneloop.metrics  # noqa: F401  (registers them)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {metric.name + suffix for metric in REGISTRY.collect() if metric.name.startswith("tuneloop_")
            for suffix in suffixes.get(metric.type, [""])}


def test_every_alert_and_dashboard_query_reads_a_series_the_operator_exports():
    objects = render(SCENARIOS["bundled-mlflow"])
    rules = named(objects, "PrometheusRule", "-operator")["spec"]["groups"][0]["rules"]
    dashboard = named(objects, "ConfigMap", "-dashboard")["data"]["tuneloop.json"]
    queries = [rule["expr"] for rule in rules] + [target["expr"] for panel in json.loads(dashboard)["panels"]
                                                  for target in panel["targets"]]
    used = {name for query in queries for name in re.findall(r"\btuneloop_[a-z_]+", query)}
    assert len(rules) == 5 and len(used) >= 6
    assert used <= exported_series(), sorted(used - exported_series())


# --- values the schema refuses ----------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "message"), [
    ("global.imageRegistry=https://registry.corp", "/global/imageRegistry"),
    ("workloads.images.trainer.digest=latest", "/workloads/images/trainer/digest"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("operator.logFormat=xml", "/operator/logFormat"),
    ("operator.runAsUser=0", "/operator/runAsUser"),
    ("catalog.llama=http://models/llama", "/catalog/llama"),
    ("feedback.enabled=true", "/feedback/"),
    ("mlflow.webhooks.enabled=true", "/mlflow/webhooks/secretName"),
    ("mlflow.trackingUri=ftp://mlflow", "/mlflow/trackingUri"),
    ("watchNamespaces[0]=Team_A", "/watchNamespaces/0"),
    ("workloads.scratchSize=lots", "/workloads/scratchSize"),
    ("metrics.prometheusRule.stuckAfter=2 hours", "/metrics/prometheusRule/stuckAfter"),
    ("outbound.kubernetes.attempts=0", "/outbound/kubernetes/attempts"),
    ("terminationGraceSeconds=5", "/terminationGraceSeconds"),
    ("queueing.namespaces.ml-team-a=Team_GPUs", "/queueing/namespaces/ml-team-a"),
    ("costPerGpuHour=-1", "/costPerGpuHour"),
    ("replicas=2", "additional properties 'replicas' not allowed"),
])
def test_bad_values_fail_with_the_schemas_message(setting, message):
    result = helm("template", "t", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_the_bundled_mlflow_and_an_external_uri_are_refused_together():
    result = helm("template", "t", str(CHART), "--set", "mlflow.bundled.enabled=true",
                  "--set", "mlflow.trackingUri=http://mlflow:5000")
    assert result.returncode != 0 and "/mlflow/trackingUri" in result.stderr


# --- checkov ------------------------------------------------------------------------------------------------

def accepted_checks() -> set[str]:
    """The findings the chart's README accepts, each with its reason: rows `| CKV_... | reason |`."""
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (CKV2?_K8S_\d+) \|[^|]+\|(.+)\|$", readme, flags=re.MULTILINE)
    assert all(reason.strip() for _, reason in rows)
    return {check for check, _ in rows}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_checkov_finds_nothing_but_the_accepted_findings(scenario, tmp_path):
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(render(SCENARIOS[scenario])))
    result = subprocess.run([tool("checkov"), "--file", str(manifest), "--framework", "kubernetes", "--output", "json",
                             "--skip-download", "--quiet"], capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = [item["summary"] for item in reports]
    assert sum(item["passed"] for item in summary) > 50, summary  # it did scan the objects
    failed = {(check["check_id"], check["resource"]) for item in reports for check in item["results"]["failed_checks"]}
    unexpected = sorted(finding for finding in failed if finding[0] not in accepted_checks())
    assert not unexpected, f"checkov findings the chart's README does not accept: {unexpected}"


# --- the bundled MLflow takes the chart's arguments -------------------------------------------------------

def test_the_bundled_mlflow_answers_its_service_names_and_refuses_other_hosts(tmp_path):
    """The real `mlflow server` with the chart's arguments (volume paths moved into tmp_path): the
    operator's tracking URI's host is allowed; any other Host header is refused (DNS rebinding)."""
    objects = render(SCENARIOS["bundled-mlflow-on-a-volume"])
    container = dict(pod_specs(objects))["Deployment/t-tuneloop-mlflow"]["containers"][0]
    port = free_port()
    args = [arg.replace("/data/", f"{tmp_path}/").replace("--host=0.0.0.0", "--host=127.0.0.1")
            .replace("--port=5000", f"--port={port}") for arg in container["args"]]
    environment = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), *args], cwd=tmp_path,
                                  stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, **environment, "HOME": str(tmp_path)})
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", server, log_path)
        tracking_host = operator_config(objects).mlflow_tracking_uri.removeprefix("http://")
        assert tracking_host == f"t-tuneloop-mlflow.{NAMESPACE}.svc:5000"
        path = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        assert http_status(port, path, tracking_host) == 200
        assert http_status(port, path, "attacker.example.com") == 403
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def http_status(port: int, path: str, host: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_operator_reconciles_at_most_100_objects_at_once_by_default(tmp_path, monkeypatch):
    """The chart's bound reaches the operator: a burst of FineTuneJobs waits its turn instead of growing
    the operator's memory without limit (benchmarks/README.md: 142 MiB for 1000 at once)."""
    import asyncio

    import kopf

    from tuneloop import handlers

    config_map = named(render(), "ConfigMap", "-config")
    assert operator_config([config_map]).max_concurrent_reconciles == 100
    (tmp_path / "config.yaml").write_text(config_map["data"]["config.yaml"])
    monkeypatch.setenv("TUNELOOP_CONFIG", str(tmp_path / "config.yaml"))
    memo = kopf.Memo()

    async def start() -> int:
        await handlers.startup(settings=kopf.OperatorSettings(), memo=memo)
        passes = handlers.operator_state(memo).passes
        taken = 0
        while not passes.locked():
            await passes.acquire()
            taken += 1
        return taken

    assert asyncio.run(start()) == 100
    unbounded = named(render(None, "operator.maxConcurrentReconciles=null"), "ConfigMap", "-config")
    assert operator_config([unbounded]).max_concurrent_reconciles is None


def test_an_empty_secret_list_is_refused_not_read_as_every_secret():
    result = helm("template", "t", str(CHART), "--namespace", NAMESPACE, "--set-json", "rbac.secretNames=[]")
    assert result.returncode != 0
    assert "/rbac/secretNames" in result.stderr and "minItems" in result.stderr, result.stderr
