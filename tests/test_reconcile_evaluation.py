"""Training -> Evaluating -> Registering -> Succeeded in the pure reconciler, and the gate."""

from __future__ import annotations


import pytest
from passes import ftj_pass
from stage_results import DATA_CHECKED, REGISTERED, TRAINED, evaluated, played_job

from tuneloop.api.common import get_condition
from tuneloop.api.evaluation import GateTest, Score
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.reconcile import gate
from tuneloop.reconcile.finetunejob import LaunchWorkload, Observed, ReconcileContext, WorkloadState

NOW, LATER = "2026-03-01T12:00:00Z", "2026-03-01T13:00:00Z"
JOB = "acme-tickets"
LOCAL = ReconcileContext(mode="local", catalog=frozenset({"smollm2-135m-instruct"}))
SPEC = {
    "baseModel": {"name": "smollm2-135m-instruct"},
    "dataset": {"uri": "data/tickets.jsonl"},
    "evaluation": {"gate": {"primaryMetric": "exactMatch", "minScore": {"rougeL": 0.5}}},
    "registry": {"modelName": "acme-tickets"},
}
def step(status: FineTuneJobStatus, stage: str, phase: str, result: dict | None = None, spec: dict = SPEC):
    state = WorkloadState(phase=phase, result=result)
    return ftj_pass(JOB, spec, status, Observed(workloads={f"{JOB}-{stage}": state}), LOCAL, 1, now=LATER)


def launches(decision) -> list[LaunchWorkload]:
    return [a for a in decision.actions if isinstance(a, LaunchWorkload)]


def reasons(decision) -> list[str]:
    return [event.reason for event in decision.events]


def started(spec: dict = SPEC) -> FineTuneJobStatus:
    """Accepted, data checked, training launched."""
    validating = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), LOCAL, 1).status
    return step(validating, "validate", "Succeeded", DATA_CHECKED, spec=spec).status


def trained_status() -> FineTuneJobStatus:
    return step(started(), "train", "Succeeded", TRAINED).status


def test_training_hands_the_adapter_and_test_split_to_the_evaluator():
    started_ = started()
    decision = step(started_, "train", "Succeeded", TRAINED)

    assert decision.status.phase == "Evaluating"
    assert launches(decision) == [LaunchWorkload("evaluate", f"{JOB}-evaluate", {
        "adapter_uri": "/w/train/output/adapter", "test_uri": "/w/train/output/test.jsonl",
        "training_run_id": "run-1"})]
    assert reasons(decision) == ["Trained", "EvaluatingStarted"]


def test_a_passed_gate_registers_with_challenger_and_champion():
    decision = step(trained_status(), "evaluate", "Succeeded", evaluated())
    status = decision.status

    assert status.phase == "Registering"
    assert (status.evaluation.score, status.evaluation.baseline_score) == (0.6, 0.1)
    gate_condition = get_condition(status.conditions, "GatePassed")
    assert gate_condition.status == "True"
    assert gate_condition.message.startswith("gate passed: exactMatch improvement on test: +0.500 [+0.200, +0.700] vs 0, "
                                             "exact McNemar p=0.0005; detectable +0.210 at 80% power")
    (launch,) = launches(decision)
    assert launch.stage == "register"
    assert launch.inputs["set_challenger"] and launch.inputs["set_champion"]
    assert launch.inputs["expected_champion"] is None
    assert launch.inputs["tags"]["tuneloop.dev/gate"] == "passed"
    assert launch.inputs["tags"]["tuneloop.dev/dataset-sha256"] == "cd" * 32
    assert "tuneloop.dev/lora" not in launch.inputs["tags"]  # registration reads it from the adapter itself
    assert launch.inputs["metrics"]["score/exactMatch"] == 0.6
    assert reasons(decision) == ["GatePassed", "Evaluated", "RegisteringStarted"]


def test_an_improvement_inside_the_noise_fails_the_gate_and_promotes_nothing():
    decision = step(trained_status(), "evaluate", "Succeeded", evaluated(em_diff_low=-0.05))
    gate_condition = get_condition(decision.status.conditions, "GatePassed")

    assert gate_condition.status == "False" and gate_condition.reason == "BelowThreshold"
    assert gate_condition.message.startswith("gate failed on exactMatch improvement on test: +0.500 [-0.050, +0.700]")
    (launch,) = launches(decision)
    assert not launch.inputs["set_challenger"] and not launch.inputs["set_champion"]
    assert "GateFailed" in reasons(decision)

    done = step(decision.status, "register", "Succeeded", {**REGISTERED, "aliases": []}).status
    assert done.phase == "Succeeded"  # a failed gate is an outcome, not an error
    assert done.registry.aliases == []


def test_manual_promotion_sets_only_challenger():
    spec = {**SPEC, "registry": {"modelName": "acme-tickets", "promotion": "manual"}}
    decision = step(trained_status(), "evaluate", "Succeeded", evaluated(), spec=spec)
    (launch,) = launches(decision)
    assert launch.inputs["set_challenger"] and not launch.inputs["set_champion"]


def test_champion_moves_only_if_it_was_the_baseline_beaten():
    champion = step(trained_status(), "evaluate", "Succeeded", evaluated(baseline="champion", baseline_version="2"))
    (launch,) = launches(champion)
    assert launch.inputs["set_champion"] and launch.inputs["expected_champion"] == "2"

    spec = {**SPEC, "evaluation": {**SPEC["evaluation"], "baseline": "base"}}
    base_only = step(trained_status(), "evaluate", "Succeeded", evaluated(), spec=spec)
    (launch,) = launches(base_only)
    assert launch.inputs["set_challenger"] and not launch.inputs["set_champion"]


def test_registration_completes_the_job_with_scores_gate_and_version():
    evaluating = step(trained_status(), "evaluate", "Succeeded", evaluated()).status
    decision = step(evaluating, "register", "Succeeded", REGISTERED)
    status = decision.status

    assert status.phase == "Succeeded"
    assert status.registry.to_wire() == {"modelName": "acme-tickets", "version": "3", "uri": "models:/acme-tickets/3",
                                         "aliases": ["challenger", "champion"], "runId": "run-1"}
    assert get_condition(status.conditions, "Registered").status == "True"
    assert "registered models:/acme-tickets/3 (challenger, champion)" in status.message
    assert "exactMatch on 30 test examples: candidate 0.600 [0.430, 0.770] vs base 0.100" in status.message


def test_an_unreachable_registry_is_retried_and_the_condition_clears_when_it_is_back():
    evaluating = step(trained_status(), "evaluate", "Succeeded", evaluated()).status
    down = {"succeeded": False, "reason": "RegistryUnavailable",
            "message": "MLflow at http://mlflow:5000 unreachable for 120 s: connection refused"}
    retry = step(evaluating, "register", "Failed", down)

    assert retry.status.phase == "Registering"
    condition = get_condition(retry.status.conditions, "RegistryUnavailable")
    assert condition.status == "True" and "connection refused" in condition.message
    (launch,) = launches(retry)
    assert launch.replace and launch.inputs["set_champion"]

    done = step(retry.status, "register", "Succeeded", REGISTERED).status
    assert done.phase == "Succeeded"
    assert get_condition(done.conditions, "RegistryUnavailable").status == "False"


@pytest.mark.parametrize("reason", ["JudgeUnavailable", "ChampionUnavailable"])
def test_an_evaluation_failure_fails_the_job_with_its_reason(reason):
    result = {"succeeded": False, "reason": reason, "message": "judge at http://judge:8000/v1: 5 retries failed"}
    decision = step(trained_status(), "evaluate", "Failed", result)

    assert decision.status.phase == "Failed"
    failed = get_condition(decision.status.conditions, "Failed")
    assert (failed.reason, failed.message) == (reason, result["message"])
    assert get_condition(decision.status.conditions, "Evaluated").status == "False"
    assert launches(decision) == []


def test_an_unreadable_result_fails_the_stage_instead_of_crashing_the_operator():
    decision = step(trained_status(), "evaluate", "Succeeded", {"succeeded": True, "test": {"examples": "x"}})
    assert decision.status.phase == "Failed"
    assert get_condition(decision.status.conditions, "Failed").reason == "EvaluatingFailed"


def test_disabled_evaluation_and_registry_skip_their_stages():
    spec = {**SPEC, "evaluation": {"enabled": False}}
    decision = step(started(spec), "train", "Succeeded", TRAINED, spec=spec)
    (launch,) = launches(decision)
    assert launch.stage == "register" and launch.inputs["tags"]["tuneloop.dev/gate"] == "not-evaluated"
    assert not launch.inputs["set_challenger"]


def test_a_cluster_without_mlflow_refuses_a_spec_that_registers():
    cluster = ReconcileContext(mode="cluster", catalog=frozenset({"m"}), registry_configured=False)
    spec = {"baseModel": {"name": "m"}, "dataset": {"uri": "pvc://d/t.jsonl"}, "output": {"uri": "pvc://o/a"}}
    decision = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), cluster, 1)
    assert decision.status.phase == "Failed"
    assert "spec.registry.enabled: the operator has no MLflow tracking URI" in decision.status.message


def test_a_cluster_refuses_a_local_judge_naming_the_field():
    cluster = ReconcileContext(mode="cluster", catalog=frozenset({"m"}), registry_configured=True)
    spec = {"baseModel": {"name": "m"}, "dataset": {"uri": "pvc://d/t.jsonl"}, "output": {"uri": "pvc://o/a"},
            "evaluation": {"judge": {"url": "http://127.0.0.1:8765/v1", "model": "m", "local": True}}}
    decision = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), cluster, 1)
    assert decision.status.phase == "Failed" and launches(decision) == []
    assert "spec.evaluation.judge.local: a cluster cannot start a local judge" in decision.status.message


# --- the gate on its own ---

def gate_test(check: str, passed: bool, p_holm: float, kind: str = "improvement", **extra) -> GateTest:
    return GateTest(check=check, metric=check.split()[0], set="test", kind=kind, method="exact McNemar",
                    estimate=Score(value=0.3, low=0.1 if passed else -0.02, high=0.5), threshold=0.0, n=30,
                    p_value=p_holm, p_holm=p_holm, passed=passed, **extra)


def test_the_gate_passes_only_when_every_test_passed_and_names_the_weakest():
    result = gate.decide([gate_test("exactMatch improvement on test", True, 0.001),
                          gate_test("rougeL improvement on test", True, 0.02)], [])

    assert result.passed and result.verdict == "Passed"
    assert result.deciding.startswith("rougeL improvement on test: +0.300 [+0.100, +0.500] vs 0, exact McNemar p=0.0200")
    assert result.message.startswith("gate passed 2 tests; weakest: rougeL improvement")
    assert [line.split(":")[0] for line in result.checks] == ["ok", "ok"]


def test_a_failed_test_fails_the_gate_and_its_message_names_the_test():
    failed = gate_test("rougeL nonInferiority on regression", False, 0.3, kind="nonInferiority",
                       detail="4 rows the champion got right are wrong now")
    result = gate.decide([gate_test("exactMatch improvement on test", True, 0.001), failed],
                         ["exactMatch: 30 test rows detect +0.21 with 80% power"])

    assert not result.passed
    assert result.message.startswith("gate failed on rougeL nonInferiority on regression: +0.300 [-0.020, +0.500] vs 0")
    assert "(4 rows the champion got right are wrong now)" in result.message
    assert result.checks[1].startswith("FAILED: rougeL nonInferiority")
    assert result.warnings == ["exactMatch: 30 test rows detect +0.21 with 80% power"]


def test_no_test_at_all_is_a_failed_gate():
    result = gate.decide([], [])
    assert not result.passed and "no gate test" in result.message


# --- how a finished job reads: conditions (kstatus) and kubectl columns ---

def conditions_of(status: FineTuneJobStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_a_failed_gate_reads_not_ready_and_stalled_with_reason_gate_failed():
    status = played_job(em_diff_low=-0.05)

    assert status.phase == "Succeeded"  # failing the gate is a result, not an error
    conditions = conditions_of(status)
    assert conditions["Ready"] == ("False", "GateFailed")
    assert conditions["Stalled"] == ("True", "GateFailed")  # kstatus (Flux, kubectl wait) reads Failed
    assert "Reconciling" not in conditions
    ready = get_condition(status.conditions, "Ready")
    assert "exactMatch improvement on test: +0.500 [-0.050, +0.700] vs 0, exact McNemar p=0.2000" in ready.message
    assert ready.message.endswith("the adapter was not promoted")


def test_a_passed_gate_reads_ready():
    conditions = conditions_of(played_job(em_diff_low=0.2))
    assert conditions["Ready"] == ("True", "Succeeded")
    assert "Stalled" not in conditions and "Reconciling" not in conditions


def test_a_job_at_work_reads_reconciling_and_a_failed_one_stalled():
    training = conditions_of(trained_status())
    assert training["Ready"] == ("False", "Evaluating") and training["Reconciling"] == ("True", "Evaluating")
    assert "Stalled" not in training

    failed = step(trained_status(), "evaluate", "Succeeded", {"succeeded": False, "reason": "JudgeUnavailable",
                                                               "message": "judge unreachable"}).status
    conditions = conditions_of(failed)
    assert conditions["Ready"] == ("False", "JudgeUnavailable") and conditions["Stalled"] == ("True", "JudgeUnavailable")
    assert "Reconciling" not in conditions


@pytest.mark.parametrize("em_diff_low, verdict", [(0.2, "Passed"), (-0.05, "Failed")])
def test_kubectl_get_shows_rounded_loss_the_gated_metric_and_the_verdict(em_diff_low, verdict):
    from crd_schema import admit, printed_columns

    from stage_results import PLAYED_JOB, PLAYED_SPEC
    from tuneloop.api.crd import definition
    from tuneloop.api.finetunejob import CRD

    manifest = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": PLAYED_JOB, "creationTimestamp": NOW}, "spec": PLAYED_SPEC,
                "status": played_job(em_diff_low).to_wire()}
    crd = definition(CRD)
    assert admit(crd, manifest)[1] == []  # the status the reconciler writes fits the CRD's schema

    assert printed_columns(crd, manifest) == {
        "Phase": "Succeeded", "Model": "smollm2-135m-instruct", "Step": "68/68", "Loss": 0.04912,
        "Score": "exactMatch 0.600 vs base 0.100", "Gate": verdict, "Version": "3", "Age": NOW}
    wide = printed_columns(crd, manifest, wide=True)
    assert wide["Val Loss"] == "4.000 -> 0.050" and wide["Registered"] == "models:/acme-tickets/3"
    assert wide["Message"].startswith("validation loss 4.0000 -> 0.0500")
