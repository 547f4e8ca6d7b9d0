"""The FineTuneJob state machine as a pure function: same inputs, same decision; no I/O."""

from __future__ import annotations

import copy

import pytest
from passes import ftj_pass
from stage_results import DATA_CHECKED

from tuneloop.api.common import get_condition
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.reconcile.core import EmitEvent
from tuneloop.reconcile.finetunejob import (
    MAX_NAME,
    LaunchWorkload,
    Observed,
    ReconcileContext,
    WorkloadState,
    workload_name,
)

NOW = "2026-03-01T12:00:00Z"
LATER = "2026-03-01T12:30:00Z"
JOB = "acme-tickets"
VALIDATE = f"{JOB}-validate"
TRAIN = f"{JOB}-train"

LOCAL = ReconcileContext(mode="local", catalog=frozenset({"smollm2-135m-instruct"}))
CLUSTER = ReconcileContext(mode="cluster", catalog=frozenset({"llama-3.1-8b"}))

LOCAL_SPEC = {
    "baseModel": {"name": "smollm2-135m-instruct"},
    "dataset": {"uri": "data/tickets.jsonl", "format": "alpaca", "testFraction": 0.1},
    "training": {"epochs": 2},
}
# Training only: the evaluation and registry stages are covered in test_reconcile_evaluation.py.
TRAIN_ONLY_SPEC = {**LOCAL_SPEC, "evaluation": {"enabled": False}, "registry": {"enabled": False}}
CLUSTER_SPEC = {
    "baseModel": {"name": "llama-3.1-8b"},
    "dataset": {"uri": "pvc://datasets/tickets.jsonl"},
    "output": {"uri": "pvc://adapters/acme-tickets"},
}

RESULT = {
    "succeeded": True,
    "dataset": {"rows": 300, "trainRows": 270, "validationRows": 30, "testRows": 30, "trainTokens": 41234,
                "format": "alpaca", "sha256": "ab" * 32},
    "validationLossBefore": 2.5,
    "validationLossAfter": 0.75,
    "trainLoss": 0.5,
    "steps": 68,
    "tokensPerSecond": 1234.56,
    "seconds": 95.04,
    "adapterPath": "/work/acme-tickets/train/adapter",
    "testPath": "/work/acme-tickets/train/test.jsonl",
}


def observed(phase: str = "Absent", name: str = TRAIN, **state) -> Observed:
    return Observed(workloads={name: WorkloadState(phase=phase, **state)})


def launches(decision) -> list[LaunchWorkload]:
    return [action for action in decision.actions if isinstance(action, LaunchWorkload)]


def events(decision) -> list[EmitEvent]:
    return decision.events


def validating_status(spec=LOCAL_SPEC) -> FineTuneJobStatus:
    """The status right after the job was accepted and its data check launched."""
    return ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), LOCAL, generation=1).status


def training_status(spec=LOCAL_SPEC) -> FineTuneJobStatus:
    """The status right after the data check passed and the training workload was launched."""
    return ftj_pass(JOB, spec, validating_status(spec), observed("Succeeded", name=VALIDATE, result=DATA_CHECKED),
                     LOCAL, generation=1).status


# --- Pending -> Validating / Failed ---------------------------------------------------------------


def test_a_valid_spec_launches_exactly_one_data_check_and_no_training():
    decision = ftj_pass(JOB, LOCAL_SPEC, FineTuneJobStatus(), Observed(), LOCAL, generation=1)

    assert decision.status.phase == "Validating"
    assert launches(decision) == [LaunchWorkload(stage="validate", name="acme-tickets-validate")]
    assert [(event.type, event.reason) for event in events(decision)] == [("Normal", "ValidatingStarted")]
    assert "acme-tickets-validate" in events(decision)[0].message
    assert decision.status.start_time == NOW
    assert decision.status.observed_generation == 1
    spec_valid = get_condition(decision.status.conditions, "SpecValid")
    assert (spec_valid.status, spec_valid.reason, spec_valid.observed_generation) == ("True", "Valid", 1)


def test_a_valid_cluster_spec_launches_in_a_cluster_context():
    decision = ftj_pass(JOB, CLUSTER_SPEC, FineTuneJobStatus(), Observed(), CLUSTER)

    assert decision.status.phase == "Validating"
    assert launches(decision) == [LaunchWorkload("validate", VALIDATE)]


def test_reconcile_does_not_change_the_status_it_is_given():
    status = FineTuneJobStatus()

    ftj_pass(JOB, LOCAL_SPEC, status, Observed(), LOCAL)

    assert status == FineTuneJobStatus()


def test_an_invalid_spec_fails_the_job_and_names_the_field():
    spec = copy.deepcopy(LOCAL_SPEC)
    spec["method"] = {"lora": {"r": 0}}

    decision = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), LOCAL, generation=1)

    assert decision.status.phase == "Failed"
    assert decision.status.message == "spec.method.lora.r: must be >= 1"
    assert decision.status.completion_time == NOW
    failed = get_condition(decision.status.conditions, "Failed")
    assert (failed.status, failed.reason, failed.message) == ("True", "InvalidSpec", "spec.method.lora.r: must be >= 1")
    assert launches(decision) == []
    assert events(decision) == [EmitEvent("Warning", "InvalidSpec", "spec.method.lora.r: must be >= 1")]


@pytest.mark.parametrize(("context", "spec", "problem"), [
    pytest.param(LOCAL, {**LOCAL_SPEC, "dataset": {"uri": "pvc://datasets/tickets.jsonl"}},
                 "spec.dataset.uri: pvc:// storage needs a cluster; in local mode use a file path",
                 id="local-rejects-pvc"),
    pytest.param(LOCAL, {**LOCAL_SPEC, "output": {"uri": "s3://bucket/adapters"}},
                 "spec.output.uri: s3:// storage needs a cluster; in local mode use a file path",
                 id="local-rejects-s3"),
    pytest.param(LOCAL, {**LOCAL_SPEC, "baseModel": {"name": "gpt-5"}},
                 "spec.baseModel.name: 'gpt-5' is not in the model catalog (known: smollm2-135m-instruct)",
                 id="local-unknown-catalog-name"),
    pytest.param(CLUSTER, {**CLUSTER_SPEC, "dataset": {"uri": "data/tickets.jsonl"}},
                 "spec.dataset.uri: 'data/tickets.jsonl' cannot be mounted in a cluster by this version; "
                 "use pvc://claim/path or s3://bucket/path",
                 id="cluster-rejects-relative-path"),
    pytest.param(CLUSTER, {**CLUSTER_SPEC, "output": {"uri": "s3://adapters/acme-tickets"}},
                 "spec.output.uri: 's3://adapters/acme-tickets': the output must be a pvc:// folder (checkpoints "
                 "must survive a pod restart on a filesystem); s3:// serves inputs only",
                 id="cluster-rejects-s3-output"),
    pytest.param(CLUSTER, {**CLUSTER_SPEC, "dataset": {"uri": "s3://datasets/tickets/"}},
                 "spec.dataset.uri: 's3://datasets/tickets/' names a folder; give one object, "
                 "e.g. s3://bucket/path/train.jsonl",
                 id="cluster-s3-dataset-is-one-object"),
    pytest.param(LOCAL, {**LOCAL_SPEC, "dataset": {"uri": "data/tickets.jsonl",
                                                   "replay": {"uri": "s3://datasets/general.jsonl"}}},
                 "spec.dataset.replay.uri: s3:// storage needs a cluster; in local mode use a file path",
                 id="local-rejects-s3-replay"),
    pytest.param(CLUSTER, {k: v for k, v in CLUSTER_SPEC.items() if k != "output"},
                 "spec.output.uri: a cluster run needs a pvc:// folder for checkpoints and the adapter",
                 id="cluster-needs-output"),
])
def test_the_context_rejects_what_cannot_run_there(context, spec, problem):
    decision = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), context)

    assert decision.status.phase == "Failed"
    assert decision.status.message == problem
    assert get_condition(decision.status.conditions, "Failed").reason == "InvalidSpec"
    assert launches(decision) == []


def test_s3_inputs_launch_in_a_cluster_context():
    spec = {"baseModel": {"uri": "s3://models/llama-3.1-8b"},
            "dataset": {"uri": "s3://datasets/tickets.jsonl", "replay": {"uri": "s3://datasets/general.parquet"}},
            "output": {"uri": "pvc://adapters/acme-tickets"}}

    decision = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), CLUSTER)

    assert decision.status.phase == "Validating", decision.status.message
    assert launches(decision) == [LaunchWorkload("validate", VALIDATE)]


def test_all_context_problems_are_reported_together():
    spec = {"baseModel": {"name": "gpt-5"}, "dataset": {"uri": "pvc://datasets/tickets.jsonl"}}

    decision = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), LOCAL)

    assert "spec.baseModel.name: 'gpt-5' is not in the model catalog" in decision.status.message
    assert "spec.dataset.uri: pvc:// storage needs a cluster" in decision.status.message


# --- Validating: every row read on a CPU before any GPU ------------------------------------------


def test_passed_data_check_records_its_report_and_only_then_launches_training():
    decision = ftj_pass(JOB, LOCAL_SPEC, validating_status(),
                         observed("Succeeded", name=VALIDATE, result=DATA_CHECKED), LOCAL, generation=1, now=LATER)
    status = decision.status

    assert status.phase == "Training"
    assert launches(decision) == [LaunchWorkload("train", TRAIN)]
    assert status.dataset.to_wire() == RESULT["dataset"]
    assert status.cleaning.exact_duplicates == 10
    assert status.data_report.to_wire() == {**DATA_CHECKED["report"], "replayRows": 0}
    validated = get_condition(status.conditions, "DataValidated")
    assert (validated.status, validated.reason) == ("True", "Succeeded")
    assert validated.message == ("300 alpaca rows read: 270 to train on, 30 to validate, 30 to test, 41,234 tokens; 4 of 270 "
                                 "training rows longer than maxSeqLength 512 (cut); about 68 optimizer steps")
    assert [(event.reason, event.message) for event in events(decision)][0] == ("DataValidated", validated.message)


def test_bad_data_fails_the_job_before_training_with_every_bad_row_named():
    message = "data/tickets.jsonl: 2 bad rows of 300: data/tickets.jsonl:7: not JSON; data/tickets.jsonl:9: ..."
    bad = {"succeeded": False, "reason": "InvalidData", "message": message, "badRows": 2}

    decision = ftj_pass(JOB, LOCAL_SPEC, validating_status(), observed("Failed", name=VALIDATE, result=bad),
                         LOCAL, generation=1)

    assert decision.status.phase == "Failed"
    assert decision.status.message == message
    assert launches(decision) == []
    assert get_condition(decision.status.conditions, "Failed").reason == "InvalidData"
    validated = get_condition(decision.status.conditions, "DataValidated")
    assert (validated.status, validated.reason) == ("False", "InvalidData")


def test_a_data_check_that_vanished_is_launched_again():
    decision = ftj_pass(JOB, LOCAL_SPEC, validating_status(), observed("Absent", name=VALIDATE), LOCAL, generation=1)

    assert decision.status.phase == "Validating"
    assert launches(decision) == [LaunchWorkload("validate", VALIDATE)]


def test_a_data_check_reporting_success_without_its_report_fails_the_job_clearly():
    decision = ftj_pass(JOB, LOCAL_SPEC, validating_status(),
                         observed("Succeeded", name=VALIDATE, result={"succeeded": True}), LOCAL, generation=1)

    assert decision.status.phase == "Failed"
    assert "the validate workload's result is unreadable" in decision.status.message
    assert launches(decision) == []


# --- Training: progress ---------------------------------------------------------------------------


def test_a_trainer_preparing_its_data_shows_as_training_with_what_it_does():
    decision = ftj_pass(JOB, LOCAL_SPEC, training_status(),
                         observed("Running", progress={"stage": "preparing-data"}), LOCAL, generation=1)

    assert decision.status.phase == "Training"
    assert decision.status.message == "training: preparing the data (cleaning, splitting, tokenizing)"
    assert decision.status.progress is None
    assert decision.actions == []


def test_training_progress_is_reported_rounded():
    progress = {"stage": "training", "step": 10, "totalSteps": 68, "epoch": 0.2941176, "loss": 0.04912000522017479,
                "tokensPerSecond": 950.5432, "etaSeconds": 41.6}

    decision = ftj_pass(JOB, LOCAL_SPEC, training_status(), observed("Running", progress=progress), LOCAL,
                         generation=1)

    assert decision.status.phase == "Training"
    assert decision.status.progress.to_wire() == {
        "step": 10, "totalSteps": 68, "steps": "10/68", "epoch": 0.294, "loss": 0.04912, "tokensPerSecond": 950.5,
        "etaSeconds": 42}
    assert decision.actions == []


def test_a_running_workload_with_a_problem_message_warns_once():
    state = observed("Running", message="pod pending: 0/3 nodes have a free GPU")

    first = ftj_pass(JOB, LOCAL_SPEC, training_status(), state, LOCAL, generation=1)
    second = ftj_pass(JOB, LOCAL_SPEC, first.status, state, LOCAL, generation=1)

    assert first.status.message == "pod pending: 0/3 nodes have a free GPU"
    assert events(first) == [EmitEvent("Warning", "WorkloadProblem", "pod pending: 0/3 nodes have a free GPU")]
    assert second.actions == []


def test_an_absent_workload_while_training_is_launched_again_under_the_same_name():
    status = training_status()

    decision = ftj_pass(JOB, LOCAL_SPEC, status, observed("Absent"), LOCAL, generation=1)

    assert decision.status.phase == "Training"
    assert launches(decision) == [LaunchWorkload("train", TRAIN)]
    # Another job's workload does not count as this one's.
    other = ftj_pass(JOB, LOCAL_SPEC, status, observed("Running", name="other-job-train"), LOCAL, generation=1)
    assert launches(other) == [LaunchWorkload("train", TRAIN)]


# --- Training: results ----------------------------------------------------------------------------


def test_a_succeeded_workload_completes_the_job_with_its_results():
    decision = ftj_pass(JOB, TRAIN_ONLY_SPEC, training_status(), observed("Succeeded", result=RESULT),
                         LOCAL, generation=1, now=LATER)
    status = decision.status

    assert status.phase == "Succeeded"
    assert status.completion_time == LATER
    assert status.message == "validation loss 2.5000 -> 0.7500"
    assert status.training.to_wire() == {
        "validationLossBefore": 2.5, "validationLossAfter": 0.75, "validationLoss": "2.500 -> 0.750", "trainLoss": 0.5,
        "steps": 68,
        "tokensPerSecond": 1234.6, "seconds": 95.0,
        "adapterUri": "/work/acme-tickets/train/adapter", "testUri": "/work/acme-tickets/train/test.jsonl",
        "stoppedEarly": False,
    }
    assert status.dataset.to_wire() == RESULT["dataset"]
    trained, complete = get_condition(status.conditions, "Trained"), get_condition(status.conditions, "Complete")
    assert (trained.status, trained.reason) == ("True", "Succeeded")
    assert (complete.status, complete.reason) == ("True", "Succeeded")
    assert get_condition(status.conditions, "Failed") is None
    assert launches(decision) == []
    assert [(e.type, e.reason) for e in events(decision)] == [("Normal", "Trained"), ("Normal", "Succeeded")]


def test_progress_shows_all_steps_done_after_success():
    running = ftj_pass(JOB, LOCAL_SPEC, training_status(),
                        observed("Running", progress={"stage": "training", "step": 60, "totalSteps": 70,
                                                      "etaSeconds": 9}), LOCAL, generation=1).status

    status = ftj_pass(JOB, LOCAL_SPEC, running, observed("Succeeded", result=RESULT), LOCAL, generation=1).status

    assert (status.progress.step, status.progress.total_steps, status.progress.eta_seconds) == (68, 68, 0)


def test_a_failed_result_fails_the_job_with_its_reason_and_message():
    result = {"succeeded": False, "reason": "InvalidData",
              "message": "/data/tickets.jsonl:17: missing required field 'output'"}

    decision = ftj_pass(JOB, LOCAL_SPEC, training_status(), observed("Failed", result=result),
                         LOCAL, generation=1, now=LATER)
    status = decision.status

    assert status.phase == "Failed"
    assert status.message == "/data/tickets.jsonl:17: missing required field 'output'"
    assert status.completion_time == LATER
    failed, trained = get_condition(status.conditions, "Failed"), get_condition(status.conditions, "Trained")
    assert (failed.status, failed.reason, failed.message) == ("True", "InvalidData", result["message"])
    assert (trained.status, trained.reason) == ("False", "InvalidData")
    assert status.training is None
    assert launches(decision) == []
    assert events(decision) == [EmitEvent("Warning", "InvalidData", result["message"])]


def test_a_workload_that_succeeded_with_an_unsuccessful_result_fails_the_job():
    result = {"succeeded": False, "reason": "LossDiverged", "message": "loss 80.1 at step 12"}

    status = ftj_pass(JOB, LOCAL_SPEC, training_status(), observed("Succeeded", result=result),
                       LOCAL, generation=1).status

    assert status.phase == "Failed"
    assert get_condition(status.conditions, "Failed").reason == "LossDiverged"


def test_a_failed_workload_without_a_result_fails_with_the_workload_message():
    status = ftj_pass(JOB, LOCAL_SPEC, training_status(), observed("Failed", message="OOMKilled (exit 137)"),
                       LOCAL, generation=1).status

    assert status.phase == "Failed"
    assert status.message == "OOMKilled (exit 137)"
    assert get_condition(status.conditions, "Failed").reason == "TrainingFailed"


def test_a_failed_workload_with_nothing_to_say_still_gets_a_message():
    status = ftj_pass(JOB, LOCAL_SPEC, training_status(), observed("Failed"), LOCAL, generation=1).status

    assert status.phase == "Failed"
    assert status.message == "the workload failed"


# --- idempotence and terminal phases --------------------------------------------------------------


@pytest.mark.parametrize("state", [
    pytest.param(Observed(), id="pending"),
    pytest.param(observed("Running", progress={"stage": "training", "step": 3, "totalSteps": 9}), id="running"),
    pytest.param(observed("Succeeded", result=RESULT), id="succeeded"),
    pytest.param(observed("Failed", result={"succeeded": False, "reason": "InvalidData", "message": "x:1: bad"}),
                 id="failed"),
    pytest.param(observed("Absent"), id="absent"),
])
def test_the_same_inputs_give_the_same_decision(state):
    status = FineTuneJobStatus() if not state.workloads else training_status()

    first = ftj_pass(JOB, LOCAL_SPEC, status, state, LOCAL, generation=1)
    second = ftj_pass(JOB, LOCAL_SPEC, status, state, LOCAL, generation=1)

    assert first.status == second.status
    assert first.actions == second.actions


@pytest.mark.parametrize("result", [
    pytest.param(RESULT, id="after-success"),
    pytest.param({"succeeded": False, "reason": "InvalidData", "message": "x:1: bad"}, id="after-failure"),
])
def test_a_finished_job_takes_no_further_action(result):
    finished = ftj_pass(JOB, TRAIN_ONLY_SPEC, training_status(), observed("Succeeded", result=result),
                         LOCAL, generation=1).status
    assert finished.phase in ("Succeeded", "Failed")

    # Whatever the world looks like now (workload gone, or a new spec), nothing is launched again.
    for state in (observed("Absent"), observed("Running"), Observed()):
        decision = ftj_pass(JOB, {"broken": True}, finished, state, LOCAL, generation=2)
        assert decision.actions == []
        assert decision.status == finished


def test_a_spec_changed_after_start_is_not_applied_and_warned_about_once():
    spec = {**LOCAL_SPEC, "training": {"epochs": 5}}

    first = ftj_pass(JOB, spec, training_status(), observed("Running"), LOCAL, generation=2)
    second = ftj_pass(JOB, spec, first.status, observed("Running"), LOCAL, generation=2)

    assert first.status.phase == "Training"
    assert [(e.type, e.reason) for e in events(first)] == [("Warning", "SpecChangeIgnored")]
    assert get_condition(first.status.conditions, "SpecChangeIgnored").status == "True"
    assert launches(first) == []
    assert second.actions == []


# --- workload names -------------------------------------------------------------------------------


def test_short_job_names_give_readable_workload_names():
    assert workload_name("acme-tickets", "train") == "acme-tickets-train"


@pytest.mark.parametrize("length", [57, 58, 63, 64, 100, 253])
def test_long_job_names_give_deterministic_names_within_63_characters(length):
    job = ("support-bot-" * 30)[:length]

    name = workload_name(job, "train")

    assert len(name) <= MAX_NAME == 63
    assert name == workload_name(job, "train")
    assert name.endswith("-train")
    assert name.startswith(job[:40])


@pytest.mark.parametrize("nodes", [2, 10, 11, 128])
@pytest.mark.parametrize("length", [50, 57, 58, 63, 253])
def test_a_multi_node_training_job_leaves_room_for_its_pods_hostnames(length, nodes):
    """An Indexed Job's pod hostname is `<job name>-<index>`: a DNS label, at most 63 characters."""
    job = ("support-bot-" * 30)[:length]

    name = workload_name(job, "train", nodes)

    assert len(f"{name}-{nodes - 1}") <= 63
    assert name.endswith("-train") and name == workload_name(job, "train", nodes)
    assert workload_name(job, "evaluate", nodes) == workload_name(job, "evaluate"), "one pod: no index"


def test_long_job_names_sharing_a_prefix_get_different_workload_names():
    prefix = "a" * 70

    assert workload_name(prefix + "-one", "train") != workload_name(prefix + "-two", "train")


def test_a_long_job_name_is_relaunched_under_the_same_name():
    job = "x" * 80
    status = ftj_pass(job, LOCAL_SPEC, FineTuneJobStatus(), Observed(), LOCAL).status
    first_launch = ftj_pass(job, LOCAL_SPEC, FineTuneJobStatus(), Observed(), LOCAL).actions[0]

    again = ftj_pass(job, LOCAL_SPEC, status, Observed(), LOCAL)

    assert launches(again) == [first_launch]
    assert len(first_launch.name) <= 63


def test_a_preempted_workload_is_relaunched_to_resume_not_failed():
    preempted = {"succeeded": False, "reason": "Preempted",
                 "message": "stopped by a signal at step 11; the next run resumes from its checkpoint"}
    decision = ftj_pass(JOB, LOCAL_SPEC, training_status(), observed("Failed", result=preempted),
                         LOCAL, generation=1, now=LATER)

    assert decision.status.phase == "Training"
    assert launches(decision) == [LaunchWorkload("train", TRAIN, replace=True)]
    assert [event.reason for event in events(decision)] == ["Preempted"]


def test_a_spec_changed_after_the_start_is_not_applied_and_said_so():
    changed = {**LOCAL_SPEC, "training": {"epochs": 5}}
    first = ftj_pass(JOB, changed, training_status(), observed("Running"), LOCAL, generation=2, now=LATER)

    condition = get_condition(first.status.conditions, "SpecChangeIgnored")
    assert condition is not None and condition.status == "True"
    assert "generation 2" in condition.message and "create a new FineTuneJob" in condition.message
    assert launches(first) == [] and first.status.phase == "Training"
    assert [event.reason for event in events(first)] == ["SpecChangeIgnored"]
    again = ftj_pass(JOB, changed, first.status, observed("Running"), LOCAL, generation=2, now=LATER)
    assert events(again) == []  # said once, not on every pass
