"""The augment and export stages in the pure reconciler: where they sit, what they hand on, and when the
export is skipped or its GGUF file is kept out of the registry."""

from __future__ import annotations

from passes import ftj_pass
from stage_results import DATA_CHECKED, REGISTERED, TRAINED, evaluated

from tuneloop.api.common import get_condition
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.reconcile.finetunejob import LaunchWorkload, Observed, ReconcileContext, WorkloadState

LATER = "2026-03-01T13:00:00Z"
JOB = "acme-tickets"
LOCAL = ReconcileContext(mode="local", catalog=frozenset({"smollm2-135m-instruct"}))
CLUSTER = ReconcileContext(mode="cluster", catalog=frozenset({"smollm2-135m-instruct"}), registry_configured=True)
TEACHER = {"url": "http://127.0.0.1:8766/v1", "model": "smollm2-135m-instruct", "local": True}
SPEC = {
    "baseModel": {"name": "smollm2-135m-instruct"},
    "dataset": {"uri": "data/tickets.jsonl", "augment": {"teacher": TEACHER, "targetRows": 120}},
    "evaluation": {"gate": {"primaryMetric": "exactMatch"}},
    "registry": {"modelName": "acme-tickets"},
    "output": {"export": ["merged", "gguf"], "gguf": {"type": "q8_0"}},
}
AUGMENTED = {"succeeded": True, "syntheticPath": "/w/augment/output/synthetic/synthetic-0a1b2c.jsonl",
             "seconds": 95.0, "stats": {"wanted": 40, "requests": 71, "accepted": 36,
                                        "rejected": {"unparseable": 20, "duplicate": 10, "near-test": 5}}}
GGUF_SHA, MERGED_SHA = "ab" * 32, "cd" * 32


def exported(token_agreement: float = 0.985) -> dict:
    return {"succeeded": True, "seconds": 61.0, "files": [
        {"kind": "merged", "uri": "/w/export/output/export/merged", "sha256": MERGED_SHA, "bytes": 538_000_000},
        {"kind": "gguf", "uri": "/w/export/output/export/acme-tickets-q8_0.gguf", "sha256": GGUF_SHA,
         "bytes": 145_000_000, "ggufType": "q8_0"}],
        "agreement": {"rows": 30, "sameAnswers": 0.8, "tokenAgreement": token_agreement, "expected": 0.95,
                      "passed": token_agreement >= 0.95}}


def step(status: FineTuneJobStatus, stage: str, result: dict, spec: dict = SPEC, phase: str = "Succeeded"):
    observed = Observed(workloads={f"{JOB}-{stage}": WorkloadState(phase=phase, result=result)})
    return ftj_pass(JOB, spec, status, observed, LOCAL, 1, now=LATER)


def launches(decision) -> list[LaunchWorkload]:
    return [action for action in decision.actions if isinstance(action, LaunchWorkload)]


def validated(spec: dict = SPEC):
    pending = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), LOCAL, 1).status
    return step(pending, "validate", DATA_CHECKED, spec)


def evaluated_status(em_diff_low: float = 0.2) -> FineTuneJobStatus:
    augmented = step(validated().status, "augment", AUGMENTED).status
    trained = step(augmented, "train", TRAINED).status
    return step(trained, "evaluate", evaluated(em_diff_low=em_diff_low)).status


def test_the_augment_stage_runs_after_validation_and_hands_its_rows_to_training_only():
    decision = validated()
    assert decision.status.phase == "Augmenting" and decision.status.stage == "augment"
    assert launches(decision) == [LaunchWorkload("augment", f"{JOB}-augment", {})]

    augmented = step(decision.status, "augment", AUGMENTED)
    status = augmented.status
    assert status.phase == "Training"
    assert launches(augmented) == [LaunchWorkload("train", f"{JOB}-train", {
        "synthetic_uri": "/w/augment/output/synthetic/synthetic-0a1b2c.jsonl"})]
    assert status.augmentation.summary == ("36 of 40 synthetic rows kept from 71 teacher requests "
                                           "(rejected: 10 duplicate, 5 near-test, 20 unparseable)")
    assert get_condition(status.conditions, "Augmented").status == "True"
    assert "FewerSyntheticRows" in [event.reason for event in augmented.events]

    evaluating = step(step(status, "train", TRAINED).status, "evaluate", evaluated())
    (evaluate,) = launches(evaluating)
    assert "synthetic_uri" not in evaluate.inputs  # the evaluator reads the test split only


def test_a_teacher_that_never_answers_fails_the_job_naming_it():
    failed = step(validated().status, "augment", {
        "succeeded": False, "reason": "TeacherUnavailable",
        "message": "dataset.augment.teacher: http://127.0.0.1:8766/v1 did not answer any of 12 requests"},
        phase="Failed").status
    assert failed.phase == "Failed"
    assert get_condition(failed.conditions, "Failed").reason == "TeacherUnavailable"
    assert "http://127.0.0.1:8766/v1" in failed.message


def test_a_passed_gate_exports_then_registers_the_checked_files_with_their_sha256():
    exporting = evaluated_status()
    assert exporting.phase == "Exporting" and exporting.stage == "export"

    decision = step(exporting, "export", exported())
    status = decision.status
    assert status.phase == "Registering"
    assert status.export.summary == ("merged 538 MB; gguf q8_0 145 MB; GGUF vs merged on 30 test rows: 98.5% of "
                                     "answer tokens agree (expected >= 95%), 80% identical answers")
    (register,) = launches(decision)
    assert [(item["kind"], item["sha256"]) for item in register.inputs["exports"]] == [
        ("merged", MERGED_SHA), ("gguf", GGUF_SHA)]

    registered = {**REGISTERED, "exports": [
        {"kind": "gguf", "uri": "runs:/run-1/export/acme-tickets-q8_0.gguf", "sha256": GGUF_SHA, "bytes": 1}]}
    done = step(status, "register", registered).status
    assert done.phase == "Succeeded"
    assert done.registry.exports == {"gguf": "runs:/run-1/export/acme-tickets-q8_0.gguf"}
    assert done.message.endswith("with gguf")


def test_a_gguf_file_that_disagrees_with_the_merged_model_is_reported_and_not_registered():
    decision = step(evaluated_status(), "export", exported(token_agreement=0.7))
    assert "GgufDisagrees" in [event.reason for event in decision.events]
    (register,) = launches(decision)
    assert [item["kind"] for item in register.inputs["exports"]] == ["merged"]


def test_a_failed_gate_skips_the_export_and_says_why():
    status = evaluated_status(em_diff_low=-0.05)
    assert status.phase == "Registering"
    assert status.export.skipped.startswith("the gate failed")
    assert get_condition(status.conditions, "Exported").reason == "GateFailed"


def test_without_evaluation_the_export_follows_training():
    spec = {**SPEC, "evaluation": {"enabled": False}, "dataset": {"uri": "data/tickets.jsonl"}}
    trained = step(validated(spec).status, "train", TRAINED, spec)
    assert trained.status.phase == "Exporting"
    assert launches(trained)[0].inputs == {"adapter_uri": "/w/train/output/adapter",
                                           "test_uri": "/w/train/output/test.jsonl"}


def test_merge_adapter_is_the_export_of_a_merged_model():
    spec = {**SPEC, "output": {"mergeAdapter": True}, "dataset": {"uri": "data/tickets.jsonl"}}
    trained = step(validated(spec).status, "train", TRAINED, spec)
    evaluating = step(trained.status, "evaluate", evaluated(), spec)
    assert evaluating.status.phase == "Exporting"


def test_a_cluster_refuses_a_local_teacher_and_a_key_from_the_environment_naming_the_fields():
    spec = {**SPEC, "output": {"uri": "pvc://adapters/acme"},
            "dataset": {"uri": "pvc://data/tickets.jsonl",
                        "augment": {"teacher": {**TEACHER, "apiKeyEnv": "TEACHER_KEY"}, "targetRows": 120}}}
    failed = ftj_pass(JOB, spec, FineTuneJobStatus(), Observed(), CLUSTER, 1).status
    assert failed.phase == "Failed"
    assert "spec.dataset.augment.teacher.local: a cluster cannot start a local teacher" in failed.message
    assert "spec.dataset.augment.teacher.apiKeyEnv: in a cluster the key comes from apiKeySecret" in failed.message
