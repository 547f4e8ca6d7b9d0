"""Kubernetes objects for a FineTuneJob's workloads, as plain dicts (pure: no API calls here).

One workload = a ConfigMap with its spec + a batch/v1 Job running the trainer image. More than one
GPU: torchrun on one node. More than one node: an Indexed Job plus a headless Service, torchrun
with c10d rendezvous on the pod of index 0. The trainer reads its spec from the ConfigMap, writes
checkpoints and outputs to the output volume (so a retried pod resumes) and its compact result
to the termination message, which the operator reads; it needs no Kubernetes credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneloop.api.common import API_VERSION
from tuneloop.api.finetunejob import KIND, FineTuneJob
from tuneloop.api.workloads import Tracking, TrainerWorkload
from tuneloop.config import OperatorConfig

MANAGED_BY = "tuneloop"
SPEC_DIR = "/etc/tuneloop"
SCRATCH = "/scratch"
PVC_ROOT = "/mnt/pvc"
RENDEZVOUS_PORT = 29500
TERMINATION_LOG = "/dev/termination-log"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false",
}


class UnsupportedStorage(ValueError):
    pass


def labels(job: FineTuneJob, stage: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": f"tuneloop-{stage}",
        "tuneloop.dev/finetunejob": job.metadata.name,
        "tuneloop.dev/stage": stage,
    }


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": job.metadata.name, "uid": job.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def metadata(job: FineTuneJob, name: str, stage: str) -> dict[str, Any]:
    return {"name": name, "namespace": job.metadata.namespace, "labels": labels(job, stage),
            "ownerReferences": [owner_reference(job)]}


@dataclass
class Storage:
    """pvc:// URIs become volumes mounted under /mnt/pvc/<claim>; the trainer sees plain paths."""

    writable_claims: set[str] = field(default_factory=set)
    claims: set[str] = field(default_factory=set)

    def path(self, uri: str, *, writable: bool = False) -> str:
        if uri.startswith("pvc://"):
            claim, _, rest = uri[len("pvc://"):].partition("/")
            self.claims.add(claim)
            if writable:
                self.writable_claims.add(claim)
            return f"{PVC_ROOT}/{claim}/{rest}".rstrip("/")
        scheme = uri.split("://", 1)[0] if "://" in uri else "a local path"
        raise UnsupportedStorage(f"{uri!r}: {scheme} storage cannot be mounted in a cluster by this version; "
                                 "use pvc://claim/path")

    def uri(self, path: str) -> str:
        """The inverse of path(): what the trainer reports as a path, as a storage URI."""
        if path.startswith(PVC_ROOT + "/"):
            return "pvc://" + path[len(PVC_ROOT) + 1:]
        return path

    def volumes(self) -> list[dict[str, Any]]:
        return [{"name": f"pvc-{claim}", "persistentVolumeClaim": {"claimName": claim,
                                                                   "readOnly": claim not in self.writable_claims}}
                for claim in sorted(self.claims)]

    def mounts(self) -> list[dict[str, Any]]:
        return [{"name": f"pvc-{claim}", "mountPath": f"{PVC_ROOT}/{claim}",
                 "readOnly": claim not in self.writable_claims} for claim in sorted(self.claims)]


def trainer_workload(job: FineTuneJob, config: OperatorConfig, storage: Storage) -> TrainerWorkload:
    spec = job.spec
    if spec.base_model.name is not None:
        model_uri = config.catalog.get(spec.base_model.name)
        if model_uri is None:
            raise UnsupportedStorage(f"spec.baseModel.name: {spec.base_model.name!r} is not in the cluster's "
                                     f"model catalog (known: {', '.join(sorted(config.catalog)) or 'none'})")
    else:
        model_uri = spec.base_model.uri or ""
    if spec.output.uri is None:
        raise UnsupportedStorage("spec.output.uri: a cluster run needs a pvc:// folder for checkpoints and the adapter")
    tracking = None
    if config.mlflow_tracking_uri:
        tracking = Tracking(tracking_uri=config.mlflow_tracking_uri,
                            run_name=f"{job.metadata.namespace}/{job.metadata.name}")
    return TrainerWorkload(
        job=f"{job.metadata.namespace}/{job.metadata.name}",
        model_path=storage.path(model_uri),
        dataset_path=storage.path(spec.dataset.uri),
        replay_path=storage.path(spec.dataset.replay.uri) if spec.dataset.replay else None,
        dataset=spec.dataset,
        method=spec.method,
        training=spec.training,
        output_dir=storage.path(spec.output.uri, writable=True),
        preview_examples=spec.output.preview_examples,
        merge_adapter=spec.output.merge_adapter,
        tracking=tracking,
    )


def config_map(job: FineTuneJob, name: str, workload: TrainerWorkload) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(job, name, "train"),
            "data": {"workload.json": workload.model_dump_json(by_alias=True, exclude_none=True, indent=2)}}


def trainer_command(job: FineTuneJob, name: str, workload: TrainerWorkload) -> list[str]:
    resources = job.spec.resources
    program = ["-m", "tuneloop_trainer", "--spec", f"{SPEC_DIR}/workload.json",
               "--result", f"{workload.output_dir}/result.json", "--termination-log", TERMINATION_LOG]
    if resources.nodes > 1:
        return ["torchrun", f"--nnodes={resources.nodes}", f"--nproc-per-node={max(resources.gpus, 1)}",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={name}-0.{name}:{RENDEZVOUS_PORT}",
                f"--rdzv-id={job.metadata.uid}", *program]
    if resources.gpus > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={resources.gpus}", *program]
    return ["python", *program]


def pod_spec(job: FineTuneJob, name: str, workload: TrainerWorkload, config: OperatorConfig,
             storage: Storage) -> dict[str, Any]:
    resources = job.spec.resources
    limits: dict[str, str] = {}
    if resources.gpus:
        limits["nvidia.com/gpu"] = str(resources.gpus)
    if resources.cpu:
        limits["cpu"] = resources.cpu
    if resources.memory:
        limits["memory"] = resources.memory
    env = [{"name": key, "value": value} for key, value in OFFLINE_ENV.items()]
    env += [{"name": "HOME", "value": SCRATCH}, {"name": "TMPDIR", "value": f"{SCRATCH}"},
            {"name": "HF_HOME", "value": f"{SCRATCH}/hf"}, {"name": "TRITON_CACHE_DIR", "value": f"{SCRATCH}/triton"}]
    container = {
        "name": "trainer",
        "image": config.images.trainer,
        "imagePullPolicy": config.images.pull_policy,
        "command": trainer_command(job, name, workload),
        "env": env,
        "resources": {"limits": limits, "requests": dict(limits)} if limits else {},
        "volumeMounts": [
            {"name": "workload", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH},
            {"name": "shm", "mountPath": "/dev/shm"},
            *storage.mounts(),
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if resources.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    tolerations = list(resources.tolerations) or (config.default_tolerations if resources.gpus else [])
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "workload", "configMap": {"name": name}},
            {"name": "scratch", "emptyDir": {"sizeLimit": config.scratch_size}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shared_memory_size}},
            *storage.volumes(),
        ],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": {**config.default_node_selector, **resources.node_selector},
        "tolerations": tolerations,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if resources.priority_class_name:
        spec["priorityClassName"] = resources.priority_class_name
    if config.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in config.image_pull_secrets]
    if resources.nodes > 1:
        spec["subdomain"] = name
    return spec


def training_job(job: FineTuneJob, name: str, workload: TrainerWorkload, config: OperatorConfig,
                 storage: Storage) -> dict[str, Any]:
    nodes = job.spec.resources.nodes
    pod_labels = {**labels(job, "train"), "tuneloop.dev/workload": name}
    spec: dict[str, Any] = {
        "backoffLimit": config.backoff_limit,
        "activeDeadlineSeconds": config.active_deadline_seconds,
        # Preemption and node drains are not the trainer's fault: retry without counting them.
        # Exit code 1 is the trainer's own verdict (bad data, bad spec): retrying cannot help.
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1]}},
        ]},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec(job, name, workload, config, storage)},
    }
    if nodes > 1:
        spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
    if config.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(job, name, "train"), "spec": spec}


def rendezvous_service(job: FineTuneJob, name: str) -> dict[str, Any]:
    """Headless Service giving the Indexed Job's pods stable DNS names for torchrun's rendezvous."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(job, name, "train"),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"tuneloop.dev/workload": name},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]},
    }


def training_objects(job: FineTuneJob, name: str, config: OperatorConfig) -> list[dict[str, Any]]:
    """Everything one training workload needs, in creation order (the Job last)."""
    storage = Storage()
    workload = trainer_workload(job, config, storage)
    objects = [config_map(job, name, workload)]
    if job.spec.resources.nodes > 1:
        objects.append(rendezvous_service(job, name))
    objects.append(training_job(job, name, workload, config, storage))
    return objects
