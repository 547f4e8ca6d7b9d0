"""What a FineTuneJob's stage workloads report (a passed data check, training, evaluation and
registration results), and a job played through every stage by the reconciler."""

from __future__ import annotations

from passes import ftj_pass

from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.reconcile.finetunejob import Observed, ReconcileContext, WorkloadState

DATA_CHECKED = {
    "succeeded": True,
    "dataset": {"rows": 300, "trainRows": 270, "validationRows": 30, "testRows": 30, "trainTokens": 41234, "format": "alpaca",
                "sha256": "ab" * 32},
    "cleaning": {"rowsIn": 310, "exactDuplicates": 10, "rowsOut": 300},
    "report": {"trainingRows": 270, "truncatedRows": 4, "maxSeqLength": 512, "estimatedSteps": 68,
               "tokenLengths": [{"tokens": "1-256", "rows": 200}, {"tokens": "257-512", "rows": 66},
                                {"tokens": "> 512 (truncated)", "rows": 4}]},
}

TRAINED = {
    "succeeded": True, "validationLossBefore": 4.0, "validationLossAfter": 0.05, "trainLoss": 0.04, "steps": 68,
    "tokensPerSecond": 240.0, "seconds": 250.0, "adapterPath": "/w/train/output/adapter",
    "testPath": "/w/train/output/test.jsonl", "mlflowRunId": "run-1",
    "dataset": {"rows": 300, "trainRows": 270, "validationRows": 30, "testRows": 30, "trainTokens": 50000, "format": "alpaca",
                "sha256": "cd" * 32},
}


def score(value: float, low: float, high: float) -> dict:
    return {"value": value, "low": low, "high": high}


def improvement_test(metric: str = "exactMatch", diff_low: float = 0.2, value: float = 0.5) -> dict:
    """The evaluator's GateTest of an improvement: it passed when the interval's lower bound is above 0."""
    passed = diff_low > 0
    return {"check": f"{metric} improvement on test", "metric": metric, "set": "test", "kind": "improvement",
            "method": "exact McNemar", "estimate": score(value, diff_low, 0.7), "threshold": 0.0, "n": 30,
            "pValue": 0.0005 if passed else 0.2, "pHolm": 0.0005 if passed else 0.2, "passed": passed,
            "detectableEffect": 0.21, "detail": "discordant pairs 15 for, 0 against" if passed
            else "discordant pairs 5 for, 3 against"}


def evaluated(em_diff_low: float = 0.2, baseline: str = "base", baseline_version: str | None = None) -> dict:
    """The evaluator's result; an exactMatch improvement whose lower bound is <= 0 fails the gate."""
    return {
        "succeeded": True, "baseline": baseline, "baselineVersion": baseline_version,
        "tests": [improvement_test("exactMatch", em_diff_low)],
        "test": {
            "examples": 30,
            "candidate": {"exactMatch": score(0.6, 0.43, 0.77), "rougeL": score(0.9, 0.85, 0.94)},
            "baseline": {"exactMatch": score(0.1, 0.0, 0.2), "rougeL": score(0.3, 0.25, 0.35)},
            "difference": {"exactMatch": score(0.5, em_diff_low, 0.7), "rougeL": score(0.6, 0.5, 0.7)},
        },
        "judge": {"configured": False},
        "recordsPath": "/w/evaluate/records.jsonl",
    }


REGISTERED = {"succeeded": True, "modelName": "acme-tickets", "version": "3", "uri": "models:/acme-tickets/3",
              "aliases": ["challenger", "champion"], "runId": "run-1"}

PLAYED_JOB = "acme-tickets"
PLAYED_SPEC = {"baseModel": {"name": "smollm2-135m-instruct"}, "dataset": {"uri": "data/tickets.jsonl"},
               "registry": {"modelName": "acme-tickets"}}
PLAYED_CONTEXT = ReconcileContext(mode="local", catalog=frozenset({"smollm2-135m-instruct"}))


def played_job(em_diff_low: float = 0.2, progress: dict | None = None) -> FineTuneJobStatus:
    """A job the reconciler took through every stage to Succeeded (the gate fails when em_diff_low <= 0),
    with the training progress it last saw."""
    status = ftj_pass(PLAYED_JOB, PLAYED_SPEC, FineTuneJobStatus(), Observed(), PLAYED_CONTEXT, 1).status
    running = progress or {"stage": "training", "step": 60, "totalSteps": 68, "epoch": 2.6,
                           "loss": 0.04912000522017479, "tokensPerSecond": 240.31, "etaSeconds": 20.4}
    for stage, phase, result, seen in (("validate", "Succeeded", DATA_CHECKED, None), ("train", "Running", None, running),
                                       ("train", "Succeeded", TRAINED, None),
                                       ("evaluate", "Succeeded", evaluated(em_diff_low), None),
                                       ("register", "Succeeded", {**REGISTERED, "aliases": []} if em_diff_low <= 0
                                        else REGISTERED, None)):
        workload = WorkloadState(phase=phase, result=result, progress=seen)
        status = ftj_pass(PLAYED_JOB, PLAYED_SPEC, status, Observed(workloads={f"{PLAYED_JOB}-{stage}": workload}),
                          PLAYED_CONTEXT, 1).status
    return status
