"""The FineTuneJob reconciler with Kueue and spec.suspend, pass by pass (pure: no cluster).

A queued Job shows Queued with Kueue's reason until it runs; a preempted one goes back to Queued
and is counted; spec.suspend stops the stage's workload and a resume launches the same one again;
status.cost adds up every interval the passes saw.
"""

from __future__ import annotations

import dataclasses

import pytest
from passes import ftj_pass
from stage_results import DATA_CHECKED

from tuneloop.api.common import get_condition
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.reconcile.finetunejob import (
    LaunchWorkload,
    Observed,
    ReconcileContext,
    StopWorkload,
    WorkloadState,
)

JOB = "acme-tickets"
VALIDATE, TRAIN = f"{JOB}-validate", f"{JOB}-train"
QUEUE = "team-a-gpus"
CLUSTER = ReconcileContext(mode="cluster", catalog=frozenset({"llama-3.1-8b"}), cost_per_gpu_hour=2.5,
                           currency="EUR")
SPEC = {
    "baseModel": {"name": "llama-3.1-8b"},
    "dataset": {"uri": "pvc://datasets/tickets.jsonl"},
    "output": {"uri": "pvc://adapters/acme-tickets"},
    "resources": {"gpus": 2, "nodes": 2},
    "evaluation": {"enabled": False}, "registry": {"enabled": False},
    "queueName": QUEUE,
}
SUSPENDED = {**SPEC, "suspend": True}
TRAINED = {"succeeded": True, "validationLossBefore": 2.5, "validationLossAfter": 0.75, "trainLoss": 0.5,
           "steps": 68, "tokensPerSecond": 1234.5, "seconds": 3000.0,
           "dataset": DATA_CHECKED["dataset"],
           "adapterPath": "/mnt/pvc/adapters/acme-tickets/adapter", "testPath": "/mnt/pvc/adapters/test.jsonl"}


def seen(phase: str, name: str = TRAIN, queue: str | None = QUEUE, **state) -> Observed:
    return Observed(workloads={name: WorkloadState(phase=phase, **state)}, queue_name=queue)


def step(status, observed, now, spec=SPEC, generation=1):
    return ftj_pass(JOB, spec, status, observed, CLUSTER, generation=generation, now=now)


def training_status(spec=SPEC, queue=QUEUE) -> FineTuneJobStatus:
    """Accepted at 12:00, data checked (validate ran 12:00:30-12:02:00), the training Job created at 12:02."""
    status = step(FineTuneJobStatus(), Observed(queue_name=queue), "2026-03-01T12:00:00Z", spec).status
    status = step(status, seen("Running", VALIDATE, queue, since="2026-03-01T12:00:30Z"), "2026-03-01T12:01:00Z",
                  spec).status
    return step(status, seen("Succeeded", VALIDATE, queue, result={**DATA_CHECKED, "seconds": 60.0},
                             since="2026-03-01T12:02:00Z"), "2026-03-01T12:02:00Z", spec).status


def stage(status, name):
    return next(entry for entry in status.cost.stages if entry.stage == name)


def test_a_queued_job_shows_kueues_reason_then_runs_once_admitted_and_the_times_add_up():
    status = training_status()
    assert (status.phase, status.stage, status.queue.state) == ("Queued", "train", "Queued")  # created suspended

    waiting = step(status, seen("Queued", queue_reason="Pending", since="2026-03-01T12:02:00Z",
                                queue_message="couldn't assign flavors to pod set main: insufficient unused quota "
                                              "for nvidia.com/gpu in flavor h100, 4 more needed",
                                queue_workload="job-acme-tickets-train-3f2a1"), "2026-03-01T12:05:00Z")
    status = waiting.status
    assert (status.phase, status.stage) == ("Queued", "train")
    assert status.queue.to_wire() == {
        "name": QUEUE, "state": "Queued", "since": "2026-03-01T12:02:00Z", "workload": "job-acme-tickets-train-3f2a1",
        "reason": "Pending", "message": "couldn't assign flavors to pod set main: insufficient unused quota for "
                                        "nvidia.com/gpu in flavor h100, 4 more needed",
        "admissions": 1, "preemptions": 0}  # the data check's Job was admitted once already
    assert "waits for admission in LocalQueue team-a-gpus since 2026-03-01T12:02:00Z (Pending: couldn't assign" \
        in status.message
    assert waiting.actions == []  # nothing launched twice while it waits

    admitted = step(status, seen("Running", since="2026-03-01T12:10:00Z"), "2026-03-01T12:10:05Z")
    status = admitted.status
    assert status.phase == "Training" and status.queue.state == "Admitted" and status.queue.admissions == 2
    assert ("Normal", "Admitted") in [(e.type, e.reason) for e in admitted.events]
    assert "after 480s" in next(e.message for e in admitted.events if e.reason == "Admitted")

    done = step(status, seen("Succeeded", result=TRAINED, since="2026-03-01T13:00:00Z"), "2026-03-01T13:00:02Z")
    status = done.status
    assert status.phase == "Succeeded"
    train = stage(status, "train")
    # Queued 12:02 -> 12:10, running 12:10 -> 13:00 on 2 nodes x 2 GPUs; the trainer computed 3000 s.
    assert (train.queued_seconds, train.running_seconds, train.gpus) == (480.0, 3000.0, 4)
    assert (train.gpu_seconds_requested, train.gpu_seconds_used, train.state) == (12000.0, 12000.0, "Done")
    validate = stage(status, "validate")
    assert (validate.queued_seconds, validate.running_seconds, validate.gpus) == (30.0, 90.0, 0)
    cost = status.cost
    assert cost.queued_seconds == 510.0 and cost.running_seconds == 3090.0
    assert cost.gpu_hours_requested == pytest.approx(12000 / 3600, abs=1e-4)
    assert cost.cost == pytest.approx(2.5 * cost.gpu_hours_requested, abs=0.01) and cost.currency == "EUR"
    assert cost.tokens_per_second == 1234.5
    assert cost.summary == "3.33 GPU-h held, 3.33 used; queued 8m30s, ran 51m30s; 8.33 EUR"


def test_a_preempted_job_goes_back_to_queued_is_counted_and_its_running_time_adds_up_over_attempts():
    status = training_status()
    status = step(status, seen("Queued", since="2026-03-01T12:02:00Z"), "2026-03-01T12:02:05Z").status
    status = step(status, seen("Running", since="2026-03-01T12:03:00Z"), "2026-03-01T12:03:05Z").status

    preempted = step(status, seen("Queued", since="2026-03-01T12:20:00Z", queue_reason="Preempted",
                                  queue_message="Preempted to accommodate a higher priority Workload"),
                     "2026-03-01T12:20:03Z")
    status = preempted.status
    assert status.phase == "Queued" and status.queue.preemptions == 1 and status.queue.since == "2026-03-01T12:20:00Z"
    warning = next(e for e in preempted.events if e.reason == "Preempted")
    assert warning.type == "Warning" and "resumes from its checkpoint" in warning.message
    assert preempted.actions == []  # Kueue re-admits the same Job: nothing is created or deleted

    status = step(status, seen("Running", since="2026-03-01T12:30:00Z"), "2026-03-01T12:30:02Z").status
    status = step(status, seen("Succeeded", result=TRAINED, since="2026-03-01T13:00:00Z"), "2026-03-01T13:00:00Z").status
    train = stage(status, "train")
    assert (train.queued_seconds, train.running_seconds, train.interruptions) == (60.0 + 600.0, 17 * 60 + 30 * 60, 1)
    assert status.queue.admissions == 3 and status.queue.preemptions == 1
    # A second look at the same Queued state counts nothing more.
    again = step(preempted.status, seen("Queued", since="2026-03-01T12:20:00Z", queue_reason="Preempted"),
                 "2026-03-01T12:25:00Z").status
    assert again.queue.preemptions == 1 and stage(again, "train").interruptions == 1


def test_suspend_stops_the_running_stage_and_a_resume_launches_the_same_workload_again():
    status = step(training_status(), seen("Running", since="2026-03-01T12:03:00Z"), "2026-03-01T12:03:05Z").status
    status = step(status, seen("Running", progress={"stage": "training", "step": 20, "totalSteps": 68}),
                  "2026-03-01T12:10:00Z").status

    suspending = step(status, seen("Running"), "2026-03-01T12:20:00Z", SUSPENDED, generation=2)
    status = suspending.status
    assert suspending.actions == [StopWorkload("train", TRAIN)]
    assert status.phase == "Suspended" and status.stage == "train"
    assert status.message == f"suspended at step 20 of 68: the train Job {TRAIN} is ending"
    assert [(e.type, e.reason) for e in suspending.events] == [("Normal", "Suspended")]
    # suspend alone is applied: no SpecChangeIgnored, and the generation it runs with moves on.
    assert get_condition(status.conditions, "SpecChangeIgnored") is None and status.observed_generation == 2

    stopping = step(status, seen("Stopping", since="2026-03-01T12:20:00Z"), "2026-03-01T12:20:30Z", SUSPENDED,
                    generation=2)
    assert stopping.actions == [] and stopping.events == [] and stopping.status.phase == "Suspended"
    status = step(stopping.status, seen("Absent"), "2026-03-01T12:21:00Z", SUSPENDED, generation=2).status
    assert status.message == "suspended in the train stage at step 20 of 68: set spec.suspend to false to resume"
    held = stage(status, "train")
    assert (held.running_seconds, held.state, held.interruptions) == (17 * 60, "Stopped", 1)

    # Time suspended counts as neither queued nor running.
    resumed = step(status, seen("Absent"), "2026-03-01T14:00:00Z", SPEC, generation=3)
    assert resumed.actions == [LaunchWorkload("train", TRAIN)]
    assert ("Normal", "Resumed") in [(e.type, e.reason) for e in resumed.events]
    status = resumed.status
    assert status.phase == "Queued" and status.message == f"the train Job {TRAIN} waits for admission in " \
                                                          f"LocalQueue {QUEUE}"  # back in the queue
    assert stage(status, "train").queued_seconds == 60  # 12:02 -> 12:03, before the first admission only
    assert stage(status, "train").state == "Queued" and stage(status, "train").since == "2026-03-01T14:00:00Z"


def test_a_resume_waits_for_the_stopped_job_to_end_before_launching_again():
    status = step(training_status(), seen("Running"), "2026-03-01T12:03:00Z").status
    status = step(status, seen("Running"), "2026-03-01T12:04:00Z", SUSPENDED, generation=2).status

    racing = step(status, seen("Stopping"), "2026-03-01T12:04:10Z", SPEC, generation=3)

    assert racing.actions == []  # no second trainer beside the one still saving its checkpoint
    assert racing.status.phase == "Suspended" and "to end before starting it again" in racing.status.message


def test_a_job_created_suspended_waits_before_its_first_stage():
    decision = step(FineTuneJobStatus(), Observed(queue_name=QUEUE), "2026-03-01T12:00:00Z", SUSPENDED)

    assert decision.actions == [] and decision.status.phase == "Suspended" and decision.status.stage == "validate"
    resumed = step(decision.status, seen("Absent", VALIDATE), "2026-03-01T12:05:00Z", SPEC, generation=2)
    assert resumed.actions == [LaunchWorkload("validate", VALIDATE)] and resumed.status.phase == "Queued"


def test_a_spec_change_other_than_suspend_is_still_reported_and_ignored():
    status = step(training_status(), seen("Running"), "2026-03-01T12:03:00Z").status
    changed = {**SUSPENDED, "training": {"epochs": 7}}

    decision = step(status, seen("Running"), "2026-03-01T12:04:00Z", changed, generation=2)

    assert get_condition(decision.status.conditions, "SpecChangeIgnored") is not None
    assert decision.status.observed_generation == 1
    assert decision.actions == [StopWorkload("train", TRAIN)]  # suspend itself still applies


def test_a_cluster_that_drops_job_suspension_fails_the_job_and_stops_the_unqueued_job():
    result = {"succeeded": False, "reason": "QueueUnsupported",
              "message": "spec.queueName: the cluster's API server dropped spec.suspend from Job x"}

    decision = step(training_status(), seen("Failed", result=result), "2026-03-01T12:03:00Z")

    assert decision.status.phase == "Failed" and "dropped spec.suspend" in decision.status.message
    assert decision.actions == [StopWorkload("train", TRAIN)]


def test_the_cost_of_a_point_of_the_gated_metric():
    from tuneloop.reconcile import cost

    ledger = cost.record(None, "train", 8, "Running", "2026-03-01T12:00:00Z")
    cost.price(ledger, 3.0, "USD")
    cost.record(ledger, "train", 8, "Done", "2026-03-01T13:30:00Z", used_seconds=4500.0)
    cost.improvement(ledger, "exactMatch", 0.62, 0.40)

    assert (ledger.gpu_hours_requested, ledger.gpu_hours_used, ledger.cost) == (12.0, 10.0, 36.0)
    gain = ledger.improvement
    assert (gain.points, gain.gpu_hours_per_point, gain.cost_per_point) == (22.0, 0.5455, 1.6365)
    assert gain.running_hours_per_point == pytest.approx(1.5 / 22, abs=1e-4)
    assert ledger.summary == "12.00 GPU-h held, 10.00 used; queued 0s, ran 1h30m; 0.545 GPU-h per exactMatch point; " \
                             "36.00 USD"
    cost.improvement(ledger, "exactMatch", 0.40, 0.45)  # no gain: nothing per point
    assert ledger.improvement.points == -5.0 and ledger.improvement.gpu_hours_per_point is None

    on_a_cpu = cost.record(None, "train", 0, "Running", "2026-03-01T12:00:00Z")
    cost.record(on_a_cpu, "train", 0, "Done", "2026-03-01T12:11:00Z", used_seconds=600.0)
    cost.improvement(on_a_cpu, "exactMatch", 0.40, 0.0)
    assert on_a_cpu.improvement.gpu_hours_per_point is None  # not "0 GPU-h per point"
    assert on_a_cpu.summary == "no GPU; queued 0s, ran 11m00s; 17s per exactMatch point"  # 660 s / 40


@pytest.mark.parametrize("spec, context, problem", [
    ({**SPEC, "queueName": None, "resources": {"gpus": 1, "workloadPriorityClassName": "low"}}, CLUSTER,
     "spec.resources.workloadPriorityClassName: a Kueue priority needs a queue"),
    ({"baseModel": {"name": "llama-3.1-8b"}, "dataset": {"uri": "data.jsonl"}, "suspend": True},
     dataclasses.replace(CLUSTER, mode="local"), "spec.suspend: a local run is not suspended"),
])
def test_specs_that_cannot_queue_or_suspend_where_they_run_are_refused_by_field(spec, context, problem):
    decision = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(queue_name=None), context, generation=1,
                        now="2026-03-01T12:00:00Z")
    assert decision.status.phase == "Failed" and problem in decision.status.message


def test_a_trainer_that_checkpointed_while_suspended_is_relaunched_only_on_resume():
    status = step(training_status(), seen("Running"), "2026-03-01T12:03:00Z").status
    stopped = {"succeeded": False, "reason": "Preempted", "message": "stopped by a signal at step 20"}

    held = step(status, seen("Failed", result=stopped), "2026-03-01T12:04:00Z", SUSPENDED, generation=2)
    assert held.actions == [] and held.status.phase == "Suspended"

    resumed = step(held.status, seen("Failed", result=stopped), "2026-03-01T12:09:00Z", SPEC, generation=3)
    assert resumed.actions == [LaunchWorkload("train", TRAIN, replace=True)]
