"""The Argo CD health checks in argocd/ run (Lua 5.1 via lupa, as Argo CD's gopher-lua is 5.1) on
statuses the pydantic models produce, and argocd/argocd-cm-health.yaml is rendered from them."""

from __future__ import annotations

import importlib.util
import typing
from pathlib import Path

import pytest

from tuneloop.api.common import Condition
from tuneloop.api.evaluation import GateResult
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.api.modeldeployment import ModelDeploymentStatus

lupa = pytest.importorskip("lupa.lua51")

REPO = Path(__file__).resolve().parent.parent
ARGOCD = REPO / "argocd"
SCRIPTS = ARGOCD / "resource_customizations" / "tuneloop.dev"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# The mapping the scripts promise (see the comment at the top of each); every phase of the
# models' Literal must be here, so a new phase fails test_every_phase_is_mapped until handled.
FINETUNEJOB = {"Pending": "Progressing", "Queued": "Progressing", "Suspended": "Suspended",
               "Validating": "Progressing", "Augmenting": "Progressing", "Training": "Progressing",
               "Evaluating": "Progressing", "Exporting": "Progressing", "Registering": "Progressing", "Succeeded": "Healthy",
               "Failed": "Degraded"}
MODELDEPLOYMENT = {"Pending": "Progressing", "Progressing": "Progressing", "Paused": "Suspended",
                   "Healthy": "Healthy", "Degraded": "Degraded", "Aborted": "Degraded"}


def load(kind: str):
    """The script as Argo CD calls it: a chunk that sees `obj` and returns {status, message}."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    script = (SCRIPTS / kind / "health.lua").read_text()
    function = runtime.execute(f"return function(obj)\n{script}\nend")

    def health(obj: dict) -> tuple[str, str | None]:
        result = function(runtime.table_from(obj, recursive=True))
        return result["status"], result["message"]
    return health


@pytest.fixture(scope="module")
def ftj():
    return load("FineTuneJob")


@pytest.fixture(scope="module")
def md():
    return load("ModelDeployment")


def obj(status, generation: int = 1) -> dict:
    manifest = {"apiVersion": "tuneloop.dev/v1alpha1", "metadata": {"name": "x", "generation": generation}}
    if status is not None:
        manifest["status"] = status.to_wire() if hasattr(status, "to_wire") else status
    return manifest


def gate_condition(passed: bool, message: str) -> Condition:
    return Condition(type="GatePassed", status="True" if passed else "False",
                     reason="Passed" if passed else "BelowThreshold", message=message,
                     last_transition_time="2026-01-01T00:00:00Z")


def phases(model) -> tuple[str, ...]:
    return typing.get_args(model.model_fields["phase"].annotation)


@pytest.mark.parametrize("kind, model, mapping", [
    ("FineTuneJob", FineTuneJobStatus, FINETUNEJOB), ("ModelDeployment", ModelDeploymentStatus, MODELDEPLOYMENT)])
def test_every_phase_is_mapped(kind, model, mapping):
    assert set(phases(model)) == set(mapping), f"{kind}: phases changed; update health.lua and this mapping"
    health = load(kind)
    for phase in phases(model):
        status, message = health(obj(model(phase=phase, message="m", observed_generation=1)))
        assert status in ARGO_STATUSES and status != "Unknown", (phase, status, message)
        assert status == mapping[phase], phase
        assert message


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment"])
@pytest.mark.parametrize("status", [None, {}, {"phase": ""}, {"conditions": []}])
def test_no_status_waits_for_the_operator(kind, status):
    health = load(kind)
    assert health(obj(status)) == ("Progressing", "waiting for the operator")
    assert health({"metadata": {}}) == ("Progressing", "waiting for the operator")
    assert health({}) == ("Progressing", "waiting for the operator")


@pytest.mark.parametrize("phase", ["Pending", "Queued", "Validating", "Augmenting", "Training", "Evaluating", "Exporting", "Registering"])
def test_finetunejob_work_in_progress(ftj, phase):
    assert ftj(obj(FineTuneJobStatus(phase=phase, message="step 3/10"))) == ("Progressing", f"{phase}: step 3/10")
    assert ftj(obj({"phase": phase})) == ("Progressing", phase)


def test_a_suspended_finetunejob_reads_suspended_in_argo_cd(ftj):
    message = "suspended in the train stage at step 20 of 68: set spec.suspend to false to resume"
    assert ftj(obj(FineTuneJobStatus(phase="Suspended", stage="train", message=message))) == ("Suspended", message)
    assert ftj(obj({"phase": "Suspended"})) == ("Suspended", "suspended: spec.suspend is true")


def test_finetunejob_succeeded_gate_passed(ftj):
    status = FineTuneJobStatus(phase="Succeeded", message="registered version 3; gate passed",
                               conditions=[gate_condition(True, "rougeL +0.04 (CI lower bound > 0)")])
    assert ftj(obj(status)) == ("Healthy", "succeeded; gate passed: rougeL +0.04 (CI lower bound > 0)")


def test_a_finetunejob_whose_gate_failed_is_degraded_with_the_gates_message(ftj):
    # Phase Succeeded (failing the gate is a result), but a rejected adapter must not look Healthy.
    status = FineTuneJobStatus(phase="Succeeded", message="registered version 3; gate failed",
                               conditions=[gate_condition(False, "rougeL lower bound -0.01 <= 0")])
    assert ftj(obj(status)) == ("Degraded", "succeeded, not promoted; gate failed: rougeL lower bound -0.01 <= 0")


def test_a_failed_gate_from_the_reconciler_reads_degraded_in_argo_cd(ftj):
    from stage_results import played_job

    status = played_job(em_diff_low=-0.05)
    health, message = ftj(obj(status))
    assert health == "Degraded"
    assert message == "succeeded, not promoted; gate failed: " + status.evaluation.gate.message.removeprefix(
        "gate failed: ")
    assert "gate failed on exactMatch improvement on test" in message


def test_finetunejob_gate_from_evaluation_when_no_condition(ftj):
    raw = {"phase": "Succeeded", "evaluation": {"gate": GateResult(passed=False, message="too noisy").to_wire()}}
    assert ftj(obj(raw)) == ("Degraded", "succeeded, not promoted; gate failed: too noisy")


def test_finetunejob_succeeded_without_evaluation(ftj):
    assert ftj(obj(FineTuneJobStatus(phase="Succeeded", message="registered version 1"))) == \
        ("Healthy", "succeeded; not evaluated (registered version 1)")
    assert ftj(obj({"phase": "Succeeded"})) == ("Healthy", "succeeded; not evaluated")


def test_finetunejob_failed_is_degraded(ftj):
    assert ftj(obj(FineTuneJobStatus(phase="Failed", message="trainer pod OOMKilled"))) == \
        ("Degraded", "trainer pod OOMKilled")
    assert ftj(obj({"phase": "Failed"})) == ("Degraded", "failed")


def test_a_finetunejob_spec_changed_after_its_start_does_not_look_in_progress_forever(ftj):
    # observedGeneration stays at the accepted generation: the change is reported, never applied.
    finished = obj(FineTuneJobStatus(phase="Failed", message="x", observed_generation=1), generation=3)
    assert ftj(finished) == ("Degraded", "x")


@pytest.mark.parametrize("kind, model, phase", [
    ("ModelDeployment", ModelDeploymentStatus, "Healthy"), ("ModelDeployment", ModelDeploymentStatus, "Degraded")])
def test_observed_generation_behind_is_progressing(kind, model, phase):
    health = load(kind)
    behind = obj(model(phase=phase, message="old news", observed_generation=2), generation=3)
    assert health(behind) == ("Progressing", "waiting for the operator to see generation 3")
    # Caught up, or the field absent (an older operator): the phase decides.
    assert health(obj(model(phase=phase, observed_generation=3), generation=3))[0] != "Progressing"
    assert health(obj(model(phase=phase), generation=3))[0] != "Progressing"


def test_a_modeldeployment_edit_the_operator_cannot_apply_is_degraded_not_progressing_for_ever(md):
    from datetime import datetime, timezone

    from passes import md_pass

    from tuneloop.reconcile.modeldeployment import Observed

    serving = ModelDeploymentStatus(phase="Healthy", message="blue serves version 1", observed_generation=1)
    edited = {"baseModel": {"name": "llama-3.1-8b"}, "adapter": {"name": "acme-tickets", "version": "1"}}
    decision = md_pass("acme-tickets", edited, serving, Observed(
        spec_problem="spec.baseModel.name: 'llama-3.1-8b' is not in the cluster's model catalog"),
        datetime(2026, 12, 2, tzinfo=timezone.utc), generation=2)
    status, message = md(obj(decision.status, generation=2))
    assert status == "Degraded" and "is not in the cluster's model catalog" in message


def test_modeldeployment_paused_is_suspended(md):
    status = ModelDeploymentStatus(phase="Paused", message="preview green passed analysis (score 0.82)")
    assert md(obj(status)) == ("Suspended", "waiting for promote: preview green passed analysis (score 0.82)")
    assert md(obj({"phase": "Paused"})) == ("Suspended", "waiting for promote")


def test_modeldeployment_aborted_is_degraded(md):
    status = ModelDeploymentStatus(phase="Aborted", abort=True, message="aborted by user")
    assert md(obj(status)) == ("Degraded", "aborted: aborted by user")
    assert md(obj({"phase": "Aborted"})) == ("Degraded", "aborted: rollout aborted")


def test_modeldeployment_other_phases(md):
    assert md(obj(ModelDeploymentStatus(phase="Healthy", message="blue serves rev abc"))) == \
        ("Healthy", "blue serves rev abc")
    assert md(obj(ModelDeploymentStatus(phase="Progressing", message="analysis running"))) == \
        ("Progressing", "analysis running")
    assert md(obj(ModelDeploymentStatus(phase="Degraded", message="analysis failed: score 0.4 < 0.7"))) == \
        ("Degraded", "analysis failed: score 0.4 < 0.7")
    assert md(obj({"phase": "Pending"})) == ("Progressing", "Pending")


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment"])
def test_unknown_phase_is_unknown(kind):
    assert load(kind)(obj({"phase": "Exploded", "message": "?"})) == ("Unknown", "unrecognised phase Exploded: ?")


def test_committed_configmap_matches_the_scripts():
    spec = importlib.util.spec_from_file_location("render_cm", ARGOCD / "render_cm.py")
    render_cm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_cm)
    scripts = render_cm.health_scripts()
    assert set(scripts) == {"resource.customizations.health.tuneloop.dev_FineTuneJob",
                            "resource.customizations.health.tuneloop.dev_ModelDeployment"}
    assert render_cm.render() == (ARGOCD / "argocd-cm-health.yaml").read_text(), \
        "argocd/argocd-cm-health.yaml is stale: run `python argocd/render_cm.py --write`"
