"""The FineTuneSchedule runtime on a cluster: observe() what the cluster shows, act() on a pass's decision.

observe(): the FineTuneJobs the schedule created (label tuneloop.dev/schedule), the snapshot
workload of the run in progress, whether the feedback service's address and token may be used
(outbound.py, secrets.py), and, only when a slot may start a run, the service's count of new
corrections. act(): snapshot ConfigMap + Job, the run's FineTuneJob, deletions
(history limits, Replace).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuneloop.api.common import fitted
from tuneloop.api.finetunejob import KIND as FINETUNEJOB_KIND
from tuneloop.api.finetuneschedule import FineTuneSchedule
from tuneloop.config import OperatorConfig
from tuneloop.outbound import address_problem
from tuneloop.reconcile.core import EmitEvent
from tuneloop.reconcile.finetuneschedule import (
    SCHEDULE_LABEL,
    Action,
    CreateJob,
    Decision,
    DeleteJob,
    JobView,
    LaunchSnapshot,
    Observed,
    Resource,
    SnapshotState,
    needs_feedback_count,
    snapshot_name,
)
from tuneloop.reconcile.refusals import Refusal
from tuneloop.runtime.feedback_client import FeedbackUnavailable, feedback_stats
from tuneloop.runtime.finetunejob import observe_batch_job
from tuneloop.runtime.kube_client import KubeClient
from tuneloop.runtime.manifests import Storage
from tuneloop.runtime.schedule_manifests import snapshot_objects
from tuneloop.runtime.secrets import SecretRefused, secret_value

FTJ = ("tuneloop.dev/v1alpha1", FINETUNEJOB_KIND)


def preference_files_as_uris(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pairs and KTO files' paths as the pod saw them, as pvc:// URIs (observe_batch_job does the SFT
    file's `path`)."""
    if result is None:
        return None
    storage = Storage()
    for key in ("pairs", "kto"):
        if (result.get(key) or {}).get("path"):
            result[key] = {**result[key], "path": storage.uri(result[key]["path"])}
    return result


def job_view(obj: dict[str, Any]) -> JobView:
    status = obj.get("status") or {}
    evaluation, registry = status.get("evaluation") or {}, status.get("registry") or {}
    return JobView(phase=status.get("phase", "Pending"), created=obj["metadata"].get("creationTimestamp", ""),
                   message=status.get("message", ""), gate_passed=(evaluation.get("gate") or {}).get("passed"),
                   version=registry.get("version"), aliases=tuple(registry.get("aliases") or ()),
                   score=evaluation.get("score"), baseline_score=evaluation.get("baselineScore"))


@dataclass
class FineTuneScheduleRuntime:
    client: KubeClient
    config: OperatorConfig

    async def observe(self, resource: Resource, now: datetime) -> Observed:
        schedule, status = resource.object, resource.status
        if schedule is None:
            return Observed()
        namespace, name = schedule.metadata.namespace, schedule.metadata.name
        if not (schedule.spec.feedback.snapshot_uri or "").startswith("pvc://"):
            return Observed(spec_problem="spec.feedback.snapshotUri: a cluster needs a pvc://claim/path folder "
                                         "for the snapshots")
        jobs = {obj["metadata"]["name"]: job_view(obj)
                for obj in await self.client.list(*FTJ, namespace, f"{SCHEDULE_LABEL}={fitted(name)}")}
        snapshot = None
        if status.run is not None and status.run.step == "Snapshot":
            state = await observe_batch_job(self.client, namespace, snapshot_name(status.run.job_name))
            snapshot = SnapshotState(state.phase, preference_files_as_uris(state.result), state.message)
        new = last = problem = refusal = None
        feedback = schedule.spec.feedback
        if address := address_problem("spec.feedback.url", feedback.url, namespace, self.config.allowed_urls):
            refusal = Refusal("AddressNotAllowed", address)
        elif needs_feedback_count(resource, now):  # the token is read only when it is used
            try:
                token = None if feedback.token_secret is None else await secret_value(
                    self.client, self.config, namespace, feedback.token_secret, "feedback", "spec.feedback.tokenSecret")
                stats = await feedback_stats(feedback.url, token, feedback.model, status.trained_up_to_id,
                                             retry=self.config.outbound.feedback)
                new, last = stats.new_rows, stats.last_id
            except SecretRefused as error:
                refusal = Refusal("SecretNotAllowed", str(error))
            except FeedbackUnavailable as error:
                problem = str(error)
        return Observed(jobs=jobs, new_corrections=new, last_feedback_id=last, feedback_problem=problem,
                        snapshot=snapshot, refusal=refusal)

    async def act(self, resource: Resource, observed: Observed, decision: Decision) -> list[EmitEvent]:
        if resource.object is not None:
            for action in decision.actions:
                await self.carry_out(resource.object, action)
        return []

    async def finish(self, resource: Resource, decision: Decision) -> None:
        """Nothing waits for the status to be written."""

    def forget(self, namespace: str, name: str) -> None:
        """Nothing is held per object."""

    async def carry_out(self, schedule: FineTuneSchedule, action: Action) -> None:
        namespace = schedule.metadata.namespace
        if isinstance(action, LaunchSnapshot):
            for obj in snapshot_objects(schedule, action.name, action.after_id, action.up_to_id, self.config):
                await self.client.create_if_absent(obj)
        elif isinstance(action, CreateJob):
            await self.client.create_if_absent(action.manifest)
        elif isinstance(action, DeleteJob):
            await self.client.delete(*FTJ, namespace, action.name)
        else:
            raise TypeError(f"not a runtime action: {action!r}")
