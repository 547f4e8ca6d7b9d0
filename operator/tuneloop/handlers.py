"""kopf wiring only: events and timers -> observe -> reconcile -> act -> status.

Every FineTuneJob is reconciled when it appears (create/resume), when its spec changes, and on a
timer while it is not finished. Every ModelDeployment is reconciled when it appears, when its spec
or annotations (promote/abort/retry) change, and on a timer for as long as it exists (a followed
MLflow alias can move at any time); every FineTuneSchedule likewise (its slots come due on the
clock). Each pass is idempotent: deterministic names, create-if-absent, status written last, so
an operator killed at any instant and restarted picks up where it was.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import kopf

from tuneloop import clock, metrics
from tuneloop.api import finetuneschedule as ftsched
from tuneloop.api import modeldeployment as mdep
from tuneloop.api.common import GROUP, VERSION, merge_patch_between
from tuneloop.api.finetunejob import KIND as FTJ_KIND
from tuneloop.api.finetunejob import PLURAL, TERMINAL_PHASES, FineTuneJob, FineTuneJobStatus
from tuneloop.config import OperatorConfig, load_config
from tuneloop.reconcile import finetuneschedule as cron
from tuneloop.reconcile import modeldeployment as rollout
from tuneloop.reconcile.finetunejob import EmitEvent, LaunchWorkload, Observed, ReconcileContext, reconcile
from tuneloop.runtime import mlflow_webhooks
from tuneloop.runtime.events import EventRecorder
from tuneloop.runtime.kube_client import KubeClient
from tuneloop.runtime.kubernetes import KubernetesRuntime
from tuneloop.runtime.model_aliases import AliasResolver
from tuneloop.runtime.schedules import ScheduleRuntime
from tuneloop.runtime.serving import CannotRender, ServingRuntime

log = logging.getLogger("tuneloop.operator")
RECONCILE_INTERVAL = float(os.environ.get("TUNELOOP_RECONCILE_INTERVAL", "10"))
STATUS_FIELDS = {field.alias or name for name, field in FineTuneJobStatus.model_fields.items()}
SCHEDULE_STATUS_FIELDS = {field.alias or name for name, field in ftsched.FineTuneScheduleStatus.model_fields.items()}
# Phases that may rightly last for ever: not timed by the stuck-phase alert.
MDEP_SETTLED_PHASES = ("Healthy", "Degraded", "Aborted")
MDEP_STATUS_FIELDS = {field.alias or name for name, field in mdep.ModelDeploymentStatus.model_fields.items()}


class State:
    """What the handlers share in one operator process (set up at startup)."""

    config: OperatorConfig = OperatorConfig()
    runtime: KubernetesRuntime | None = None
    serving: ServingRuntime | None = None
    schedules: ScheduleRuntime | None = None
    events: EventRecorder | None = None
    aliases: AliasResolver = AliasResolver(None)
    webhooks: Any = None  # the MLflow webhook receiver's aiohttp runner, when configured
    connection: Any = None


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    State.connection = info
    return info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    State.config = load_config()
    State.aliases = AliasResolver(State.config.mlflow_tracking_uri, State.config.alias_poll_seconds)
    if State.config.webhook_port:
        try:
            secret = mlflow_webhooks.secret_from_environment()
        except ValueError as error:
            raise kopf.PermanentError(str(error)) from None
        if not secret:
            raise kopf.PermanentError(f"webhookPort is set but neither {mlflow_webhooks.SECRET_ENV} nor the file "
                                      f"{mlflow_webhooks.SECRET_FILE_ENV} names holds a secret: MLflow webhooks "
                                      "must be signed")
        State.webhooks = await mlflow_webhooks.serve(State.aliases, secret, State.config.webhook_port)
    if State.config.max_concurrent_reconciles:
        settings.queueing.worker_limit = State.config.max_concurrent_reconciles
        # A worker stays for idle_timeout after its object's last event, holding its place: kopf's
        # 5 s default would let a bounded pool turn over a few objects a second.
        settings.queueing.idle_timeout = 0.5
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    # Our Events go through runtime/events.py, awaited before the status is written; kopf's own log
    # lines become Events only from WARNING, or every timer tick ("Timer succeeded") would be one.
    settings.posting.level = logging.WARNING


def runtime() -> KubernetesRuntime:
    """Built on first use: kopf logs in after the startup handlers have run."""
    if State.runtime is None:
        if State.connection is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=1)
        State.runtime = KubernetesRuntime(KubeClient.from_connection_info(State.connection), State.config)
    return State.runtime


def events() -> EventRecorder:
    if State.events is None:
        State.events = EventRecorder(runtime().client)
    return State.events


def serving() -> ServingRuntime:
    if State.serving is None:
        State.serving = ServingRuntime(runtime().client, State.config, State.aliases)
    return State.serving


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if State.serving is not None:
        await State.serving.analyses.close()
        State.serving = None
    State.schedules = None
    State.events = None
    if State.webhooks is not None:
        await State.webhooks.cleanup()
        State.webhooks = None
    if State.runtime is not None:
        await State.runtime.client.close()
        State.runtime = None


def context() -> ReconcileContext:
    return ReconcileContext(mode="cluster", catalog=frozenset(State.config.catalog),
                            registry_configured=bool(State.config.mlflow_tracking_uri))


async def counted(reconcile_pass: Any, body: kopf.Body, patch: kopf.Patch) -> None:
    """One pass, measured: its duration and, when it raises, an error in the metrics."""
    started = time.monotonic()
    try:
        await reconcile_pass(body, patch)
    except Exception:
        metrics.RECONCILE_ERRORS.inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


async def reconcile_finetunejob(body: kopf.Body, patch: kopf.Patch) -> None:
    # kopf keeps its own bookkeeping in status too; only our fields go into the model.
    status = FineTuneJobStatus.model_validate(
        {k: v for k, v in (body.get("status") or {}).items() if k in STATUS_FIELDS})
    if status.phase in TERMINAL_PHASES:
        return
    meta = body["metadata"]
    name, generation = meta["name"], meta.get("generation")
    job = _parse_if_valid(body)
    observed = await runtime().observe(job, status.phase) if job is not None else Observed()
    decision = reconcile(name, dict(body.get("spec") or {}), status, observed, context(), generation)
    for action in decision.actions:
        if isinstance(action, LaunchWorkload):
            await runtime().launch(job, action)
        elif isinstance(action, EmitEvent):
            await events().post(body, action.type, action.reason, action.message)
    metrics.record_phase(FTJ_KIND, meta.get("namespace", ""), name, decision.status.phase,
                         settled=decision.status.phase in TERMINAL_PHASES)
    patch.status.update(decision.status.to_wire())


def _parse_if_valid(body: kopf.Body) -> FineTuneJob | None:
    try:
        return FineTuneJob.model_validate({
            "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: body["metadata"].get(k) for k in ("name", "namespace", "uid", "generation")},
            "spec": dict(body.get("spec") or {}),
        })
    except ValueError:
        return None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await counted(reconcile_finetunejob, body, patch)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    """Owned ConfigMaps, Services and Jobs go with the FineTuneJob (ownerReferences); only metrics remain."""
    metrics.forget(FTJ_KIND, body["metadata"].get("namespace", ""), body["metadata"]["name"])


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL,
            when=lambda status, **_: (status or {}).get("phase") not in TERMINAL_PHASES)
async def on_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await counted(reconcile_finetunejob, body, patch)


# --- ModelDeployment ---------------------------------------------------------------------------------

def _parse_deployment(body: kopf.Body) -> mdep.ModelDeployment | None:
    try:
        return mdep.ModelDeployment.model_validate({
            "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: body["metadata"].get(k) for k in ("name", "namespace", "uid", "generation")},
            "spec": dict(body.get("spec") or {}),
        })
    except ValueError:
        return None


async def reconcile_modeldeployment(body: kopf.Body, patch: kopf.Patch) -> None:
    meta = body["metadata"]
    stored = {k: v for k, v in (body.get("status") or {}).items() if k in MDEP_STATUS_FIELDS}
    status = mdep.ModelDeploymentStatus.model_validate(stored)
    annotations, generation = dict(meta.get("annotations") or {}), meta.get("generation")
    md = _parse_deployment(body)
    if md is not None:
        observed = await serving().observe(md, annotations, generation)
    else:
        observed = rollout.Observed(annotations=annotations, generation=generation)
    decision = rollout.reconcile(meta["name"], dict(body.get("spec") or {}), status, observed,
                                 clock.now())
    target = rollout.target_for(md.spec, observed.resolved_version) if md is not None else None
    for action in decision.actions:
        if isinstance(action, rollout.EmitEvent):
            await events().post(body, action.type, action.reason, action.message)
        elif isinstance(action, rollout.ClearAnnotation):
            patch.metadata.setdefault("annotations", {})[action.key] = None
        elif md is not None:
            try:
                await serving().act(md, target, decision.status, action)
            except CannotRender as error:
                await events().post(body, "Warning", "CannotRender", str(error))
    namespace = meta.get("namespace", "")
    metrics.rollouts_ended(namespace, meta["name"], status.history, decision.status.history)
    metrics.record_phase(mdep.KIND, namespace, meta["name"], decision.status.phase,
                         settled=decision.status.phase in MDEP_SETTLED_PHASES)
    # A merge patch keeps whatever it does not mention: fields the pass cleared are sent as null.
    patch.status.update(merge_patch_between(stored, decision.status.to_wire()))


@kopf.on.resume(GROUP, VERSION, mdep.PLURAL)
@kopf.on.create(GROUP, VERSION, mdep.PLURAL)
@kopf.on.update(GROUP, VERSION, mdep.PLURAL, field="spec")
@kopf.on.update(GROUP, VERSION, mdep.PLURAL, field="metadata.annotations")
async def on_deployment_change(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await counted(reconcile_modeldeployment, body, patch)


@kopf.timer(GROUP, VERSION, mdep.PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL)
async def on_deployment_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await counted(reconcile_modeldeployment, body, patch)


@kopf.on.delete(GROUP, VERSION, mdep.PLURAL, optional=True)
def on_deployment_delete(body: kopf.Body, **_: Any) -> None:
    """Deployments, Services and the PodDisruptionBudget go with it (ownerReferences); analyses stop."""
    if State.serving is not None:
        State.serving.forget((body["metadata"].get("namespace"), body["metadata"]["name"]))
    metrics.forget(mdep.KIND, body["metadata"].get("namespace", ""), body["metadata"]["name"])


# --- FineTuneSchedule --------------------------------------------------------------------------------

def schedules() -> ScheduleRuntime:
    if State.schedules is None:
        State.schedules = ScheduleRuntime(runtime().client, State.config)
    return State.schedules


async def reconcile_schedule(body: kopf.Body, patch: kopf.Patch) -> None:
    meta = body["metadata"]
    stored = {k: v for k, v in (body.get("status") or {}).items() if k in SCHEDULE_STATUS_FIELDS}
    status = ftsched.FineTuneScheduleStatus.model_validate(stored)
    raw_spec, now = dict(body.get("spec") or {}), clock.now()
    created, generation = meta.get("creationTimestamp"), meta.get("generation")
    try:
        schedule = ftsched.FineTuneSchedule.model_validate({
            "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation")}, "spec": raw_spec})
    except ValueError:
        schedule = None
    if schedule is not None:
        observed = await schedules().observe(schedule, raw_spec, status, created, now)
    else:
        observed = cron.Observed(generation=generation, created=created)
    decision = cron.reconcile(meta["name"], meta.get("namespace", "default"), meta.get("uid"), raw_spec, status,
                              observed, now)
    for action in decision.actions:
        if isinstance(action, cron.EmitEvent):
            await events().post(body, action.type, action.reason, action.message)
        elif schedule is not None:
            await schedules().act(schedule, action)
    patch.status.update(merge_patch_between(stored, decision.status.to_wire()))


@kopf.on.resume(GROUP, VERSION, ftsched.PLURAL)
@kopf.on.create(GROUP, VERSION, ftsched.PLURAL)
@kopf.on.update(GROUP, VERSION, ftsched.PLURAL, field="spec")
async def on_schedule_change(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await counted(reconcile_schedule, body, patch)


@kopf.timer(GROUP, VERSION, ftsched.PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL)
async def on_schedule_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await counted(reconcile_schedule, body, patch)
