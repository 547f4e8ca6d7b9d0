"""kopf wiring only: one generic reconcile pass per kind, run by one daemon per object.

Every object gets a daemon for as long as it needs passes: a FineTuneJob until it finishes, a
ModelDeployment and a FineTuneSchedule for as long as they exist (a followed MLflow alias can move
and slots come due at any time). The daemon runs a pass at once, then again when the pass's
`requeue_after` comes due, when the object's spec or annotations change (a watch-event handler
wakes it), and at the latest after the resync interval. One daemon per object: passes of one
object never overlap. Each pass is idempotent (deterministic names, create-if-absent, status
written last), so an operator killed at any instant and restarted picks up where it was.

Process state (configuration, the Kubernetes client, runtimes) lives in kopf's memo: the startup
handler puts one OperatorState in the operator's memo, which every object's memo shares.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from tuneloop import clock, metrics
from tuneloop.api import finetunejob as ftj
from tuneloop.api import finetuneschedule as ftsched
from tuneloop.api import modeldeployment as mdep
from tuneloop.api.common import GROUP, VERSION, WireModel
from tuneloop.api.crd import Kind
from tuneloop.config import OperatorConfig, load_config
from tuneloop.reconcile import core
from tuneloop.reconcile import finetunejob as job_controller
from tuneloop.reconcile import finetuneschedule as schedule_controller
from tuneloop.reconcile import modeldeployment as rollout_controller
from tuneloop.registry import webhooks as mlflow_webhooks
from tuneloop.runtime.events import EventRecorder
from tuneloop.runtime.finetunejob import FineTuneJobRuntime
from tuneloop.runtime.finetuneschedule import FineTuneScheduleRuntime
from tuneloop.runtime.kube_client import KubeClient
from tuneloop.registry.aliases import AliasResolver
from tuneloop.runtime.modeldeployment import ModelDeploymentRuntime
from tuneloop.runtime.status import write_status

log = logging.getLogger("tuneloop.operator")
RESYNC_SECONDS = float(os.environ.get("TUNELOOP_RECONCILE_INTERVAL", "10"))
CAUGHT_UP_SECONDS = 2.0  # how long a pass waits for the watch to deliver the status the last pass wrote
CANCELLATION_SECONDS = 5.0


@dataclass
class OperatorState:
    """What the handlers share in one operator process."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    connection: Any = None  # kopf's ConnectionInfo from the login handler
    aliases: AliasResolver = field(default_factory=lambda: AliasResolver(None))
    webhooks: Any = None  # the MLflow webhook receiver's aiohttp runner, when configured
    passes: asyncio.Semaphore | None = None  # operator.maxConcurrentReconciles
    client: KubeClient | None = None
    events: EventRecorder | None = None
    runtimes: dict[str, Any] = field(default_factory=dict)
    # Set by the first daemon told that the operator exits: kopf can spawn a daemon for an event that
    # arrives during the shutdown, which then would run passes until it is cancelled.
    exiting: bool = False

    def kube(self) -> KubeClient:
        """Built on first use: kopf logs in after the startup handlers have run."""
        if self.client is None:
            if self.connection is None:
                raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=1)
            self.client = KubeClient.from_connection_info(self.connection, self.config.outbound.kubernetes)
        return self.client

    def recorder(self) -> EventRecorder:
        if self.events is None:
            self.events = EventRecorder(self.kube())
        return self.events

    def runtime(self, controller: "Controller") -> Any:
        if controller.crd.kind not in self.runtimes:
            self.runtimes[controller.crd.kind] = controller.runtime(self)
        return self.runtimes[controller.crd.kind]


def operator_state(memo: Any) -> OperatorState:
    if "tuneloop" not in memo:
        memo.tuneloop = OperatorState()
    return memo.tuneloop


@dataclass(frozen=True)
class Controller:
    """One kind: its model, its pure reconciler and the runtime that observes and acts for it."""

    model: type[WireModel]
    crd: Kind
    reconcile: Callable[[core.Resource, Any, Any], core.Decision]
    runtime: Callable[[OperatorState], Any]
    # A phase that may rightly last for ever (not timed by the stuck-phase alert); None: the kind has no phase.
    settled: Callable[[str], bool] | None
    needs_passes: Callable[[Mapping[str, Any]], bool] = lambda status: True
    record: Callable[[core.Resource, core.Decision], None] = lambda resource, decision: None


def _not_finished(status: Mapping[str, Any]) -> bool:
    return (status or {}).get("phase") not in ftj.TERMINAL_PHASES


def _record_rollouts(resource: core.Resource, decision: core.Decision) -> None:
    metrics.rollouts_ended(resource.namespace, resource.name, resource.status.history, decision.status.history)


CONTROLLERS = (
    Controller(ftj.FineTuneJob, ftj.CRD, job_controller.reconcile,
               lambda state: FineTuneJobRuntime(state.kube(), state.config),
               settled=lambda phase: phase in ftj.TERMINAL_PHASES, needs_passes=_not_finished),
    Controller(mdep.ModelDeployment, mdep.CRD, rollout_controller.reconcile,
               lambda state: ModelDeploymentRuntime(state.kube(), state.config, state.aliases),
               settled=lambda phase: phase in ("Healthy", "Degraded", "Aborted"), record=_record_rollouts),
    Controller(ftsched.FineTuneSchedule, ftsched.CRD, schedule_controller.reconcile,
               lambda state: FineTuneScheduleRuntime(state.kube(), state.config), settled=None),
)


# --- the operator ------------------------------------------------------------------------------------

@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> Any:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    operator_state(memo).connection = info
    return info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    state = operator_state(memo)
    state.config = config = load_config()
    state.aliases = AliasResolver(config.mlflow_tracking_uri, config.alias_poll_seconds, retry=config.outbound.mlflow)
    if config.webhook_port:
        try:
            secret = mlflow_webhooks.secret_from_environment()
        except ValueError as error:
            raise kopf.PermanentError(str(error)) from None
        if not secret:
            raise kopf.PermanentError(f"webhookPort is set but neither {mlflow_webhooks.SECRET_ENV} nor the file "
                                      f"{mlflow_webhooks.SECRET_FILE_ENV} names holds a secret: MLflow webhooks "
                                      "must be signed")
        state.webhooks = await mlflow_webhooks.serve(state.aliases, secret, config.webhook_port)
    if config.max_concurrent_reconciles:
        state.passes = asyncio.Semaphore(config.max_concurrent_reconciles)
        # kopf's own per-object workers (watch events, daemon spawning) are bounded the same way. A worker
        # stays for idle_timeout after its object's last event, holding its place: kopf's 5 s default
        # would let a bounded pool turn over a few objects a second.
        settings.queueing.worker_limit = config.max_concurrent_reconciles
        settings.queueing.idle_timeout = 0.5
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    # Our Events go through runtime/events.py, awaited before the status is written; kopf's own log
    # lines become Events only from WARNING.
    settings.posting.level = logging.WARNING


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    state = operator_state(memo)
    serving = state.runtimes.pop(mdep.KIND, None)
    if serving is not None:
        await serving.analyses.close()
    state.runtimes.clear()
    state.events = None
    if state.webhooks is not None:
        await state.webhooks.cleanup()
        state.webhooks = None
    if state.client is not None:
        await state.client.close()
        state.client = None


# --- one object's passes -----------------------------------------------------------------------------

@dataclass
class ObjectLoop:
    """One object's daemon and what wakes it, in that object's memo."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    written: str | None = None  # the resourceVersion of the last status this operator wrote
    seen: tuple[Any, ...] | None = None  # the generation and annotations the last pass ran on


def object_loop(memo: Any) -> ObjectLoop:
    if "loop" not in memo:
        memo.loop = ObjectLoop()
    return memo.loop


def _change_key(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a pass must see as soon as it changes: the spec (its generation) and annotations other than kopf's."""
    meta = body.get("metadata") or {}
    annotations = {key: value for key, value in (meta.get("annotations") or {}).items() if not key.startswith("kopf.")}
    return meta.get("generation"), sorted(annotations.items())


async def reconcile_pass(controller: Controller, state: OperatorState, body: kopf.Body,
                         loop: ObjectLoop) -> core.Decision | None:
    """Read -> observe -> reconcile -> act -> Events -> status. None when the object needs no pass."""
    resource = core.read(controller.model, controller.crd.status, body)
    if not controller.needs_passes(resource.stored_status):
        return None
    loop.seen = _change_key(body)
    runtime = state.runtime(controller)
    observed = await runtime.observe(resource, clock.now())
    # The time of the decision, not of the start of a slow observation: the deadlines it stamps start now.
    decision = controller.reconcile(resource, observed, clock.now())
    problems = await runtime.act(resource, observed, decision)
    for event in (*decision.events, *problems):
        await state.recorder().post(body, event.type, event.reason, event.message)
    controller.record(resource, decision)
    if controller.settled is not None:
        metrics.record_phase(resource.kind, resource.namespace, resource.name, decision.status.phase,
                             settled=controller.settled(decision.status.phase))
    written = await write_status(state.kube(), resource, decision.status.to_wire())
    if written is not None:
        loop.written = written
        if (body.get("metadata") or {}).get("resourceVersion") == written:
            loop.caught_up.set()
        else:
            loop.caught_up.clear()
    await runtime.finish(resource, decision)
    return decision


async def next_pass_in(controller: Controller, state: OperatorState, body: kopf.Body, loop: ObjectLoop) -> float:
    """One pass; the seconds until the next. Nothing of the pass is kept while the daemon sleeps."""
    decision = await reconcile_pass(controller, state, body, loop)
    if decision is None or decision.requeue_after is None:
        return RESYNC_SECONDS
    return min(decision.requeue_after, RESYNC_SECONDS)


async def _sleep(wake: asyncio.Event, seconds: float) -> None:
    """Until the time is up or the object changed (a stopped daemon is cancelled). No task of its own:
    a thousand sleeping objects cost a thousand timer handles."""
    alarm = asyncio.get_running_loop().call_later(seconds, wake.set)
    try:
        await wake.wait()
    finally:
        alarm.cancel()


async def run_passes(controller: Controller, memo: Any, body: kopf.Body, stopped: kopf.DaemonStopped,
                     logger: logging.Logger) -> None:
    state = operator_state(memo)
    try:
        await _passes(controller, state, object_loop(memo), body, logger)
    finally:
        if stopped.reason is not None and stopped.reason & kopf.DaemonStoppingReason.OPERATOR_EXITING:
            state.exiting = True


async def _passes(controller: Controller, state: OperatorState, loop: ObjectLoop, body: kopf.Body,
                  logger: logging.Logger) -> None:
    failures = 0
    while not state.exiting:
        if loop.written is not None and not loop.caught_up.is_set():
            try:  # the watch has not delivered the status the last pass wrote: a pass now would read an older one
                await asyncio.wait_for(loop.caught_up.wait(), CAUGHT_UP_SECONDS)
            except asyncio.TimeoutError:
                pass
        loop.wake.clear()
        started = time.monotonic()
        try:
            if state.passes is None:
                delay = await next_pass_in(controller, state, body, loop)
            else:
                async with state.passes:
                    delay = await next_pass_in(controller, state, body, loop)
            failures = 0
        except kopf.TemporaryError as error:
            delay = error.delay or 1.0
        except Exception as error:  # the pass is retried; kopf posts this log line as a Warning Event
            metrics.RECONCILE_ERRORS.inc()
            failures = min(failures + 1, 10)
            delay = min(RESYNC_SECONDS, 0.5 * 2 ** failures)
            logger.error(f"reconcile pass failed, retried in {delay:.1f}s: {error}")
            log.debug("reconcile pass failed", exc_info=True)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        await _sleep(loop.wake, delay)


def notice_change(memo: Any, body: kopf.Body) -> None:
    """A watch event: wake the object's daemon if its spec or annotations changed since its last pass."""
    loop = object_loop(memo)
    if loop.written is not None and (body.get("metadata") or {}).get("resourceVersion") == loop.written:
        loop.caught_up.set()
    if loop.seen is not None and _change_key(body) != loop.seen:
        loop.wake.set()


def register(controller: Controller) -> None:
    plural = controller.crd.plural

    # When the object goes or the operator stops, the daemon is cancelled, a pass under way included:
    # that is safe, every pass is idempotent.
    @kopf.daemon(GROUP, VERSION, plural, id=f"{plural}-passes", cancellation_timeout=CANCELLATION_SECONDS,
                 when=lambda status, **_: controller.needs_passes(status or {}))
    async def passes(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, logger: logging.Logger,
                     **_: Any) -> None:
        await run_passes(controller, memo, body, stopped, logger)

    @kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-changes")
    def changes(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        if type == "DELETED":
            forget(controller, memo, body)
        else:
            notice_change(memo, body)


def forget(controller: Controller, memo: Any, body: kopf.Body) -> None:
    """Owned objects go with the object (ownerReferences); only metrics and running analyses remain here.
    A watch event, not an on.delete handler: kopf would store a diff base on every object for one."""
    meta = body["metadata"]
    runtime = operator_state(memo).runtimes.get(controller.crd.kind)
    if runtime is not None:
        runtime.forget(meta.get("namespace"), meta["name"])
    metrics.forget(controller.crd.kind, meta.get("namespace", ""), meta["name"])


for _controller in CONTROLLERS:
    register(_controller)
