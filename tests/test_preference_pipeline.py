"""A preference objective through the whole local pipeline: `tuneloop run --local` of a FineTuneJob with
method.objective dpo on the tiny random Llama, and what the user then reads of its preference stage (the status,
the terminal report, the HTML report and MLflow)."""

from __future__ import annotations

import html
import json

import pytest
import yaml

from test_cli_local_runs import tuneloop
from test_preference_training import write_pairs
from tiny_model import write_tickets
from tuneloop.api.finetunejob import FineTuneJobStatus

NAME = "tiny-dpo"


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("preference-run")
    write_tickets(folder / "tickets.jsonl", rows=24, seed=1)
    write_pairs(folder / "pairs.jsonl")
    (folder / "job.yaml").write_text(yaml.safe_dump({
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": NAME},
        "spec": {"baseModel": {"uri": f"file://{tiny_model_dir}"},
                 "dataset": {"uri": "tickets.jsonl", "validationFraction": 0.25, "testFraction": 0.2, "seed": 1,
                             "preferences": {"uri": "pairs.jsonl"}},
                 "method": {"type": "lora", "objective": "dpo", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                            "preference": {"learningRate": 5e-3, "epochs": 1}},
                 "training": {"epochs": 1, "learningRate": 3e-3, "microBatchSize": 4, "precision": "fp32"},
                 "evaluation": {"maxNewTokens": 8, "batchSize": 2, "bootstrap": {"samples": 100}}}}))
    process = tuneloop("run", "job.yaml", "--local", cwd=folder)
    assert process.returncode in (0, 1) and f"FineTuneJob {NAME}: Succeeded" in process.stdout, \
        process.stdout + process.stderr
    run_folder = next((folder / "tuneloop-work" / NAME).iterdir())
    status = FineTuneJobStatus.model_validate(json.loads((run_folder / "status.json").read_text()))
    return folder, run_folder, status, process.stdout


def test_the_dpo_stage_moved_the_margin_and_its_status_says_so(dpo_run):
    _, _, status, _ = dpo_run
    stage = status.training.preference
    assert (stage.objective, stage.reference, stage.steps) == ("dpo", "base", 8)  # 30 pairs / 4
    assert stage.margin_after > stage.margin_before
    assert stage.loss_after < stage.loss_before


def test_the_terminal_and_html_reports_show_the_objective_line(dpo_run):
    _, run_folder, status, stdout = dpo_run
    summary = status.training.preference.summary()
    assert "chosen preferred" in summary
    objective_line = next(line for line in stdout.splitlines() if line.strip().startswith("objective"))
    assert objective_line.split(None, 1)[1].strip() in summary  # wrapped to the terminal: its start
    page = html.unescape((run_folder / "report.html").read_text(encoding="utf-8"))
    assert summary in page


def test_mlflow_holds_the_preference_stage_metrics_before_and_after(dpo_run):
    mlflow = pytest.importorskip("mlflow")
    folder, _, status, _ = dpo_run
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{folder / 'tuneloop-work' / 'mlflow' / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             filter_string="params.objective = 'dpo'")[0]
    stage = status.training.preference
    margins = sorted(client.get_metric_history(run.info.run_id, "preference/margin"), key=lambda m: m.step)
    assert [m.value for m in margins] == pytest.approx([stage.margin_before, stage.margin_after])
    assert len(client.get_metric_history(run.info.run_id, "preference/train_loss")) == stage.steps
