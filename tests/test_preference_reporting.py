"""What the operator shows of a preference stage (objective dpo, kto, sft-then-dpo) from a status and MLflow
metrics alone: the live progress (which stage is running), and the objective and preference-data lines of the
terminal report, the HTML report and the MLflow run description."""

from __future__ import annotations

import time
from html import unescape

import pytest

from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.registry.metric_names import (
    EPOCH,
    PREFERENCE_EPOCH,
    PREFERENCE_TOKENS_PER_SECOND,
    PREFERENCE_TRAIN_LOSS,
    TOKENS_PER_SECOND,
    TRAIN_LOSS,
)
from tuneloop.registry.progress import progress_from_run

OBJECTIVE = "dpo (reference sft, beta 0.1): margin -0.19 -> +5.42, chosen preferred 30% -> 100%, loss 0.693 -> 0.452"
PREFERENCES = "40 pairs: 30 trained on, 10 held out; 2 near test or regression rows, removed"
SFT_METRICS = {TRAIN_LOSS: 1.25, EPOCH: 1.0, TOKENS_PER_SECOND: 400.0}


def started_ms() -> int:
    """A run that started a minute ago, now: the ETA is computed from the time elapsed since."""
    return int(time.time() * 1000) - 60_000


def sft_then_dpo_status() -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate({
        "phase": "Succeeded",
        "dataset": {"rows": 40, "format": "alpaca", "trainRows": 24, "validationRows": 8, "testRows": 8,
                    "trainTokens": 4000, "sha256": "ab" * 32,
                    "preferences": {"rows": 40, "format": "pairs", "trainRows": 30, "validationRows": 10,
                                    "contaminated": 2, "removed": 2, "sha256": "cd" * 32}},
        "training": {"validationLossBefore": 2.5, "validationLossAfter": 1.2, "trainLoss": 0.9, "steps": 12,
                     "tokensPerSecond": 420.0, "seconds": 80.0, "adapterUri": "file:///work/adapter",
                     "testUri": "file:///work/test.jsonl",
                     "preference": {"objective": "dpo", "reference": "sft", "beta": 0.1, "steps": 8,
                                    "lossBefore": 0.6931, "lossAfter": 0.4517, "marginBefore": -0.1946,
                                    "marginAfter": 5.4243, "accuracyBefore": 0.3, "accuracyAfter": 1.0}}})


# --- live progress ---------------------------------------------------------------------------------

def test_progress_follows_sft_until_the_preference_stage_logs_its_first_loss():
    progress = progress_from_run(SFT_METRICS, {"total_steps": "12"}, started_ms(), {TRAIN_LOSS: 4})
    assert (progress["step"], progress["loss"], progress["epoch"], progress["tokensPerSecond"]) == (4, 1.25, 1.0, 400.0)


def test_progress_shows_the_preference_stage_once_its_loss_comes_after_the_sft_ones():
    metrics = {**SFT_METRICS, PREFERENCE_TRAIN_LOSS: 0.61, PREFERENCE_EPOCH: 0.5, PREFERENCE_TOKENS_PER_SECOND: 150.0}
    progress = progress_from_run(metrics, {"total_steps": "12"}, started_ms(), {TRAIN_LOSS: 4, PREFERENCE_TRAIN_LOSS: 7})
    assert progress["stage"] == "training"
    assert (progress["step"], progress["totalSteps"]) == (7, 12)  # one step axis: SFT's 4, then 3 of DPO's 8
    assert (progress["loss"], progress["epoch"], progress["tokensPerSecond"]) == (0.61, 0.5, 150.0)
    assert progress["etaSeconds"] == pytest.approx(60 / 7 * 5, rel=0.05)


def test_a_dpo_only_run_shows_its_preference_stage_from_the_first_step():
    metrics = {PREFERENCE_TRAIN_LOSS: 0.69, PREFERENCE_EPOCH: 0.1, PREFERENCE_TOKENS_PER_SECOND: 90.0}
    progress = progress_from_run(metrics, {"total_steps": "8"}, started_ms(), {PREFERENCE_TRAIN_LOSS: 1})
    assert (progress["step"], progress["loss"], progress["tokensPerSecond"]) == (1, 0.69, 90.0)


# --- the reports -----------------------------------------------------------------------------------

def test_the_status_summarises_the_stage_in_one_line():
    assert sft_then_dpo_status().training.preference.summary() == OBJECTIVE


def test_the_terminal_report_prints_the_objective_and_the_preference_rows(capsys):
    from tuneloop.api.finetunejob import parse_manifest
    from tuneloop.cli.terminal_report import print_report

    job = parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                          "metadata": {"name": "acme-tickets"},
                          "spec": {"baseModel": {"name": "smollm2-135m-instruct"},
                                   "dataset": {"uri": "data/tickets.jsonl", "preferences": {"uri": "data/pairs.jsonl"}},
                                   "method": {"objective": "sft-then-dpo"}}})
    print_report(job, sft_then_dpo_status(), [])
    out = capsys.readouterr().out
    assert f"\n  preference {PREFERENCES}\n" in out
    objective = out.split("\n  objective  ", 1)[1].split("\n  adapter", 1)[0]
    assert " ".join(objective.split()) == OBJECTIVE  # wrapped to the terminal's width


def test_the_html_report_has_an_objective_row_and_a_preferences_row():
    from tuneloop.report import RunReport, render_html

    status = sft_then_dpo_status()
    page = unescape(render_html(RunReport(job_name="acme-tickets", namespace="ml", phase="Succeeded",
                                          dataset=status.dataset, training=status.training)))
    assert f"<dt>objective</dt><dd>{OBJECTIVE}</dd>" in page
    assert f"<dt>preferences</dt><dd>{PREFERENCES}</dd>" in page


def test_an_sft_run_has_no_preference_lines_anywhere(capsys):
    from tuneloop.api.workloads import RegisterResult
    from tuneloop.registry.description import run_description
    from tuneloop.report import RunReport, render_html

    status = sft_then_dpo_status()
    status.training.preference, status.dataset.preferences = None, None
    page = render_html(RunReport(job_name="acme-tickets", namespace="ml", phase="Succeeded",
                                 dataset=status.dataset, training=status.training))
    registered = RegisterResult(succeeded=True, model_name="acme-tickets", version="3", uri="models:/acme-tickets/3")
    description = run_description("ml/acme-tickets", status, {}, registered)
    assert "objective" not in page and "preferences" not in page
    assert "objective " not in description and "preferences " not in description


def test_the_mlflow_description_carries_the_objective_and_the_preference_rows():
    from tuneloop.api.workloads import RegisterResult
    from tuneloop.registry.description import run_description

    registered = RegisterResult(succeeded=True, model_name="acme-tickets", version="3", uri="models:/acme-tickets/3")
    description = run_description("ml/acme-tickets", sft_then_dpo_status(), {}, registered)
    training = description.split("## Training", 1)[1].split("```", 2)[1]
    assert f"\nobjective      {OBJECTIVE}\n" in training
    assert f"\npreferences    {PREFERENCES}\n" in training
