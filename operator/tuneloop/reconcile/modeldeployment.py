r"""The ModelDeployment blue-green rollout as a pure function: (spec, status, observed world, now) -> Decision.

    Pending --new revision--> Progressing (idle colour up, ready within readinessTimeoutSeconds)
        Progressing --ready--> analysis of the preview (RunAnalysis; skipped without prePromotionAnalysis)
        analysis passed --auto or promote--> [ScalingUp to full replicas] --> SwitchActive --> Healthy
                                                                        (old colour scaled to 0 after the delay)
        analysis passed, no autoPromotion --> Paused (until the promote annotation)
        readiness timeout | analysis failed --> Degraded;  abort annotation --> Aborted
            (preview scaled to 0 after abortScaleDownDelaySeconds, active untouched, revision marked failed)
        postPromotionAnalysis failed --> switch back to the previous colour (if it still has ready pods)

The first revision is analysed too before it takes traffic: nothing serves yet, but a bad adapter
must not become the first thing clients see. Invariant: SwitchActive only names a colour whose
Deployment runs the revision and has ready replicas. Runtimes carry out the actions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from tuneloop.api.common import get_condition, parse_time, rfc3339, set_condition
from tuneloop.api.modeldeployment import (
    Colour,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Outcome,
    Phase,
    RevisionStatus,
    RolloutRecord,
    RolloutStep,
    ScaleDown,
)
from tuneloop.reconcile import core

HISTORY = 5
PROMOTE, ABORT, RETRY = "tuneloop.dev/promote", "tuneloop.dev/abort", "tuneloop.dev/retry"


@dataclass(frozen=True)
class Target:
    """The revision the spec asks for: what the pods run and the hash that names it."""

    revision: str
    adapter_source: str  # models:/<name>/<version> or a storage URI
    adapter_version: str | None


@dataclass(frozen=True)
class DeploymentState:
    """One colour's Deployment as the runtime saw it. ready_replicas counts only pods of `revision`
    (the runtime reports 0 until the Deployment's observedGeneration caught up)."""

    replicas: int
    ready_replicas: int
    revision: str


@dataclass(frozen=True)
class AnalysisResult:
    """The outcome of the RunAnalysis with this run_id (one id per rollout attempt and kind)."""

    run_id: str
    passed: bool
    reason: str = ""
    score: float | None = None
    p95_latency_ms: float | None = None
    error_rate: float | None = None


@dataclass(frozen=True)
class Observed:
    resolved_version: str | None = None  # the MLflow version the adapter's alias points at; None: unknown
    resolve_problem: str | None = None  # why the alias could not be looked up (MLflow unreachable, ...)
    spec_problem: str | None = None  # what makes a valid spec impossible here (a model not in the catalog)
    deployments: dict[Colour, DeploymentState] = field(default_factory=dict)  # absent colour: no Deployment
    analysis: AnalysisResult | None = None  # the latest analysis result the runtime holds


@dataclass(frozen=True)
class ApplyDeployment:
    colour: Colour
    revision: str
    replicas: int


@dataclass(frozen=True)
class ScaleDeployment:
    """Scale a colour once after_seconds have passed; re-emitted with the time left on every pass
    (the deadline lives in status.scaleDown, so a restart keeps it)."""

    colour: Colour
    replicas: int
    after_seconds: float


@dataclass(frozen=True)
class SwitchActive:
    """Point the active Service (and the PodDisruptionBudget) at this colour."""

    colour: Colour


@dataclass(frozen=True)
class SetPreview:
    """Point the preview Service at this colour; None: at the active colour, as Argo Rollouts does."""

    colour: Colour | None


@dataclass(frozen=True)
class RunAnalysis:
    """Analyse a colour through its Service; re-emitted until a result for this revision is observed,
    so the runtime starts it only if none runs for (colour, revision)."""

    colour: Colour
    revision: str
    run_id: str
    post_promotion: bool = False


@dataclass(frozen=True)
class ClearAnnotation:
    key: str


Action = ApplyDeployment | ScaleDeployment | SwitchActive | SetPreview | RunAnalysis | ClearAnnotation
Decision = core.Decision[ModelDeploymentStatus, Action]
Resource = core.Resource[ModelDeployment, ModelDeploymentStatus]


def other(colour: Colour) -> Colour:
    return "green" if colour == "blue" else "blue"


def target_for(spec: ModelDeploymentSpec, resolved_version: str | None) -> Target | None:
    """The revision to serve; None while a followed alias is not resolved yet. Replicas are left
    out of the hash: scaling is not a new revision."""
    adapter = spec.adapter
    if adapter.uri is not None:
        source, version = adapter.uri, None
    else:
        version = adapter.version or resolved_version
        if version is None:
            return None
        source = f"models:/{adapter.name}/{version}"
    shape = {"baseModel": spec.base_model.to_wire(), "adapter": source, "port": spec.port,
             "serving": spec.serving.model_dump(mode="json", exclude={"replicas"})}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:10]
    return Target(revision=digest, adapter_source=source, adapter_version=version)


def rounded(score: float | None) -> float | None:
    """A score as a column shows it: 3 decimals."""
    return None if score is None else round(score, 3)


class Rollout:
    """One reconcile pass: reads spec, observed and now; writes the status copy and the actions."""

    def __init__(self, resource: Resource, status: ModelDeploymentStatus, observed: Observed, now: datetime):
        self.name, self.spec, self.status, self.observed, self.now = resource.name, resource.spec, status, observed, now
        self.annotations, self.generation = resource.annotations, resource.generation
        self.strategy = self.spec.strategy.blue_green
        self.decision = Decision(status)
        self.act, self.event, self.wake_in = self.decision.act, self.decision.event, self.decision.wake_in

    # --- small helpers -------------------------------------------------------------------------
    def condition(self, type: str, state: Literal["True", "False", "Unknown"], reason: str, message: str) -> None:
        self.status.conditions = set_condition(self.status.conditions, type, state, reason, message,
                                               observed_generation=self.generation, now=rfc3339(self.now))

    def set_phase(self, phase: Phase, message: str) -> None:
        if phase != self.status.phase:
            self.event("Warning" if phase in ("Degraded", "Aborted") else "Normal", f"Phase{phase}", message)
        self.status.phase = phase
        self.status.message = message

    def seconds_since(self, text: str) -> float:
        return (self.now - parse_time(text)).total_seconds()

    def serving(self, colour: Colour, revision: str) -> DeploymentState | None:
        """The colour's Deployment if it runs `revision`."""
        state = self.observed.deployments.get(colour)
        return state if state is not None and state.revision == revision else None

    def ready(self, colour: Colour, revision: str, replicas: int) -> bool:
        state = self.serving(colour, revision)
        return state is not None and state.replicas >= replicas and state.ready_replicas >= replicas

    def record(self, revision: RevisionStatus, outcome: Outcome, reason: str) -> None:
        self.status.history = [*self.status.history, RolloutRecord(
            revision=revision.revision, adapter_version=revision.adapter_version, outcome=outcome,
            reason=reason, time=rfc3339(self.now))][-HISTORY:]

    def schedule_scale_down(self, colour: Colour, delay: int) -> None:
        self.status.scale_down = ScaleDown(colour=colour, at=rfc3339(self.now + timedelta(seconds=delay)))

    def preview_replicas(self) -> int:
        if self.status.active is None:  # the first revision becomes the active colour as it is
            return self.spec.serving.replicas
        return min(self.strategy.preview_replica_count or self.spec.serving.replicas, self.spec.serving.replicas)

    def run_analysis(self, revision: RevisionStatus, *, post_promotion: bool) -> AnalysisResult | None:
        """The result of this attempt's analysis; None (and RunAnalysis) while there is none. A retry
        of the same revision is a new attempt: its id carries the rollout's start time."""
        assert self.status.rollout is not None
        started = re.sub(r"\D", "", self.status.rollout.started)
        run_id = f"{'post' if post_promotion else 'pre'}-{revision.revision}-{started}"
        result = self.observed.analysis
        if result is not None and result.run_id == run_id:
            return result
        analysis = self.strategy.post_promotion_analysis if post_promotion else self.strategy.pre_promotion_analysis
        delay = (analysis.initial_delay_seconds if analysis else 0) - self.seconds_since(self.status.rollout.since)
        if delay > 0:  # the Service's endpoints are still being programmed on the nodes
            self.wake_in(delay)
            return None
        self.act(RunAnalysis(revision.colour, revision.revision, run_id, post_promotion))
        return None

    # --- the pass --------------------------------------------------------------------------------
    def run(self, target: Target | None) -> Decision:
        self.manual_control(target)
        serving = self.status.active is not None and self.keep_active(self.status.active)
        if self.status.rollout is not None:
            self.continue_rollout(target)
        elif target is not None:
            self.maybe_start(target, serving)
        else:
            self.waiting_for_version()
        self.pending_scale_down()
        return self.decision

    def manual_control(self, target: Target | None) -> None:
        annotations = self.annotations
        if RETRY in annotations:
            self.act(ClearAnnotation(RETRY))
            if target is not None and self.status.failed_revision == target.revision and self.status.rollout is None:
                self.status.failed_revision = None
                self.status.abort = False
                self.event("Normal", "RolloutRetried", f"retrying revision {target.revision}")
        if PROMOTE in annotations and self.status.rollout is None:
            self.act(ClearAnnotation(PROMOTE))  # nothing to promote: it must not promote a later rollout unasked
        if ABORT in annotations:
            self.act(ClearAnnotation(ABORT))
            if self.status.rollout is not None and self.status.rollout.step != "PostPromotion":
                self.abort("Aborted", "RolloutAborted", "aborted by the abort annotation")

    def waiting_for_version(self) -> None:
        why = f": {self.observed.resolve_problem}" if self.observed.resolve_problem else ""
        if self.status.active is None:
            self.set_phase("Pending", f"waiting for MLflow to resolve {self.spec.adapter.display()}{why}")
        else:
            self.status.message = (f"{self.spec.adapter.display()} is not resolved{why}; revision "
                                   f"{self.status.active.revision} keeps serving")

    def maybe_start(self, target: Target, serving: bool) -> None:
        active = self.status.active
        if active is not None and active.revision == target.revision:
            if serving:
                self.set_phase("Healthy", f"revision {active.revision} ({active.colour}) serving")
            else:
                self.set_phase("Degraded", f"the active colour {active.colour} has no ready pods")
        elif self.status.failed_revision == target.revision:
            self.status.message = (f"revision {target.revision} failed and is not retried: "
                                   f"set a new adapter version or the {RETRY} annotation")
        else:
            self.start(target)

    def keep_active(self, active: RevisionStatus) -> bool:
        """Keep the active colour at spec.serving.replicas (recreate it if lost); True if it has ready pods."""
        state = self.observed.deployments.get(active.colour)
        replicas = self.spec.serving.replicas
        if state is None or state.revision != active.revision or state.replicas != replicas:
            self.act(ApplyDeployment(active.colour, active.revision, replicas))
        if state is not None and state.revision == active.revision and state.ready_replicas > 0:
            self.condition("Available", "True", "Serving", f"{state.ready_replicas}/{replicas} pods ready")
            return True
        self.condition("Available", "False", "NoReadyPods", f"the {active.colour} colour has no ready pods")
        return False

    def start(self, target: Target) -> None:
        active = self.status.active
        colour: Colour = other(active.colour) if active else "blue"
        if self.status.scale_down is not None and self.status.scale_down.colour == colour:
            self.status.scale_down = None  # the idle colour is reused before its scale-down came due
        self.status.preview = RevisionStatus(colour=colour, revision=target.revision,
                                             adapter_version=target.adapter_version)
        self.status.preview_selector = colour
        self.status.abort = False
        self.status.rollout = RolloutStep(step="Preview", since=rfc3339(self.now), started=rfc3339(self.now))
        self.act(ApplyDeployment(colour, target.revision, self.preview_replicas()), SetPreview(colour))
        message = f"revision {target.revision} (adapter {target.adapter_version or target.adapter_source}) " \
                  f"coming up on {colour}"
        self.event("Normal", "RolloutStarted", message)
        self.condition("Progressing", "True", "RolloutStarted", message)
        self.set_phase("Progressing", message)
        self.wake_in(self.strategy.readiness_timeout_seconds)

    def continue_rollout(self, target: Target | None) -> None:
        rollout, preview = self.status.rollout, self.status.preview
        assert rollout is not None and preview is not None
        if rollout.step == "PostPromotion":
            self.post_promotion(preview, rollout)
            return
        if target is not None and target.revision != preview.revision:
            self.record(preview, "Superseded", f"revision {target.revision} arrived")
            self.status.rollout = None
            self.start(target)
            return
        if rollout.step == "ScalingUp":
            replicas = self.spec.serving.replicas
        else:
            replicas = self.preview_replicas()
        if not self.ready(preview.colour, preview.revision, replicas):
            self.await_ready(preview, replicas, rollout)
            return
        if rollout.step == "Preview":
            rollout.step = "Analysis"
            rollout.since = rfc3339(self.now)
        if rollout.step == "Analysis" and not self.analysed(preview, self.strategy.pre_promotion_analysis is not None):
            return
        if not self.promotion_allowed(preview, rollout):
            return
        if replicas < self.spec.serving.replicas:
            rollout.step, rollout.since = "ScalingUp", rfc3339(self.now)
            self.act(ApplyDeployment(preview.colour, preview.revision, self.spec.serving.replicas))
            self.set_phase("Progressing", f"scaling {preview.colour} to {self.spec.serving.replicas} pods")
            self.wake_in(self.strategy.readiness_timeout_seconds)
            return
        self.promote(preview)

    def await_ready(self, preview: RevisionStatus, replicas: int, rollout: RolloutStep) -> None:
        waited = self.seconds_since(rollout.since)
        timeout = self.strategy.readiness_timeout_seconds
        if waited > timeout:
            self.abort("Degraded", "ReadinessTimeout",
                       f"{preview.colour} was not ready with {replicas} pods within {timeout}s")
            return
        state = self.observed.deployments.get(preview.colour)
        if state is None or state.revision != preview.revision or state.replicas < replicas:
            self.act(ApplyDeployment(preview.colour, preview.revision, replicas))  # lost, or never applied
        ready = state.ready_replicas if state and state.revision == preview.revision else 0
        self.set_phase("Progressing", f"waiting for {preview.colour}: {ready}/{replicas} pods ready")
        self.wake_in(timeout - waited)

    def analysed(self, preview: RevisionStatus, configured: bool) -> bool:
        """True when the preview passed (or nothing is to be analysed); aborts when it failed."""
        if not configured:
            return True
        result = self.run_analysis(preview, post_promotion=False)
        if result is None:
            self.set_phase("Progressing", f"analysing {preview.colour} (revision {preview.revision})")
            return False
        preview.score = rounded(result.score)
        if not result.passed:
            self.abort("Degraded", "AnalysisFailed", f"pre-promotion analysis failed: {result.reason}")
            return False
        return True

    def promotion_allowed(self, preview: RevisionStatus, rollout: RolloutStep) -> bool:
        if rollout.step == "ScalingUp":
            return True
        if rollout.step == "Analysis":
            rollout.step, rollout.since = "Paused", rfc3339(self.now)
        if PROMOTE in self.annotations:
            self.act(ClearAnnotation(PROMOTE))
            return True
        if self.strategy.auto_promotion_enabled:
            left = (self.strategy.auto_promotion_seconds or 0) - self.seconds_since(rollout.since)
            if left <= 0:
                return True
            self.wake_in(left)
            self.set_phase("Progressing", f"promoting {preview.colour} in {left:.0f}s")
            return False
        self.set_phase("Paused", f"{preview.colour} passed its analysis; promote with "
                                 f"`tuneloop rollout promote {self.name}` or the {PROMOTE} annotation")
        return False

    def promote(self, preview: RevisionStatus) -> None:
        # The invariant, checked again right where the traffic moves.
        if not self.ready(preview.colour, preview.revision, 1):
            return
        previous = self.status.active
        self.act(SwitchActive(preview.colour), SetPreview(None))
        self.status.active, self.status.active_selector = preview, preview.colour
        self.status.preview, self.status.preview_selector = None, None
        message = f"revision {preview.revision} ({preview.colour}) takes the traffic"
        self.event("Normal", "Promoted", message)
        self.condition("Available", "True", "Promoted", message)
        if self.strategy.post_promotion_analysis is not None:
            self.status.preview = preview.model_copy()  # still under analysis, now as the active colour
            assert self.status.rollout is not None
            self.status.rollout = RolloutStep(step="PostPromotion", since=rfc3339(self.now),
                                              started=self.status.rollout.started, previous_active=previous)
            self.run_analysis(preview, post_promotion=True)
            self.set_phase("Progressing", f"{message}; post-promotion analysis running")
            return
        self.finish(preview, previous)

    def finish(self, promoted: RevisionStatus, previous: RevisionStatus | None) -> None:
        self.status.rollout, self.status.preview = None, None
        self.status.failed_revision = None
        if previous is not None:
            self.schedule_scale_down(previous.colour, self.strategy.scale_down_delay_seconds)
        self.record(promoted, "Promoted", "analysis passed" if self.strategy.pre_promotion_analysis else "ready")
        self.condition("Progressing", "False", "RolloutCompleted", f"revision {promoted.revision} promoted")
        self.set_phase("Healthy", f"revision {promoted.revision} ({promoted.colour}) serving")

    def post_promotion(self, promoted: RevisionStatus, rollout: RolloutStep) -> None:
        result = self.run_analysis(promoted, post_promotion=True)
        if result is None:
            return
        promoted.score = rounded(result.score)
        if self.status.active is not None:
            self.status.active.score = promoted.score
        if result.passed:
            self.finish(promoted, rollout.previous_active)
            return
        previous = rollout.previous_active
        reason = f"post-promotion analysis failed: {result.reason}"
        if previous is None or not self.ready(previous.colour, previous.revision, 1):
            self.status.rollout, self.status.preview = None, None
            self.status.failed_revision = promoted.revision
            self.record(promoted, "Failed", f"{reason}; no previous colour to switch back to")
            self.condition("Progressing", "False", "PostPromotionAnalysisFailed", reason)
            self.set_phase("Degraded", f"{reason}; revision {promoted.revision} keeps serving: "
                                       "nothing to switch back to")
            return
        self.act(SwitchActive(previous.colour))
        self.status.active, self.status.active_selector = previous, previous.colour
        self.status.preview = promoted
        self.abort("Degraded", "PostPromotionAnalysisFailed", f"{reason}; switched back to {previous.colour}",
                   outcome="RolledBack")

    def abort(self, phase: Phase, reason: str, message: str, outcome: Outcome | None = None) -> None:
        """Scale the preview away after the abort delay; the active colour is not touched."""
        preview = self.status.preview
        assert preview is not None
        self.schedule_scale_down(preview.colour, self.strategy.abort_scale_down_delay_seconds)
        self.record(preview, outcome or ("Aborted" if phase == "Aborted" else "Failed"), message)
        self.status.failed_revision = preview.revision
        self.status.abort = True
        self.status.rollout, self.status.preview, self.status.preview_selector = None, None, None
        self.act(SetPreview(None))
        self.event("Warning", reason, f"revision {preview.revision}: {message}")
        self.condition("Progressing", "False", reason, message)
        serving = self.status.active
        tail = f"; revision {serving.revision} ({serving.colour}) keeps serving" if serving else ""
        self.set_phase(phase, f"revision {preview.revision}: {message}{tail}")

    def pending_scale_down(self) -> None:
        scale_down = self.status.scale_down
        if scale_down is None:
            return
        if self.status.active_selector == scale_down.colour:
            self.status.scale_down = None  # it takes the traffic again (rollback): never scale it away
            return
        left = (parse_time(scale_down.at) - self.now).total_seconds()
        state = self.observed.deployments.get(scale_down.colour)
        if left <= 0 and (state is None or state.replicas == 0):
            self.status.scale_down = None
            return
        self.act(ScaleDeployment(scale_down.colour, 0, max(left, 0.0)))
        if left > 0:
            self.wake_in(left)


def reconcile(resource: Resource, observed: Observed, now: datetime) -> Decision:
    """One pass of the rollout; the returned status is a new object (the resource's is not changed)."""
    decision = _pass(resource, observed, now)
    decision.status.conditions = core.with_readiness(decision.status.conditions, *readiness(decision.status),
                                                     generation=resource.generation, now=rfc3339(now))
    return decision


def readiness(status: ModelDeploymentStatus) -> tuple[core.Readiness, str, str]:
    """Ready while the wanted revision serves (Healthy). Stalled when the spec is refused or a rollout
    failed or was aborted: a fixed spec, a new adapter version or the retry annotation is needed (the
    previous revision keeps serving meanwhile). Reconciling while a rollout goes on."""
    spec_valid = get_condition(status.conditions, "SpecValid")
    if spec_valid is not None and spec_valid.status == "False":
        return "Stalled", "InvalidSpec", status.message
    if status.phase == "Healthy":
        return "Ready", "Serving", status.message
    if status.phase in ("Degraded", "Aborted") and status.failed_revision is not None and status.rollout is None:
        progressing = get_condition(status.conditions, "Progressing")
        failed = progressing is not None and progressing.status == "False" and progressing.reason != "RolloutCompleted"
        return "Stalled", progressing.reason if failed else "RolloutFailed", status.message
    return "Reconciling", status.phase, status.message or status.phase


def _pass(resource: Resource, observed: Observed, now: datetime) -> Decision:
    status = resource.status.model_copy(deep=True)
    error = str(resource.spec_error) if resource.spec_error is not None else observed.spec_problem
    if error:
        message = f"invalid spec (whatever serves keeps serving): {error}"
        status.conditions = set_condition(status.conditions, "SpecValid", "False", "InvalidSpec", error,
                                          observed_generation=resource.generation, now=rfc3339(now))
        decision = Decision(status)
        if not (status.phase == "Degraded" and status.message == message):
            decision.event("Warning", "InvalidSpec", error)
        status.phase, status.message = "Degraded", message
        status.observed_generation = resource.generation  # seen, and refused: not still in progress
        return decision
    rollout = Rollout(resource, status, observed, now)
    if get_condition(status.conditions, "SpecValid") is not None:
        rollout.condition("SpecValid", "True", "Valid", "")
    status.observed_generation = resource.generation
    return rollout.run(target_for(resource.spec, observed.resolved_version))
