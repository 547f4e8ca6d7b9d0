"""One reconcile pass on an object made of a spec and a status, as the tests write them."""

from __future__ import annotations

import dataclasses
from typing import Any

from tuneloop.api.common import API_VERSION, parse_time
from tuneloop.api.finetunejob import FineTuneJob, FineTuneJobStatus
from tuneloop.api.finetuneschedule import FineTuneSchedule, FineTuneScheduleStatus
from tuneloop.api.modeldeployment import ModelDeployment, ModelDeploymentStatus
from tuneloop.reconcile import core
from tuneloop.reconcile import finetunejob, finetuneschedule, modeldeployment

NOW = "2026-03-01T12:00:00Z"


def resource(model: type, status: Any, name: str, spec: Any, *, namespace: str = "default",
             generation: int | None = None, uid: str | None = None, created: str | None = None,
             annotations: dict[str, str] | None = None) -> core.Resource:
    """The object as the handlers read it, holding `status` itself (so a test sees whether a pass changed it)."""
    meta = {"name": name, "namespace": namespace, "generation": generation, "uid": uid,
            "creationTimestamp": created, "annotations": annotations or {}}
    body = {"apiVersion": API_VERSION, "kind": model.model_fields["kind"].default,
            "metadata": {key: value for key, value in meta.items() if value is not None}, "spec": spec}
    return dataclasses.replace(core.read(model, type(status), body), status=status,
                               stored_status=status.to_wire())


def ftj_pass(name: str, spec: Any, status: FineTuneJobStatus, observed: finetunejob.Observed,
             context: finetunejob.ReconcileContext, generation: int | None = None, now: str = NOW):
    job = resource(FineTuneJob, status, name, spec, generation=generation)
    return finetunejob.reconcile(job, dataclasses.replace(observed, context=context), parse_time(now))


def md_pass(name: str, spec: Any, status: ModelDeploymentStatus, observed: modeldeployment.Observed, now,
            *, annotations: dict[str, str] | None = None, generation: int | None = None):
    md = resource(ModelDeployment, status, name, spec, generation=generation, annotations=annotations)
    return modeldeployment.reconcile(md, observed, now)


def fts_pass(name: str, namespace: str, uid: str | None, spec: Any, status: FineTuneScheduleStatus,
             observed: finetuneschedule.Observed, now, *, generation: int | None = None, created: str | None = None):
    schedule = resource(FineTuneSchedule, status, name, spec, namespace=namespace, uid=uid, generation=generation,
                        created=created)
    return finetuneschedule.reconcile(schedule, observed, now)
