"""The snapshot workload of a FineTuneSchedule run as Kubernetes objects (pure: no API calls here).

`<run>-snapshot`: a ConfigMap with the SnapshotWorkload and a batch/v1 Job running
`python -m tuneloop_trainer.snapshot` in the trainer image (the same cleaning code as training),
no GPU, writing the hashed JSONL into the schedule's snapshot folder on its PVC. The feedback
service's token reaches the container only by secretKeyRef.
"""

from __future__ import annotations

from typing import Any

from tuneloop.api.common import API_VERSION, fitted
from tuneloop.api.finetuneschedule import KIND, FineTuneSchedule
from tuneloop.api.workloads import SnapshotWorkload
from tuneloop.config import OperatorConfig
from tuneloop.offline_env import OFFLINE_ENV
from tuneloop.runtime.manifests import (
    MANAGED_BY,
    SCRATCH,
    SPEC_DIR,
    TERMINATION_LOG,
    WORKLOAD_CONTAINERS,
    Storage,
    restricted_security_context,
)

SNAPSHOT_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
TOKEN_ENV = "TUNELOOP_FEEDBACK_TOKEN"


def metadata(schedule: FineTuneSchedule, name: str) -> dict[str, Any]:
    owner = {"apiVersion": API_VERSION, "kind": KIND, "name": schedule.metadata.name, "uid": schedule.metadata.uid,
             "controller": True, "blockOwnerDeletion": True}
    return {"name": name, "namespace": schedule.metadata.namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": "tuneloop-snapshot",
                       "tuneloop.dev/schedule": fitted(schedule.metadata.name), "tuneloop.dev/stage": "snapshot"},
            "ownerReferences": [owner]}


def snapshot_workload(schedule: FineTuneSchedule, storage: Storage, after_id: int, up_to_id: int) -> SnapshotWorkload:
    feedback, dataset = schedule.spec.feedback, schedule.spec.job_template.spec.dataset
    return SnapshotWorkload(feedback_url=feedback.url, token_env=TOKEN_ENV, model=feedback.model,
                            after_id=after_id, up_to_id=up_to_id,
                            output_dir=storage.path(feedback.snapshot_uri, writable=True),
                            cleaning=dataset.cleaning, system_prompt=dataset.system_prompt)


def snapshot_objects(schedule: FineTuneSchedule, name: str, after_id: int, up_to_id: int,
                     config: OperatorConfig) -> list[dict[str, Any]]:
    """ConfigMap and Job of one snapshot, in creation order (the Job last)."""
    storage = Storage()
    workload = snapshot_workload(schedule, storage, after_id, up_to_id)
    env = [{"name": key, "value": value} for key, value in OFFLINE_ENV.items()]
    env += [{"name": "HOME", "value": SCRATCH}, {"name": "TMPDIR", "value": SCRATCH}]
    token = schedule.spec.feedback.token_secret
    if token is not None:
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    container = {
        "name": WORKLOAD_CONTAINERS["snapshot"], "image": config.images.trainer,
        "imagePullPolicy": config.images.pull_policy,
        "command": ["python", "-m", "tuneloop_trainer.snapshot", "--spec", f"{SPEC_DIR}/workload.json",
                    "--result", f"{SCRATCH}/result.json", "--termination-log", TERMINATION_LOG],
        "env": env, "resources": SNAPSHOT_RESOURCES,
        "volumeMounts": [{"name": "workload", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "scratch", "mountPath": SCRATCH}, *storage.mounts()],
        "terminationMessagePath": TERMINATION_LOG, "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_security_context(),
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never", "containers": [container],
        "volumes": [{"name": "workload", "configMap": {"name": name}},
                    {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}, *storage.volumes(config.inputs_size)],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": dict(config.default_node_selector),
        "automountServiceAccountToken": False, "enableServiceLinks": False,
    }
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret} for secret in config.image_pull_secrets]
    job_spec: dict[str, Any] = {
        "backoffLimit": config.backoff_limit,
        "activeDeadlineSeconds": 3600,
        # Exit code 1: the service refused us or the rows are unusable, retrying cannot help;
        # an unreachable service exits 3 and is retried.
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": container["name"], "operator": "In",
                                                  "values": [1]}}]},
        "template": {"metadata": {"labels": {**metadata(schedule, name)["labels"], "tuneloop.dev/workload": name}},
                     "spec": pod},
    }
    if config.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(schedule, name),
                  "data": {"workload.json": workload.model_dump_json(by_alias=True, exclude_none=True, indent=2)}}
    return [config_map, {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(schedule, name),
                         "spec": job_spec}]
