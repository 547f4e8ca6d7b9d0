"""The FineTuneSchedule's decisions, without a server: slots, skips, concurrency, the run's steps."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from crd_schema import admit
from passes import fts_pass, resource

from tuneloop.api.common import SpecError
from tuneloop.api.finetunejob import parse_manifest as parse_job
from tuneloop.api.finetuneschedule import FineTuneSchedule, FineTuneScheduleStatus, parse_spec
from tuneloop.reconcile.finetuneschedule import (
    CreateJob,
    DeleteJob,
    JobView,
    LaunchSnapshot,
    Observed,
    SnapshotState,
    due_slot,
    needs_feedback_count,
)

CRDS = Path(__file__).resolve().parents[1] / "crds" / "tuneloop.dev_crds.yaml"
CREATED = "2026-11-20T12:00:00Z"
TEMPLATE = {"baseModel": {"name": "smollm2-135m-instruct"},
            "dataset": {"uri": "pvc://datasets/tickets.jsonl", "format": "alpaca", "testFraction": 0.2},
            "output": {"uri": "pvc://adapters/acme-tickets"}, "registry": {"modelName": "acme-tickets"}}


def spec(**fields):
    return {"schedule": "0 2 * * *", "timeZone": "Europe/Amsterdam",
            "feedback": {"url": "http://feedback.tuneloop:8080", "model": "acme-tickets", "minNewCorrections": 20,
                         "snapshotUri": "pvc://datasets/feedback"},
            "replayFraction": 0.3, "jobTemplate": {"metadata": {"labels": {"team": "support"}}, "spec": TEMPLATE},
            **fields}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def step(raw_spec, status=None, now="2026-11-23T01:30:00", **observed):
    decision = fts_pass("nightly", "ml", "uid-1", raw_spec, status or FineTuneScheduleStatus(),
                        Observed(**observed), at(now), generation=1, created=CREATED)
    return decision, decision.status


def schedule(raw_spec, status):
    return resource(FineTuneSchedule, status, "nightly", raw_spec, namespace="ml", created=CREATED)


def test_slots_follow_the_time_zone_and_missed_slots_run_once():
    parsed = parse_spec(spec())
    # 02:00 in Amsterdam (winter, UTC+1) is 01:00 UTC
    assert due_slot(parsed, FineTuneScheduleStatus(), CREATED, at("2026-11-23T00:59:00")) == at("2026-11-22T01:00:00")
    last = FineTuneScheduleStatus(last_schedule_time="2026-11-22T01:00:00Z")
    assert due_slot(parsed, last, CREATED, at("2026-11-23T00:59:00")) is None
    assert due_slot(parsed, last, CREATED, at("2026-11-23T01:00:00")) == at("2026-11-23T01:00:00")
    # down for three nights: one run, for the latest slot
    assert due_slot(parsed, last, CREATED, at("2026-11-25T09:00:00")) == at("2026-11-25T01:00:00")


def test_a_due_slot_with_enough_corrections_starts_with_a_snapshot_of_the_new_rows():
    decision, status = step(spec(), new_corrections=35, last_feedback_id=140)
    name = "nightly-" + str(int(at("2026-11-23T01:00:00").timestamp()) // 60)
    assert decision.actions[0] == LaunchSnapshot(f"{name}-snapshot", 0, 140)
    assert status.run.step == "Snapshot" and status.run.job_name == name and status.run.up_to_id == 140
    assert status.last_schedule_time == "2026-11-23T01:00:00Z"


def test_too_few_corrections_skip_the_slot_and_say_so():
    decision, status = step(spec(), new_corrections=12, last_feedback_id=140)
    assert status.run is None and status.last_run.outcome == "Skipped"
    assert "12 new corrections, fewer than minNewCorrections 20" in status.message
    assert not [a for a in decision.actions if isinstance(a, LaunchSnapshot)]
    _, again = step(spec(), status, now="2026-11-23T01:31:00", new_corrections=12, last_feedback_id=140)
    assert len(again.history) == 1, "a skipped slot is not retried"


def test_an_unreachable_feedback_service_leaves_the_slot_due():
    decision, status = step(spec(), feedback_problem="connection refused")
    assert status.run is None and status.last_schedule_time is None
    assert "waits for the feedback service: connection refused" in status.message
    assert needs_feedback_count(schedule(spec(), status), at("2026-11-23T01:31:00"))


def run_to_training(snapshot_rows=30):
    _, status = step(spec(), new_corrections=35, last_feedback_id=140)
    result = {"succeeded": True, "rows": snapshot_rows, "sha256": "ab" * 32, "afterId": 0, "upToId": 140,
              "uri": "pvc://datasets/feedback/corrections-abababababab.jsonl"}
    return step(spec(), status, now="2026-11-23T01:32:00", snapshot=SnapshotState("Succeeded", result))


def test_the_run_creates_a_finetunejob_training_on_the_snapshot_and_replaying_the_template_data():
    decision, status = run_to_training()
    create = next(a for a in decision.actions if isinstance(a, CreateJob))
    manifest = create.manifest
    assert manifest["metadata"]["ownerReferences"][0]["kind"] == "FineTuneSchedule"
    assert manifest["metadata"]["labels"] == {"team": "support", "tuneloop.dev/schedule": "nightly"}
    dataset = manifest["spec"]["dataset"]
    assert dataset["uri"] == "pvc://datasets/feedback/corrections-abababababab.jsonl" and dataset["format"] == "messages"
    assert dataset["replay"] == {"uri": "pvc://datasets/tickets.jsonl", "format": "alpaca", "fraction": 0.3}
    assert dataset["testFraction"] == 0.2, "the template's other dataset settings carry over"
    assert manifest["spec"]["output"]["uri"] == f"pvc://adapters/acme-tickets/{create.name}"
    assert status.run.step == "Training" and status.active == [create.name]


def test_a_promoted_run_moves_the_watermark_and_a_not_promoted_one_does_not():
    _, training = run_to_training()
    name = training.run.job_name
    promoted = JobView("Succeeded", gate_passed=True, version="4", aliases=("challenger", "champion"), score=0.6,
                       baseline_score=0.4)
    _, done = step(spec(), training, now="2026-11-23T03:00:00", jobs={name: promoted})
    assert done.last_run.outcome == "Promoted" and done.trained_up_to_id == 140 and done.active == []
    assert (done.last_run.version, done.last_run.score, done.last_run.baseline_score) == ("4", 0.6, 0.4)

    not_better = JobView("Succeeded", gate_passed=False, version=None)
    _, kept = step(spec(), training, now="2026-11-23T03:00:00", jobs={name: not_better})
    assert kept.last_run.outcome == "NotPromoted" and kept.trained_up_to_id == 0
    assert "gate failed" in kept.last_run.message


def test_forbid_skips_a_slot_while_a_run_is_going_and_replace_deletes_it():
    _, training = run_to_training()
    name = training.run.job_name
    running = {name: JobView("Training")}
    decision, status = step(spec(), training, now="2026-11-24T01:05:00", jobs=running)
    assert status.run.job_name == name, "the running run carries on"
    assert status.last_run.outcome == "Skipped" and "still going (Forbid)" in status.last_run.message
    assert not [a for a in decision.actions if isinstance(a, (LaunchSnapshot, DeleteJob))]

    decision, status = step(spec(concurrencyPolicy="Replace"), training, now="2026-11-24T01:05:00", jobs=running,
                            new_corrections=50, last_feedback_id=200)
    assert DeleteJob(name) in decision.actions and status.history[-1].outcome == "Replaced"
    assert status.run.job_name != name and status.run.step == "Snapshot"


def test_a_suspended_schedule_starts_nothing():
    decision, status = step(spec(suspend=True), new_corrections=99, last_feedback_id=140)
    assert status.run is None and status.message == "suspended" and decision.actions == []
    assert not needs_feedback_count(schedule(spec(suspend=True), FineTuneScheduleStatus()), at("2026-11-23T01:30:00"))


def test_a_slot_missed_beyond_the_starting_deadline_is_skipped():
    last = FineTuneScheduleStatus(last_schedule_time="2026-11-22T01:00:00Z")
    decision, status = step(spec(startingDeadlineSeconds=600), last, now="2026-11-23T05:00:00",
                            new_corrections=99, last_feedback_id=140)
    assert status.run is None and "startingDeadlineSeconds 600" in status.last_run.message


def test_history_limits_delete_the_oldest_finished_jobs():
    jobs = {f"nightly-{i}": JobView("Succeeded", created=f"2026-11-0{i}T00:00:00Z") for i in range(1, 6)}
    jobs["nightly-9"] = JobView("Failed", created="2026-11-09T00:00:00Z")
    jobs["nightly-8"] = JobView("Failed", created="2026-11-08T00:00:00Z")
    decision, _ = step(spec(successfulJobsHistoryLimit=2, failedJobsHistoryLimit=1), now="2026-11-23T00:30:00",
                       jobs=jobs, new_corrections=0, last_feedback_id=0)
    deleted = {a.name for a in decision.actions if isinstance(a, DeleteJob)}
    assert deleted == {"nightly-1", "nightly-2", "nightly-3", "nightly-8"}


@pytest.mark.parametrize("field, value, problem", [
    ("schedule", "every night", "is not a 5-field cron expression"),
    ("timeZone", "Mars/Olympus", "is not an IANA time zone"),
    ("replayFraction", 0.99, "replayFraction"),
])
def test_bad_specs_name_the_field(field, value, problem):
    with pytest.raises(SpecError) as error:
        parse_spec(spec(**{field: value}))
    assert any(problem in p and (field in p) for p in error.value.problems), error.value.problems


def test_an_empty_snapshot_after_cleaning_is_a_skip_not_a_training():
    decision, status = run_to_training(snapshot_rows=3)
    assert status.run is None and status.last_run.outcome == "Skipped"
    assert not [a for a in decision.actions if isinstance(a, CreateJob)]


def test_a_run_started_by_hand_skips_or_snapshots_like_a_scheduled_one():
    from tuneloop.reconcile.finetuneschedule import start_run

    slot = at("2026-11-23T15:07:00")  # not a cron slot: `--once` runs now
    few = start_run("nightly", "ml", None, parse_spec(spec()), FineTuneScheduleStatus(),
                    Observed(new_corrections=3, last_feedback_id=3), slot)
    assert few.status.run is None and few.status.last_run.outcome == "Skipped"
    enough = start_run("nightly", "ml", None, parse_spec(spec()), FineTuneScheduleStatus(trained_up_to_id=10),
                       Observed(new_corrections=30, last_feedback_id=40), slot)
    assert enough.status.run.step == "Snapshot" and enough.status.last_schedule_time == "2026-11-23T15:07:00Z"
    assert LaunchSnapshot(f"nightly-{int(slot.timestamp()) // 60}-snapshot", 10, 40) in enough.actions


def test_a_refused_token_holds_every_run_until_the_service_has_answered_with_it():
    from tuneloop.api.common import get_condition
    from tuneloop.reconcile.refusals import Refusal

    refusal = Refusal("SecretNotAllowed", "spec.feedback.tokenSecret: Secret ml/t is not marked for the feedback use")
    decision, refused = step(spec(), refusal=refusal)
    assert decision.events[0].reason == "SecretNotAllowed" and refused.last_schedule_time is None
    assert get_condition(refused.conditions, "Permitted").status == "False"
    again, _ = step(spec(), refused, refusal=refusal)
    assert again.actions == again.events == []  # the same refusal is not announced on every pass

    # A pass that did not look at the Secret (no slot due) proves nothing: still refused.
    _, quiet = step(spec(), refused, now="2026-11-23T00:30:00")
    assert get_condition(quiet.conditions, "Permitted").status == "False"
    _, answered = step(spec(), refused, new_corrections=35, last_feedback_id=140)
    assert get_condition(answered.conditions, "Permitted").reason == "Allowed" and answered.run is not None


def test_a_schedule_is_ready_while_it_can_run_and_stalled_when_refused():
    from tuneloop.api.common import get_condition
    from tuneloop.reconcile.refusals import Refusal

    _, running = step(spec(), new_corrections=35, last_feedback_id=140)
    ready = get_condition(running.conditions, "Ready")
    assert (ready.status, ready.reason) == ("True", "RunInProgress")  # a run's FineTuneJob reports its own readiness
    _, suspended = step(spec(suspend=True))
    assert get_condition(suspended.conditions, "Ready").reason == "Suspended"

    refusal = Refusal("SecretNotAllowed", "spec.feedback.tokenSecret: Secret ml/t is not marked for the feedback use")
    _, refused = step(spec(), refusal=refusal)
    assert (get_condition(refused.conditions, "Ready").status, get_condition(refused.conditions, "Stalled").reason) \
        == ("False", "SecretNotAllowed")

    _, invalid = step({**spec(), "schedule": "every night"})
    assert get_condition(invalid.conditions, "Stalled").reason == "InvalidSpec"
    assert invalid.observed_generation == 1  # seen and refused: kstatus reads Failed, not in progress
    _, fixed = step(spec(), invalid, new_corrections=35, last_feedback_id=140)
    assert get_condition(fixed.conditions, "SpecValid").status == "True"
    assert get_condition(fixed.conditions, "Ready").status == "True" and get_condition(fixed.conditions, "Stalled") is None


# --- preference objectives: the snapshot's pairs or KTO rows become the run's dataset.preferences --------

PAIRS = {"path": "pvc://datasets/feedback/pairs-cdcdcdcdcdcd.jsonl", "sha256": "cd" * 32, "rows": 12}
KTO = {"path": "pvc://datasets/feedback/kto-efefefefefef.jsonl", "sha256": "ef" * 32, "rows": 40}


def template_with(objective: str, **dataset):
    return spec(jobTemplate={"spec": {**TEMPLATE, "method": {"objective": objective},
                                      "dataset": {**TEMPLATE["dataset"], **dataset}}})


def snapshot_taken(raw_spec, **files):
    _, status = step(raw_spec, new_corrections=35, last_feedback_id=140)
    result = {"succeeded": True, "rows": 30, "sha256": "ab" * 32, "afterId": 0, "upToId": 140,
              "uri": "pvc://datasets/feedback/corrections-abababababab.jsonl", **files}
    return step(raw_spec, status, now="2026-11-23T01:32:00", snapshot=SnapshotState("Succeeded", result))


@pytest.mark.parametrize("objective, preferences", [
    ("dpo", {"uri": PAIRS["path"], "format": "pairs"}),
    ("sft-then-dpo", {"uri": PAIRS["path"], "format": "pairs"}),
    ("kto", {"uri": KTO["path"], "format": "kto"}),
    ("sft", None),
])
def test_the_run_trains_on_the_snapshots_pairs_or_kto_rows_as_its_objective_needs(objective, preferences):
    # a template may name preference rows of its own (they are not the feedback): the run's replace them
    raw = template_with(objective, preferences={"uri": "pvc://datasets/old-pairs.jsonl", "format": "pairs"})
    decision, status = snapshot_taken(raw, pairs=PAIRS, kto=KTO)
    create = next(a for a in decision.actions if isinstance(a, CreateJob))
    dataset = create.manifest["spec"]["dataset"]
    assert dataset.get("preferences") == preferences
    assert dataset["uri"] == "pvc://datasets/feedback/corrections-abababababab.jsonl"
    assert (status.run.snapshot.pairs_uri, status.run.snapshot.pairs_rows, status.run.snapshot.pairs_sha256) == (
        PAIRS["path"], 12, "cd" * 32)
    assert (status.run.snapshot.kto_uri, status.run.snapshot.kto_rows) == (KTO["path"], 40)
    parse_job(create.manifest)  # a valid FineTuneJob
    if preferences is not None:
        assert ("12 preference pairs" if objective != "kto" else "40 KTO rows") in status.message


def test_a_template_with_a_preference_objective_needs_no_preference_rows_of_its_own():
    parsed = parse_spec(template_with("dpo"))
    assert parsed.job_template.spec.dataset.preferences is None
    crd = next(doc for doc in yaml.safe_load_all(CRDS.read_text())
               if doc["spec"]["names"]["kind"] == "FineTuneSchedule")
    manifest = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSchedule",
                "metadata": {"name": "nightly", "namespace": "ml"}, "spec": template_with("sft-then-dpo")}
    assert admit(crd, manifest)[1] == [], "the API server admits it too"
    with pytest.raises(SpecError) as error:
        parse_spec(spec(jobTemplate={"spec": {**TEMPLATE, "method": {"objective": "kto", "type": "full"}}}))
    assert any("train a LoRA adapter" in problem for problem in error.value.problems)


@pytest.mark.parametrize("objective, files, wanted", [
    ("dpo", {"kto": KTO}, "preference pairs"),
    ("sft-then-dpo", {"kto": KTO}, "preference pairs"),
    ("kto", {"pairs": PAIRS}, "KTO rows"),
])
def test_a_preference_objective_without_such_rows_in_the_snapshot_is_skipped(objective, files, wanted):
    decision, status = snapshot_taken(template_with(objective), **files)
    assert not [a for a in decision.actions if isinstance(a, CreateJob)]
    assert status.run is None and status.active == [] and status.last_run.outcome == "Skipped"
    assert f"objective {objective} learns from {wanted}" in status.last_run.message
    assert "feedback ids 1..140 has none" in status.last_run.message
    assert status.trained_up_to_id == 0, "the feedback stays for the next run"
