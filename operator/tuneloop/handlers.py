"""kopf wiring only: events and timers -> observe -> reconcile -> act -> status.

Every FineTuneJob is reconciled when it appears (create/resume), when its spec changes, and on a
timer while it is not finished. Each pass is idempotent: deterministic names, create-if-absent,
status written last, so an operator killed at any instant and restarted picks up where it was.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import kopf

from tuneloop import metrics
from tuneloop.api.common import GROUP, VERSION
from tuneloop.api.finetunejob import PLURAL, TERMINAL_PHASES, FineTuneJob, FineTuneJobStatus
from tuneloop.config import OperatorConfig, load_config
from tuneloop.reconcile.finetunejob import EmitEvent, LaunchWorkload, Observed, ReconcileContext, reconcile
from tuneloop.runtime.kube_client import KubeClient
from tuneloop.runtime.kubernetes import KubernetesRuntime

log = logging.getLogger("tuneloop.operator")
RECONCILE_INTERVAL = float(os.environ.get("TUNELOOP_RECONCILE_INTERVAL", "10"))
STATUS_FIELDS = {field.alias or name for name, field in FineTuneJobStatus.model_fields.items()}


class State:
    """What the handlers share in one operator process (set up at startup)."""

    config: OperatorConfig = OperatorConfig()
    runtime: KubernetesRuntime | None = None
    connection: Any = None


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    State.connection = info
    return info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    State.config = load_config()
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    # kopf.event() (phase changes, failures) always posts; kopf's own log lines only from WARNING,
    # or every timer tick ("Timer succeeded") would become an Event: one API write per job per period.
    settings.posting.level = logging.WARNING


def runtime() -> KubernetesRuntime:
    """Built on first use: kopf logs in after the startup handlers have run."""
    if State.runtime is None:
        if State.connection is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=1)
        State.runtime = KubernetesRuntime(KubeClient.from_connection_info(State.connection), State.config)
    return State.runtime


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if State.runtime is not None:
        await State.runtime.client.close()
        State.runtime = None


def context() -> ReconcileContext:
    return ReconcileContext(mode="cluster", catalog=frozenset(State.config.catalog),
                            registry_configured=bool(State.config.mlflow_tracking_uri))


async def reconcile_finetunejob(body: kopf.Body, patch: kopf.Patch) -> None:
    started = time.monotonic()
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
    try:
        for action in decision.actions:
            if isinstance(action, LaunchWorkload):
                await runtime().launch(job, action)
            elif isinstance(action, EmitEvent):
                kopf.event(body, type=action.type, reason=action.reason, message=action.message[:1024])
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    metrics.record_phase(meta.get("uid") or name, decision.status.phase)
    patch.status.update(decision.status.to_wire())


async def counted_reconcile(body: kopf.Body, patch: kopf.Patch) -> None:
    try:
        await reconcile_finetunejob(body, patch)
    except Exception:
        metrics.RECONCILE_ERRORS.inc()
        raise


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
    await counted_reconcile(body, patch)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    """Owned ConfigMaps, Services and Jobs go with the FineTuneJob (ownerReferences); only metrics remain."""
    metrics.forget(body["metadata"].get("uid") or body["metadata"]["name"])


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL,
            when=lambda status, **_: (status or {}).get("phase") not in TERMINAL_PHASES)
async def on_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await counted_reconcile(body, patch)
