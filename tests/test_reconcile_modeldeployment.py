"""The blue-green state machine driven through simulated worlds: the test plays the Deployment
controller (pods become ready a step after they are asked for), the analysis runner, MLflow's
alias and the Services. Every step persists the status through its wire form, as a restarted
operator would read it back."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from passes import md_pass

from tuneloop.api.modeldeployment import ModelDeploymentStatus
from tuneloop.reconcile.modeldeployment import (
    ABORT,
    PROMOTE,
    RETRY,
    AnalysisResult,
    ApplyDeployment,
    ClearAnnotation,
    DeploymentState,
    Observed,
    RunAnalysis,
    ScaleDeployment,
    SetPreview,
    SwitchActive,
)
from tuneloop.reconcile.core import EmitEvent

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEP = 5


def spec(**blue_green):
    return {"baseModel": {"name": "llama-3.1-8b"}, "adapter": {"name": "support-bot", "alias": "champion"},
            "serving": {"replicas": 2},
            "strategy": {"blueGreen": {"previewReplicaCount": 1, "readinessTimeoutSeconds": 120,
                                       "prePromotionAnalysis": {"smokePrompts": [
                                           {"prompt": "Reset my password", "expect": {"contains": "link"}}]},
                                       **blue_green}}}


@dataclass
class World:
    spec: dict
    version: str | None = "1"
    bad_versions: set[str] = field(default_factory=set)
    stuck_versions: set[str] = field(default_factory=set)  # their pods never become ready
    now: datetime = START
    status: dict = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # revision -> adapter version it runs
    active: str | None = None
    preview: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    analysis: AnalysisResult | None = None
    pending_analysis: RunAnalysis | None = None
    actions: list = field(default_factory=list)

    def step(self, lose_actions: bool = False):
        self.play_controllers()
        status = ModelDeploymentStatus.model_validate(self.status) if self.status else ModelDeploymentStatus()
        decision = md_pass("support-bot", self.spec, status,
                           Observed(resolved_version=self.version, deployments=dict(self.deployments),
                                    analysis=self.analysis),
                           self.now, annotations=dict(self.annotations), generation=1)
        self.status = decision.status.to_wire()
        if not lose_actions:  # lost: the operator died after writing the status
            for action in decision.actions:
                self.carry_out(action)
        self.actions.append([*decision.actions, *decision.events])
        self.check_invariant()
        self.now += timedelta(seconds=STEP)
        return decision

    def run(self, steps: int):
        for _ in range(steps):
            self.step()

    def play_controllers(self):
        for colour, state in self.deployments.items():
            if self.versions.get(state.revision) not in self.stuck_versions:
                self.deployments[colour] = replace(state, ready_replicas=state.replicas)
        if self.pending_analysis is not None:
            version = self.versions[self.pending_analysis.revision]
            passed = version not in self.bad_versions
            self.analysis = AnalysisResult(self.pending_analysis.run_id, passed,
                                           "" if passed else "1/1 smoke prompts failed", score=8.0 if passed else 3.0)
            self.pending_analysis = None

    def carry_out(self, action):
        if isinstance(action, ApplyDeployment):
            self.versions[action.revision] = self.phase_version()
            old = self.deployments.get(action.colour)
            ready = min(old.ready_replicas, action.replicas) if old and old.revision == action.revision else 0
            self.deployments[action.colour] = DeploymentState(action.replicas, ready, action.revision)
        elif isinstance(action, ScaleDeployment) and action.after_seconds <= 0:
            state = self.deployments[action.colour]
            self.deployments[action.colour] = replace(state, replicas=action.replicas, ready_replicas=0)
        elif isinstance(action, SwitchActive):
            self.active = action.colour
        elif isinstance(action, SetPreview):
            self.preview = action.colour
        elif isinstance(action, RunAnalysis):
            self.pending_analysis = action
        elif isinstance(action, ClearAnnotation):
            self.annotations.pop(action.key, None)

    def phase_version(self):
        return self.status.get("preview", {}).get("adapterVersion") or self.version

    def check_invariant(self):
        if self.active is not None:
            assert self.deployments[self.active].ready_replicas > 0, (self.now, self.active, self.deployments)

    def replicas(self, colour):
        state = self.deployments.get(colour)
        return state.replicas if state else 0

    def events(self):
        return [action for actions in self.actions for action in actions if isinstance(action, EmitEvent)]

    def applied(self, colour):
        return [action for actions in self.actions for action in actions
                if isinstance(action, ApplyDeployment) and action.colour == colour]

    def condition(self, type):
        return next(c for c in self.status["conditions"] if c["type"] == type)


def healthy_on_blue(**blue_green):
    world = World(spec(**blue_green))
    world.run(6)
    assert world.status["phase"] == "Healthy" and world.active == "blue"
    assert world.replicas("blue") == 2
    return world


def test_the_first_revision_is_analysed_before_it_takes_traffic():
    world = World(spec())
    world.step()
    assert world.status["phase"] == "Progressing" and world.active is None
    assert world.replicas("blue") == 2  # the first revision comes up at full size
    world.step()
    assert not any(isinstance(a, RunAnalysis) for a in world.actions[-1]), "ready, but initialDelaySeconds not over"
    world.step()
    assert any(isinstance(a, RunAnalysis) for a in world.actions[-1]) and world.active is None
    world.run(2)
    assert world.active == "blue" and world.status["activeSelector"] == "blue"
    assert world.status["active"]["adapterVersion"] == "1" and world.status["active"]["score"] == 8.0
    assert world.status["history"][-1]["outcome"] == "Promoted"


def test_a_good_revision_ends_active_on_the_new_colour_and_the_old_one_goes_after_the_delay():
    world = healthy_on_blue()
    world.version = "2"  # the champion alias moved
    world.step()
    assert world.status["phase"] == "Progressing" and world.status["previewSelector"] == "green"
    assert world.replicas("green") == 1 and world.preview == "green"
    for _ in range(10):
        world.step()
        if world.active == "green":
            break
    assert world.active == "green" and world.replicas("green") == 2
    assert world.status["active"]["adapterVersion"] == "2"
    switched = world.now
    while world.now < switched + timedelta(seconds=25):
        world.step()
        assert world.replicas("blue") == 2, "scaled down before scaleDownDelaySeconds"
    world.run(3)
    assert world.replicas("blue") == 0 and world.status["phase"] == "Healthy"
    assert "scaleDown" not in world.status
    assert [record["outcome"] for record in world.status["history"]] == ["Promoted", "Promoted"]


def test_a_bad_revision_never_takes_traffic_and_is_not_retried_until_a_new_one():
    world = healthy_on_blue()
    world.version, world.bad_versions = "2", {"2"}
    world.run(4)
    assert world.active == "blue" and world.replicas("blue") == 2
    assert world.status["phase"] == "Degraded" and world.status["abort"] is True
    assert world.condition("Progressing")["reason"] == "AnalysisFailed"
    assert any(e.reason == "AnalysisFailed" and e.type == "Warning" for e in world.events())
    assert world.status["history"][-1]["outcome"] == "Failed"
    assert "preview" not in world.status and "previewSelector" not in world.status
    assert world.replicas("green") == 1  # kept for abortScaleDownDelaySeconds
    world.run(8)
    assert world.replicas("green") == 0 and world.active == "blue" and world.replicas("blue") == 2
    applied = len(world.applied("green"))
    world.run(10)
    assert len(world.applied("green")) == applied, "the failed revision was retried"
    assert world.status["phase"] == "Degraded" and "not retried" in world.status["message"]

    world.version = "3"  # a new revision is rolled out
    world.run(6)
    assert world.active == "green" and world.status["active"]["adapterVersion"] == "3"


def test_the_retry_annotation_rolls_a_failed_revision_out_again():
    world = healthy_on_blue()
    world.version, world.bad_versions = "2", {"2"}
    world.run(12)
    assert world.status["failedRevision"]
    world.bad_versions = set()  # e.g. the judge was fixed
    world.annotations[RETRY] = "now"
    world.run(6)
    assert RETRY not in world.annotations
    assert world.active == "green" and world.status["active"]["adapterVersion"] == "2"


def test_readiness_timeout_aborts_and_leaves_the_active_colour_alone():
    world = healthy_on_blue()
    world.version, world.stuck_versions = "2", {"2"}
    world.run(120 // STEP + 2)
    assert world.active == "blue" and world.replicas("blue") == 2
    assert world.status["phase"] == "Degraded"
    assert world.condition("Progressing")["reason"] == "ReadinessTimeout"
    assert any(e.reason == "ReadinessTimeout" for e in world.events())
    assert not any(isinstance(a, RunAnalysis) and a.revision != world.status["active"]["revision"]
                   for actions in world.actions for a in actions)


def healthy_on_blue_without_auto_promotion():
    world = World(spec(autoPromotionEnabled=False))
    world.run(4)
    assert world.status["phase"] == "Paused" and world.active is None  # the first revision waits too
    world.annotations[PROMOTE] = "yes"
    world.run(2)
    assert world.active == "blue" and PROMOTE not in world.annotations
    return world


def test_without_auto_promotion_it_pauses_until_promoted():
    world = healthy_on_blue_without_auto_promotion()
    world.version = "2"
    world.run(6)
    assert world.status["phase"] == "Paused" and world.active == "blue"
    world.annotations[PROMOTE] = "yes"
    world.run(4)
    assert world.active == "green" and PROMOTE not in world.annotations


def test_a_preview_that_lost_its_pods_is_not_promoted():
    world = healthy_on_blue_without_auto_promotion()
    world.version = "2"
    world.run(5)
    assert world.status["phase"] == "Paused"
    world.stuck_versions = {"2"}
    green = world.deployments["green"]
    world.deployments["green"] = replace(green, ready_replicas=0)
    world.annotations[PROMOTE] = "yes"
    world.run(120 // STEP + 2)
    assert world.active == "blue" and world.status["phase"] == "Degraded"
    assert not any(isinstance(a, SwitchActive) and a.colour == "green" for actions in world.actions for a in actions)
    assert world.condition("Progressing")["reason"] == "ReadinessTimeout"
    world.step()
    assert PROMOTE not in world.annotations  # spent: it does not promote the next rollout unasked


def test_the_abort_annotation_stops_a_paused_rollout():
    world = healthy_on_blue_without_auto_promotion()
    world.version = "2"
    world.run(5)
    assert world.status["phase"] == "Paused"
    world.annotations[ABORT] = "yes"
    world.step()
    assert world.status["phase"] == "Aborted" and world.status["abort"] is True
    assert world.active == "blue" and world.status["history"][-1]["outcome"] == "Aborted"
    assert world.condition("Progressing")["reason"] == "RolloutAborted"


def test_a_restart_that_loses_a_steps_actions_resumes_the_rollout():
    world = healthy_on_blue()
    world.version = "2"
    world.step(lose_actions=True)  # status says green is coming up; the Deployment was never applied
    assert world.status["phase"] == "Progressing" and world.replicas("green") == 0
    world.step()
    assert world.replicas("green") == 1
    world.step(lose_actions=True)  # the analysis request is lost too
    world.run(6)
    assert world.active == "green" and world.status["phase"] == "Healthy"


def test_a_failed_post_promotion_analysis_switches_back():
    world = healthy_on_blue(postPromotionAnalysis={"requests": 10})
    world.version = "2"

    def fail_after_switch():
        if world.active == "green":
            world.bad_versions = {"2"}

    for _ in range(10):
        world.step()
        fail_after_switch()
    assert world.active == "blue" and world.replicas("blue") == 2
    assert world.status["history"][-1]["outcome"] == "RolledBack"
    assert world.condition("Progressing")["reason"] == "PostPromotionAnalysisFailed"


def test_an_unresolved_alias_waits_and_history_keeps_the_last_five():
    world = World(spec(), version=None)
    world.run(2)
    assert world.status["phase"] == "Pending" and not world.deployments
    for version in "123456":
        world.version = version
        world.run(5)
    assert world.active in ("blue", "green") and world.status["active"]["adapterVersion"] == "6"
    assert len(world.status["history"]) == 5


def test_an_active_deployment_lost_mid_rollout_is_recreated():
    world = healthy_on_blue()
    world.version = "2"
    world.step()
    del world.deployments["blue"]  # someone deleted it; the Service now selects nothing
    world.active = None
    decision = world.step()
    assert ApplyDeployment("blue", world.status["active"]["revision"], 2) in decision.actions
    assert world.condition("Available")["status"] == "False"


def test_an_invalid_spec_changes_nothing_that_serves():
    world = healthy_on_blue()
    world.spec = {**world.spec, "serving": {"maxLoraRank": 7}}
    decision = world.step()
    assert world.status["phase"] == "Degraded" and world.active == "blue"
    assert decision.actions == [] and [type(event) for event in decision.events] == [EmitEvent]
    assert world.step().actions == []


def test_ready_while_the_wanted_revision_serves_and_stalled_when_its_rollout_failed():
    world = healthy_on_blue()
    assert (world.condition("Ready")["status"], world.condition("Ready")["reason"]) == ("True", "Serving")
    assert not any(c["type"] in ("Reconciling", "Stalled") for c in world.status["conditions"])
    assert world.status["active"]["summary"] == "v1 blue"

    world.version, world.bad_versions = "2", {"2"}
    world.step()
    assert world.condition("Ready")["status"] == "False" and world.condition("Reconciling")["status"] == "True"
    assert world.status["preview"]["summary"] == "v2 green"
    world.run(4)
    # Version 1 keeps serving, but what was asked for (version 2) failed: kstatus reads Failed, not Current.
    assert (world.condition("Ready")["status"], world.condition("Ready")["reason"]) == ("False", "AnalysisFailed")
    assert (world.condition("Stalled")["status"], world.condition("Stalled")["reason"]) == ("True", "AnalysisFailed")
    assert not any(c["type"] == "Reconciling" for c in world.status["conditions"])
    assert [c["type"] for c in world.status["conditions"]].count("Ready") == 1

    world.version = "3"
    world.run(6)
    assert world.condition("Ready")["status"] == "True"
    assert not any(c["type"] in ("Reconciling", "Stalled") for c in world.status["conditions"])
