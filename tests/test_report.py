"""The HTML run report: a real local run (tiny random Llama, SQLite MLflow) through `tuneloop run --local`,
its report.html, and `tuneloop report`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
import yaml

from tiny_model import write_tickets
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.cli import main

REPO = Path(__file__).resolve().parents[1]
UNTRUSTED = "<script>alert('owned')</script> & \"quotes\""


def job_manifest(model: Path, dataset: Path) -> dict:
    return {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny-report"},
        "spec": {
            "baseModel": {"uri": f"file://{model}"},
            "dataset": {"uri": str(dataset), "holdOutFraction": 0.2, "seed": 3},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "training": {"epochs": 2, "learningRate": 5e-3, "microBatchSize": 4, "precision": "fp32",
                         "earlyStopping": {"enabled": True, "evalEverySteps": 2, "patience": 50}},
            "output": {"previewExamples": 2},
            "evaluation": {"maxNewTokens": 8, "bootstrap": {"samples": 200, "confidence": 0.9}},
        },
    }


@pytest.fixture(scope="module")
def local_run(tiny_model_dir, tmp_path_factory):
    """`tuneloop run FILE --local` once for this module, on tickets whose every message holds a <script>:
    (work folder, job folder, the finished process)."""
    folder = tmp_path_factory.mktemp("report")
    dataset = write_tickets(folder / "tickets.jsonl", rows=40, seed=1)
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    for row in rows:
        row["instruction"] = f"{row['instruction']} {UNTRUSTED}"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = folder / "job.yaml"
    manifest.write_text(yaml.safe_dump(job_manifest(tiny_model_dir, dataset)))
    workdir = folder / "work"
    process = subprocess.run([sys.executable, "-m", "tuneloop.cli", "run", str(manifest), "--local",
                              "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert process.returncode in (0, 1), process.stdout[-3000:] + process.stderr[-3000:]
    (job_dir,) = (workdir / "tiny-report").iterdir()
    return workdir, job_dir, process


def test_a_local_run_writes_its_report_and_prints_the_path(local_run):
    _, job_dir, process = local_run
    printed = re.search(r"^  report +(\S+)$", process.stdout, re.MULTILINE)
    assert printed, process.stdout[-3000:] + process.stderr[-3000:]
    assert Path(printed.group(1)) == job_dir / "report.html"
    assert (job_dir / "report.html").is_file()


def test_the_report_shows_the_gates_verdict_and_every_metric_with_its_interval(local_run):
    _, job_dir, _ = local_run
    status = FineTuneJobStatus.model_validate_json((job_dir / "status.json").read_text())
    page = (job_dir / "report.html").read_text()

    verdict = "PASSED" if status.evaluation.gate.passed else "FAILED"
    assert re.search(rf'<span class="verdict {verdict.lower()}" id="verdict">{verdict}</span>', page)
    assert unescape(status.evaluation.gate.message) in unescape(page)
    assert "90% bootstrap intervals" in page  # the spec's confidence level
    hold_out = status.evaluation.hold_out
    assert hold_out.candidate, "the run measured no metric"
    for metric, candidate in hold_out.candidate.items():
        row = re.search(rf'<tr[^>]*data-metric="{metric}">(.*?)</tr>', page)
        assert row, metric
        baseline, difference = hold_out.baseline[metric], hold_out.difference[metric]
        assert f"{candidate.value:.3f} [{candidate.low:.3f}, {candidate.high:.3f}]" in row.group(1)
        assert f"{baseline.value:.3f} [{baseline.low:.3f}, {baseline.high:.3f}]" in row.group(1)
        assert f"{difference.value:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]" in row.group(1)
    assert status.dataset.sha256 in page and status.registry.uri in page


def test_the_loss_chart_draws_train_and_validation_loss_from_the_mlflow_run(local_run):
    _, job_dir, _ = local_run
    page = (job_dir / "report.html").read_text()
    chart = re.search(r'<figure id="loss-chart">(.*?)</figure>', page, re.DOTALL)
    assert chart and "<svg" in chart.group(1)
    assert 'id="loss-train"' in chart.group(1) and 'id="loss-validation"' in chart.group(1)
    counts = re.search(r"(\d+) train points, (\d+) validation points; MLflow run", chart.group(1))
    status = FineTuneJobStatus.model_validate_json((job_dir / "status.json").read_text())
    # the trainer logs the train loss every step, the hold-out loss before, every 2 steps and after
    assert counts and int(counts.group(1)) == status.training.steps and int(counts.group(2)) >= 3, counts


def test_untrusted_text_is_shown_escaped_and_nothing_is_fetched(local_run):
    _, job_dir, _ = local_run
    page = (job_dir / "report.html").read_text()
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*[\"']?(https?:)?//|@import", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    status = FineTuneJobStatus.model_validate_json((job_dir / "status.json").read_text())
    assert len(re.findall(r'<div class="example">', page)) == min(8, status.evaluation.hold_out.examples)


def test_tuneloop_report_rebuilds_a_missing_report_and_prints_its_path(local_run, capsys):
    workdir, job_dir, _ = local_run
    (job_dir / "report.html").unlink()

    assert main(["report", "tiny-report", "--workdir", str(workdir)]) == 0

    assert capsys.readouterr().out.strip() == str(job_dir / "report.html")
    page = (job_dir / "report.html").read_text()
    assert 'id="loss-train"' in page and 'id="verdict"' in page
    assert main(["report", str(job_dir)]) == 0  # a job folder's path works from anywhere
    assert capsys.readouterr().out.strip() == str(job_dir / "report.html")


def test_tuneloop_report_names_the_runs_it_knows_when_the_run_is_unknown(local_run, capsys):
    workdir, job_dir, _ = local_run

    assert main(["report", "no-such-job", "--workdir", str(workdir)]) != 0

    error = capsys.readouterr().err
    assert "no-such-job" in error and f"tiny-report/{job_dir.name}" in error


def test_tuneloop_report_open_hands_the_file_to_the_browser(local_run, tmp_path):
    workdir, job_dir, _ = local_run
    browser = tmp_path / "browser"
    browser.write_text('#!/bin/sh\necho "browser opened $1"\n')
    browser.chmod(0o755)

    process = subprocess.run([sys.executable, "-m", "tuneloop.cli", "report", "--open", "--workdir", str(workdir)],
                             cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "BROWSER": str(browser)})

    assert process.returncode == 0, process.stderr
    assert f"browser opened {(job_dir / 'report.html').as_uri()}" in process.stdout


def test_the_current_loss_metric_names_win_and_the_old_ones_still_read(local_run):
    from mlflow.entities import Metric

    from tuneloop.registry.connection import client
    from tuneloop.registry.run_report import loss_series

    workdir, _, _ = local_run
    tracking_uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    mlflow = client(tracking_uri)
    run_id = mlflow.create_run(mlflow.get_experiment_by_name("tuneloop").experiment_id).info.run_id
    mlflow.log_batch(run_id, metrics=[Metric("loss", 9.0, 1, step) for step in (1, 2, 3)]
                     + [Metric("hold_out_loss", 9.0, 1, 0)]
                     + [Metric("loss/train", value, 1, step) for step, value in ((1, 3.0), (2, 2.0), (3, 1.5))]
                     + [Metric("loss/validation", value, 1, step) for step, value in ((2, 2.5), (3, 2.0))])

    older = mlflow.create_run(mlflow.get_experiment_by_name("tuneloop").experiment_id).info.run_id
    mlflow.log_batch(older, metrics=[Metric("loss", 4.0, 1, 1), Metric("hold_out_loss", 5.0, 1, 0)])

    loss = loss_series(run_id, tracking_uri)

    assert loss.train == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert loss.validation == [(2, 2.5), (3, 2.0)]
    assert (loss_series(older, tracking_uri).train, loss_series(older, tracking_uri).validation) == (
        [(1, 4.0)], [(0, 5.0)])  # a run logged before the names changed


def test_a_cluster_job_is_reported_from_its_status_and_mlflow_run(local_run):
    from tuneloop.api.finetunejob import parse_manifest
    from tuneloop.registry.run_report import collect, report_from_status
    from tuneloop.report import render_html

    workdir, job_dir, _ = local_run
    job = parse_manifest(json.loads((job_dir / "job.json").read_text()))
    status = FineTuneJobStatus.model_validate_json((job_dir / "status.json").read_text())

    report = report_from_status(job, status, f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")

    local = collect(job_dir)
    assert report.examples and report.examples == local.examples  # the records the evaluator logged to MLflow
    assert report.loss.train == local.loss.train and len(report.loss.train) == status.training.steps
    assert report.evaluation.confidence == 0.9 and report.gate == status.evaluation.gate
    assert 'id="loss-validation"' in render_html(report)


def test_without_its_mlflow_the_report_still_draws_the_hold_out_loss(local_run, tmp_path):
    from tuneloop.registry.run_report import collect
    from tuneloop.report import render_html

    _, job_dir, _ = local_run
    status = FineTuneJobStatus.model_validate_json((job_dir / "status.json").read_text())

    report = collect(job_dir, tracking_uri=f"sqlite:///{tmp_path / 'gone.db'}")

    assert report.loss.train == []
    assert report.loss.validation[0] == (0, status.training.hold_out_loss_before)
    training = status.training  # after training the output is the best checkpoint (early stopping is on)
    assert (training.best_step or training.steps, training.hold_out_loss_after) in report.loss.validation
    assert len(report.loss.validation) >= 3  # and the evaluations in between, every 2 steps
    page = render_html(report)
    assert 'id="loss-validation"' in page and 'id="loss-train"' not in page
    assert "no MLflow run to read the train loss from" in page
    assert not (tmp_path / "gone.db").exists()  # an absent store is not created


def test_an_exact_answer_is_marked_and_a_failed_gate_is_red():
    from tuneloop.api.evaluation import GateResult
    from tuneloop.report import ExampleRow, RunReport, render_html

    reference = '{"acct":"OV-63707","pri":"P3"}'
    report = RunReport(job_name="acme", namespace="ml", phase="Succeeded",
                       gate=GateResult(passed=False, message="gate failed", checks=["FAILED: exactMatch"]),
                       examples=[ExampleRow(prompt="p", reference=reference, base="nonsense", tuned=reference,
                                            base_scores={"exactMatch": 0.0}, tuned_scores={"exactMatch": 1.0})])

    page = render_html(report)

    assert '<span class="verdict failed" id="verdict">FAILED</span>' in page
    answers = re.findall(r"<div><strong>(expected|base|tuned)</strong>( <span class=\"exact\">)?", page)
    assert answers == [("expected", ""), ("base", ""), ("tuned", ' <span class="exact">')]
