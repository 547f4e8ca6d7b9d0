"""The FineTuneJob runtime on a cluster: observe() what the cluster shows, act() on a pass's decision.

Workloads are batch/v1 Jobs (see manifests.py). A Job that completed hands over the trainer's
result from its pod's termination message; a failed one, the trainer's own reason when it wrote
one, else what Kubernetes knows (OOMKilled, image pull errors, deadline exceeded).

With a Kueue queue, a Job is created suspended and Kueue unsuspends it to admit it (and suspends
it again to preempt it): a suspended, unfinished Job is Queued, with Kueue's reason read from the
Workload object Kueue keeps for it (label kueue.x-k8s.io/job-uid). Stopping a workload (spec.suspend)
deletes its Job in the foreground: the Job stays, Stopping, until its pods have ended, so a resume
cannot start a second trainer beside one still saving its checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from datetime import datetime

from tuneloop.api.finetunejob import TERMINAL_PHASES, FineTuneJob
from tuneloop.config import OperatorConfig
from tuneloop.outbound import address_problem
from tuneloop.reconcile.core import EmitEvent
from tuneloop.reconcile.finetunejob import (
    QUEUE_UNSUPPORTED,
    TRAIN,
    Decision,
    LaunchWorkload,
    Observed,
    ReconcileContext,
    Resource,
    StopWorkload,
    WorkloadState,
    current_stage_index,
    stages_for,
    workload_name,
)
from tuneloop.reconcile.refusals import Refusal
from tuneloop.runtime.kube_client import KubeClient, KubeError
from tuneloop.runtime.manifests import QUEUE_LABEL, WORKLOAD_CONTAINERS, Storage, queue_name, workload_objects
from tuneloop.registry.progress import MlflowUnavailable, mlflow_progress
from tuneloop.runtime.secrets import SecretRefused, usable_secret

log = logging.getLogger("tuneloop.finetunejob")
KUEUE_WORKLOAD = ("kueue.x-k8s.io/v1beta1", "Workload")
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
WAITING_PROBLEMS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                    "CreateContainerError", "CrashLoopBackOff"}


def condition(obj: dict[str, Any], type: str) -> dict[str, Any] | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type and c.get("status") == "True"), None)


def termination(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") in WORKLOAD_CONTAINERS.values():
            return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
    return None


def result_from_pods(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The workload's result JSON: from the pod that succeeded, else from the newest terminated pod
    that wrote one. A retried Job's pods can share a creation second (timestamps are to the second),
    so the pod that completed the Job is found by its exit code, not by its age."""
    def succeeded_then_newest(pod: dict[str, Any]) -> tuple[bool, str]:
        return (termination(pod) or {}).get("exitCode") == 0, pod["metadata"].get("creationTimestamp") or ""

    for pod in sorted(pods, key=succeeded_then_newest, reverse=True):
        terminated = termination(pod)
        if terminated and terminated.get("message"):
            try:
                return json.loads(terminated["message"])
            except ValueError:
                continue
    return None


def pod_problem(pods: list[dict[str, Any]]) -> str:
    """Why pods do not run or died, in Kubernetes' words."""
    for pod in pods:
        name = pod["metadata"]["name"]
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            failed = (status.get("state") or {}).get("terminated") or {}
            if failed.get("exitCode"):
                detail = f": {failed['message'].strip()[-500:]}" if failed.get("message") else ""
                return f"pod {name}: init container {status.get('name')} failed (exit code {failed['exitCode']}){detail}"
        terminated = termination(pod)
        if terminated and terminated.get("reason") not in (None, "Completed"):
            return f"pod {name}: {terminated['reason']} (exit code {terminated.get('exitCode')})"
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in WAITING_PROBLEMS:
                return f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {name}: {cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}"
    return ""


MLFLOW_BACKOFF_SECONDS = 30.0


async def observe_batch_job(client: KubeClient, namespace: str, name: str) -> WorkloadState:
    """A workload's Job: absent, queued (suspended, waiting for Kueue), running (with what keeps its pods
    from running), stopping (deleted, its pods still ending), or finished with the result its pod left in
    the termination message."""
    batch_job = await client.get("batch/v1", "Job", namespace, name)
    if batch_job is None:
        return WorkloadState("Absent")
    meta, spec, job_status = batch_job["metadata"], batch_job.get("spec") or {}, batch_job.get("status") or {}
    if meta.get("deletionTimestamp"):
        return WorkloadState("Stopping", since=meta["deletionTimestamp"])
    queued = QUEUE_LABEL in (meta.get("labels") or {})
    if queued and "suspend" not in spec:
        # An API server that knows Job suspension (1.21+) always returns the field; this one dropped it.
        return WorkloadState("Failed", result={
            "succeeded": False, "reason": QUEUE_UNSUPPORTED,
            "message": f"spec.queueName: the cluster's API server dropped spec.suspend from Job {name}, so the Job "
                       f"would run without waiting for Kueue: Kueue and queued FineTuneJobs need Kubernetes 1.22 or "
                       f"later (the Job was deleted)"})
    pods = await client.list("v1", "Pod", namespace, f"tuneloop.dev/workload={name}")
    started = job_status.get("startTime")
    if condition(batch_job, "Complete"):
        result = result_from_pods(pods)
        finished = job_status.get("completionTime") or condition(batch_job, "Complete").get("lastTransitionTime")
        if result is None:
            return WorkloadState("Failed", since=finished, started=started,
                                 message=f"Job {name} completed but no pod left the workload's result")
        return WorkloadState("Succeeded" if result.get("succeeded") else "Failed", result=_as_uris(result),
                             since=finished, started=started)
    failed = condition(batch_job, "Failed")
    if failed:
        result = result_from_pods(pods)
        message = (f"Job {name} failed: {failed.get('reason', '')}: {failed.get('message', '')}. "
                   f"{pod_problem(pods)}").strip()
        return WorkloadState("Failed", result=_as_uris(result) if result else None, message=message,
                             since=failed.get("lastTransitionTime"), started=started)
    if spec.get("suspend"):
        return await _queued(client, batch_job)
    return WorkloadState("Running", message=pod_problem(pods), since=job_status.get("startTime"))


async def _queued(client: KubeClient, batch_job: dict[str, Any]) -> WorkloadState:
    """A suspended Job waiting for Kueue, with Kueue's own account of why from its Workload: the condition
    that says why it is not admitted (Evicted after a preemption, else QuotaReserved False)."""
    meta = batch_job["metadata"]
    suspended = condition(batch_job, "Suspended")  # set by the Job controller once a started Job is suspended
    since = (suspended or {}).get("lastTransitionTime") or meta.get("creationTimestamp")
    try:
        workloads = await client.list(*KUEUE_WORKLOAD, meta["namespace"], f"{KUEUE_JOB_UID_LABEL}={meta.get('uid')}")
    except KubeError as error:
        if error.status not in (403, 404):  # 404: no Kueue API on this cluster; 403: not allowed to read it
            raise
        return WorkloadState("Queued", since=since, queue_reason="NoKueueWorkload",
                             queue_message=f"Kueue's Workloads cannot be read ({error.status} {error.reason}): is "
                                           f"Kueue installed, and does it manage batch/v1 Jobs?")
    if not workloads:
        return WorkloadState("Queued", since=since, queue_reason="NoKueueWorkload",
                             queue_message="Kueue has not made a Workload for this Job yet")
    kueue_workload = workloads[0]
    conditions = (kueue_workload.get("status") or {}).get("conditions") or []
    why = (next((c for c in conditions if c.get("type") == "Evicted" and c.get("status") == "True"), None)
           or next((c for c in conditions if c.get("type") == "QuotaReserved" and c.get("status") == "False"), None))
    return WorkloadState("Queued", since=since, queue_workload=kueue_workload["metadata"]["name"],
                         queue_reason=(why or {}).get("reason") or "Pending",
                         queue_message=(why or {}).get("message") or "not yet attempted by Kueue")


@dataclass
class FineTuneJobRuntime:
    client: KubeClient
    config: OperatorConfig
    # After a failed progress read, no reads for a while: with MLflow down, every running job's
    # reconcile would otherwise wait for its own timeout.
    mlflow_quiet_until: float = 0.0

    def context(self) -> ReconcileContext:
        return ReconcileContext(mode="cluster", catalog=frozenset(self.config.catalog),
                                registry_configured=bool(self.config.mlflow_tracking_uri),
                                cost_per_gpu_hour=self.config.cost_per_gpu_hour, currency=self.config.cost_currency)

    async def observe(self, resource: Resource, now: datetime) -> Observed:
        """The workload of the stage the job is in (the reconciler looks at no other); before the first,
        whether the Secrets and addresses the spec names may be used."""
        job, status, context = resource.object, resource.status, self.context()
        queue = queue_name(job, self.config) if job is not None else None
        stage = (None if job is None or status.phase in TERMINAL_PHASES or status.phase == "Pending" else
                 (stages := stages_for(job.spec))[current_stage_index(stages, status)])
        if job is None or stage is None:
            refusals = await self.refusals(job) if job is not None and status.phase == "Pending" else ()
            return Observed(context=context, refusals=refusals, queue_name=queue)
        name = workload_name(job.metadata.name, stage.name, job.spec.resources.nodes)
        return Observed(context=context, queue_name=queue,
                        workloads={name: await self.observe_workload(job, name, with_progress=stage is TRAIN)})

    async def act(self, resource: Resource, observed: Observed, decision: Decision) -> list[EmitEvent]:
        for action in decision.actions:
            if isinstance(action, StopWorkload):
                await self.stop(resource.object, action)
            else:
                await self.launch(resource.object, action)
        return []

    async def stop(self, job: FineTuneJob, action: StopWorkload) -> None:
        """Delete the Job in the foreground: its pods get SIGTERM and terminationGraceSeconds, and the Job
        stays (Stopping) until they have ended. Its ConfigMap stays for the relaunch."""
        if await self.client.delete("batch/v1", "Job", job.metadata.namespace, action.name, propagation="Foreground"):
            log.info("%s/%s: %s workload %s stopped", job.metadata.namespace, job.metadata.name, action.stage,
                     action.name)

    async def finish(self, resource: Resource, decision: Decision) -> None:
        """Nothing waits for the status to be written."""

    def forget(self, namespace: str, name: str) -> None:
        """Nothing is held per object."""

    async def refusals(self, job: FineTuneJob) -> tuple[Refusal, ...]:
        """Where the evaluator would send the judge's key and the augment stage the teacher's, and the
        Secrets they would mount."""
        spec, namespace = job.spec, job.metadata.namespace
        endpoints = []
        if spec.evaluation.enabled and spec.evaluation.judge is not None:
            endpoints.append(("judge", "spec.evaluation.judge", spec.evaluation.judge))
        if spec.dataset.augment is not None:
            endpoints.append(("teacher", "spec.dataset.augment.teacher", spec.dataset.augment.teacher))
        refusals = []
        for usage, field_path, endpoint in endpoints:
            if problem := address_problem(f"{field_path}.url", endpoint.url, namespace, self.config.allowed_urls):
                refusals.append(Refusal("AddressNotAllowed", problem))
            if endpoint.api_key_secret is not None:
                try:
                    await usable_secret(self.client, self.config, namespace, endpoint.api_key_secret, usage,
                                        f"{field_path}.apiKeySecret")
                except SecretRefused as refusal:
                    refusals.append(Refusal("SecretNotAllowed", str(refusal)))
        return tuple(refusals)

    async def observe_workload(self, job: FineTuneJob, name: str, with_progress: bool = False) -> WorkloadState:
        state = await observe_batch_job(self.client, job.metadata.namespace, name)
        if state.phase == "Running" and with_progress:
            return WorkloadState("Running", message=state.message, progress=await self.progress(job))
        return state

    async def progress(self, job: FineTuneJob) -> dict[str, Any] | None:
        """Live progress from the MLflow run the trainer names after the job (see manifests.trainer_workload)."""
        if not self.config.mlflow_tracking_uri or time.monotonic() < self.mlflow_quiet_until:
            return None
        try:
            return await mlflow_progress(self.config.mlflow_tracking_uri, "tuneloop",
                                         f"{job.metadata.namespace}/{job.metadata.name}",
                                         retry=self.config.outbound.mlflow)
        except MlflowUnavailable:
            self.mlflow_quiet_until = time.monotonic() + MLFLOW_BACKOFF_SECONDS
            return None

    async def launch(self, job: FineTuneJob, action: LaunchWorkload) -> None:
        objects = workload_objects(job, action, self.config)  # a spec it cannot render raises before any change
        if action.replace:
            # The finished Job of the same name goes first; its ConfigMap stays and is re-rendered.
            await self.client.delete("batch/v1", "Job", job.metadata.namespace, action.name)
            await self.client.delete("v1", "ConfigMap", job.metadata.namespace, action.name)
        created = [obj["kind"] for obj in objects if await self.client.create_if_absent(obj)]
        if created:
            log.info("%s/%s: %s workload %s launched (%s created)", job.metadata.namespace, job.metadata.name,
                     action.stage, action.name, ", ".join(created))


def _as_uris(result: dict[str, Any]) -> dict[str, Any]:
    storage = Storage()
    for key in ("adapterPath", "testPath", "recordsPath", "syntheticPath", "path"):
        if result.get(key):
            result[key] = storage.uri(result[key])
    for exported in result.get("files") or []:  # the export stage's
        exported["uri"] = storage.uri(exported["uri"])
    return result
