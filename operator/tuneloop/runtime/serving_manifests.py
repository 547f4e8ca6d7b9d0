"""Kubernetes objects serving a ModelDeployment with vLLM, as plain dicts (pure: no API calls here).

Per colour a Deployment `<name>-<colour>` runs `vllm serve` on the base model with the adapter as
a LoRA module (or the merged model alone). The adapter of an MLflow version is fetched by an init
container into an emptyDir; pvc:// folders are mounted; s3:// folders are fetched like the trainer's
inputs. Clients ask for model `<name>`; readiness requires vLLM to list it on /v1/models.
"""

from __future__ import annotations

from typing import Any

from tuneloop.api.common import API_VERSION, child_name, fitted
from tuneloop.api.modeldeployment import KIND, Colour, ModelDeployment
from tuneloop.config import OperatorConfig
from tuneloop.offline_env import OFFLINE_ENV
from tuneloop.reconcile.modeldeployment import Target
from tuneloop.runtime.manifests import (
    FETCH_RESOURCES,
    MANAGED_BY,
    SCRATCH,
    Storage,
    fetch_containers,
    restricted_security_context,
    s3_env,
)
from tuneloop.storage_uris import UnsupportedStorage

REVISION_LABEL = "tuneloop.dev/revision"
ADAPTER_DIR = "/adapter"
SERVING_ENV = {**OFFLINE_ENV, "VLLM_NO_USAGE_STATS": "1"}
# vLLM answers /health with 200 even when the engine cannot serve; /v1/models listing the adapter
# means the model and the LoRA module are loaded. httpGet cannot look at the body, so the readiness
# probe runs python in the container (a ~50 ms process every period: the price of a true answer).
MODELS_LIST_CHECK = (
    "import json, sys, urllib.request\n"
    "listed = json.load(urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/v1/models', timeout=4))\n"
    "sys.exit(0 if sys.argv[2] in [model['id'] for model in listed['data']] else 1)\n"
)


def deployment_name(name: str, colour: Colour) -> str:
    return child_name(name, colour)


def selector(md: ModelDeployment, colour: Colour) -> dict[str, str]:
    return {"tuneloop.dev/modeldeployment": fitted(md.metadata.name), "tuneloop.dev/colour": colour}


def labels(md: ModelDeployment, colour: Colour | None = None, revision: str | None = None) -> dict[str, str]:
    result = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": "tuneloop-vllm",
              "tuneloop.dev/modeldeployment": fitted(md.metadata.name)}
    if colour:
        result["tuneloop.dev/colour"] = colour
    if revision:
        result[REVISION_LABEL] = revision
    return result


def metadata(md: ModelDeployment, name: str, object_labels: dict[str, str]) -> dict[str, Any]:
    owner = {"apiVersion": API_VERSION, "kind": KIND, "name": md.metadata.name, "uid": md.metadata.uid,
             "controller": True, "blockOwnerDeletion": True}
    return {"name": name, "namespace": md.metadata.namespace, "labels": object_labels, "ownerReferences": [owner]}


def base_model_uri(md: ModelDeployment, config: OperatorConfig) -> str:
    base = md.spec.base_model
    if base.uri is not None:
        return base.uri
    uri = config.catalog.get(base.name or "")
    if uri is None:
        raise UnsupportedStorage(f"spec.baseModel.name: {base.name!r} is not in the cluster's model catalog "
                                 f"(known: {', '.join(sorted(config.catalog)) or 'none'})")
    return uri


def adapter_fetch_container(target: Target, config: OperatorConfig) -> dict[str, Any]:
    """Downloads the MLflow model version's artifacts (the adapter folder) into /adapter
    (`python -m tuneloop_evaluator.fetch_adapter models:/<name>/<version> /adapter`)."""
    env = [{"name": "MLFLOW_TRACKING_URI", "value": config.mlflow_tracking_uri or ""}, *s3_env(config)]
    env += [{"name": "HOME", "value": SCRATCH}, {"name": "MLFLOW_ENABLE_TELEMETRY", "value": "false"}]
    return {
        "name": "fetch-adapter", "image": config.images.adapter_fetcher, "imagePullPolicy": config.images.pull_policy,
        "command": ["python", "-m", "tuneloop_evaluator.fetch_adapter", target.adapter_source, ADAPTER_DIR],
        "env": env, "resources": FETCH_RESOURCES,
        "volumeMounts": [{"name": "adapter", "mountPath": ADAPTER_DIR}, {"name": "scratch", "mountPath": SCRATCH}],
        "terminationMessagePolicy": "FallbackToLogsOnError", "securityContext": restricted_security_context(),
    }


def vllm_args(md: ModelDeployment, model_path: str, adapter_path: str) -> list[str]:
    serving, name = md.spec.serving, md.metadata.name
    if serving.merged:
        args = [adapter_path, "--served-model-name", name]
    else:
        args = [model_path, "--served-model-name", f"{name}-base", "--enable-lora",
                "--lora-modules", f"{name}={adapter_path}", "--max-loras", str(serving.max_loras),
                "--max-lora-rank", str(serving.max_lora_rank)]
        if md.spec.adapter.uri is None:
            # A Tuneloop-trained adapter carries the chat template it was trained with (its system
            # prompt as the default): requests are prompted as training was, not with the base's.
            args += ["--chat-template", f"{adapter_path}/chat_template.jinja"]
    args += ["--host", "0.0.0.0", "--port", str(md.spec.port)]
    if serving.max_model_len:
        args += ["--max-model-len", str(serving.max_model_len)]
    if serving.gpus > 1:
        args += ["--tensor-parallel-size", str(serving.gpus)]
    return [*args, *serving.extra_args]


def container_resources(md: ModelDeployment) -> dict[str, Any]:
    serving = md.spec.serving
    limits = {key: value for key, value in (("cpu", serving.cpu), ("memory", serving.memory)) if value}
    if serving.gpus:
        limits["nvidia.com/gpu"] = str(serving.gpus)
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def probes(md: ModelDeployment) -> dict[str, Any]:
    port = md.spec.port
    health = {"httpGet": {"path": "/health", "port": port}}
    startup_periods = max(md.spec.strategy.blue_green.readiness_timeout_seconds // 10, 1)
    return {
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": startup_periods},
        "livenessProbe": {**health, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
        "readinessProbe": {"exec": {"command": ["python3", "-c", MODELS_LIST_CHECK, str(port), md.metadata.name]},
                           "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
    }


def deployment(md: ModelDeployment, colour: Colour, target: Target, replicas: int,
               config: OperatorConfig) -> dict[str, Any]:
    """The colour's apps/v1 Deployment running `target`; Recreate, as a colour is only changed while idle."""
    storage = Storage()
    model_path = storage.input_path(base_model_uri(md, config), "model")
    from_mlflow = target.adapter_source.startswith("models:/")
    adapter_path = ADAPTER_DIR if from_mlflow else storage.input_path(target.adapter_source, "adapter")
    env = [{"name": key, "value": value} for key, value in SERVING_ENV.items()]
    env += [{"name": "HOME", "value": SCRATCH}, {"name": "TMPDIR", "value": SCRATCH},
            {"name": "HF_HOME", "value": f"{SCRATCH}/hf"}, {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH}/cache"},
            {"name": "VLLM_CACHE_ROOT", "value": f"{SCRATCH}/vllm"},
            {"name": "TRITON_CACHE_DIR", "value": f"{SCRATCH}/triton"}]
    mounts = [{"name": "scratch", "mountPath": SCRATCH}, {"name": "shm", "mountPath": "/dev/shm"}, *storage.mounts()]
    volumes = [{"name": "scratch", "emptyDir": {"sizeLimit": config.scratch_size}},
               {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shared_memory_size}},
               *storage.volumes(config.inputs_size)]
    init = fetch_containers(storage, config)
    if from_mlflow:
        mounts.append({"name": "adapter", "mountPath": ADAPTER_DIR, "readOnly": True})
        volumes.append({"name": "adapter", "emptyDir": {"sizeLimit": config.inputs_size}})
        init.append(adapter_fetch_container(target, config))
    image = config.image(md.spec.serving.image) if md.spec.serving.image else config.images.vllm
    server = {
        "name": "vllm", "image": image,
        "imagePullPolicy": config.images.pull_policy,
        "command": ["vllm", "serve"], "args": vllm_args(md, model_path, adapter_path), "env": env,
        "ports": [{"name": "http", "containerPort": md.spec.port}],
        "resources": container_resources(md), "volumeMounts": mounts, **probes(md),
        "terminationMessagePolicy": "FallbackToLogsOnError", "securityContext": restricted_security_context(),
    }
    pod: dict[str, Any] = {
        "containers": [server], "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": dict(config.default_node_selector),
        "tolerations": list(config.default_tolerations) if md.spec.serving.gpus else [],
        "automountServiceAccountToken": False, "enableServiceLinks": False,
    }
    if init:
        pod["initContainers"] = init
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret} for secret in config.image_pull_secrets]
    pod_labels = labels(md, colour, target.revision)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(md, deployment_name(md.metadata.name, colour), pod_labels),
        "spec": {"replicas": replicas, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": selector(md, colour)},  # no revision: selectors are immutable
                 "template": {"metadata": {"labels": pod_labels}, "spec": pod}},
    }


def service(md: ModelDeployment, name: str, colour: Colour) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(md, name, labels(md)),
        "spec": {"selector": selector(md, colour),
                 "ports": [{"name": "http", "port": md.spec.port, "targetPort": "http"}]},
    }


def active_service(md: ModelDeployment, colour: Colour) -> dict[str, Any]:
    return service(md, md.spec.strategy.blue_green.active_service_name(md.metadata.name), colour)


def preview_service(md: ModelDeployment, colour: Colour) -> dict[str, Any]:
    return service(md, md.spec.strategy.blue_green.preview_service_name(md.metadata.name), colour)


def disruption_budget(md: ModelDeployment, colour: Colour) -> dict[str, Any]:
    """Over the active colour. maxUnavailable 1, not minAvailable 1: with one replica minAvailable
    would block every node drain (GPU driver upgrades) forever; with more, one pod goes at a time.
    AlwaysAllow lets a drain evict pods that are not ready anyway."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": metadata(md, md.metadata.name, labels(md)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(md, colour)},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }
