"""The HTML run report: a real local run (tiny random Llama, SQLite MLflow) through `tuneloop run --local`,
its report.html, and `tuneloop report`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html import escape, unescape
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
            "dataset": {"uri": str(dataset), "testFraction": 0.2, "seed": 3},
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


def test_a_local_run_reports_its_cost_without_queue_gpus_or_mfu(local_run):
    _, job_dir, process = local_run
    cost = process.stdout.split("\n  cost\n", 1)[1]
    assert "MFU: n/a on a CPU" in cost and "    queue " not in cost and "    money " not in cost
    stages = re.findall(r"^    (validate|train|evaluate|register) +0 +0s +\S+ +0\.000 +0\.000 +0$", cost, re.MULTILINE)
    assert stages == ["validate", "train", "evaluate", "register"]
    page = (job_dir / "report.html").read_text()
    assert '<table id="cost-stages">' in page and "MFU: n/a on a CPU" in page


def test_the_report_shows_the_gates_verdict_and_every_metric_with_its_interval(local_run):
    _, job_dir, _ = local_run
    status = FineTuneJobStatus.model_validate_json((job_dir / "status.json").read_text())
    page = (job_dir / "report.html").read_text()

    verdict = "PASSED" if status.evaluation.gate.passed else "FAILED"
    assert re.search(rf'<span class="verdict {verdict.lower()}" id="verdict">{verdict}</span>', page)
    assert unescape(status.evaluation.gate.message) in unescape(page)
    assert "90% bootstrap intervals" in page  # the spec's confidence level
    test = status.evaluation.test
    assert test.candidate, "the run measured no metric"
    table = re.search(r'<table class="metrics" data-set="test">(.*?)</table>', page, re.DOTALL)
    assert table, "no table of the test set's metrics"
    for metric, candidate in test.candidate.items():
        row = re.search(rf'<tr[^>]*data-metric="{metric}">(.*?)</tr>', table.group(1))
        assert row, metric
        baseline, difference = test.baseline[metric], test.difference[metric]
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
    # the trainer logs the train loss every step, the validation loss before, every 2 steps and after
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
    assert len(re.findall(r'<div class="example">', page)) == min(8, status.evaluation.test.examples)


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


def test_without_its_mlflow_the_report_still_draws_the_validation_loss(local_run, tmp_path):
    from tuneloop.registry.run_report import collect
    from tuneloop.report import render_html

    _, job_dir, _ = local_run
    status = FineTuneJobStatus.model_validate_json((job_dir / "status.json").read_text())

    report = collect(job_dir, tracking_uri=f"sqlite:///{tmp_path / 'gone.db'}")

    assert report.loss.train == []
    assert report.loss.validation[0] == (0, status.training.validation_loss_before)
    training = status.training  # after training the output is the best checkpoint (early stopping is on)
    assert (training.best_step or training.steps, training.validation_loss_after) in report.loss.validation
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


# --- what the evaluation found, in all three reports (no run needed: a status and a records file) ---

CONTAMINATION_FINDINGS = [f"train line {12 + n} ~ test line {40 + n} (0.9{n})" for n in range(4)]
TOO_SMALL = "exactMatch improvement on test: 30 rows can detect +0.210 at 80% power, not the +0.100 asked"
JUDGE_NOTE = "self-agreement 0.50 below judge.minAgreement 0.60"


def gate_test(check: str, evaluated_set: str, kind: str, estimate: tuple[float, float, float], p: float,
              passed: bool):
    from tuneloop.api.evaluation import GateTest, Score

    value, low, high = estimate
    return GateTest(check=check, metric="exactMatch", set=evaluated_set, kind=kind, method="exact McNemar",
                    estimate=Score(value=value, low=low, high=high), threshold=0.0 if kind == "improvement" else -0.05,
                    n=30 if evaluated_set == "test" else 12, p_value=p, p_holm=min(1.0, 2 * p), passed=passed,
                    detectable_effect=0.21 if kind == "improvement" else None)


def regressed_records(path: Path, regressed: int) -> Path:
    """The evaluator's records: 3 test rows, and regression-set rows of which `regressed` are marked regressed."""
    def record(evaluated_set: str, index: int, candidate: str, champion: str, **extra) -> dict:
        prompt = [{"role": "system", "content": "be terse"},
                  {"role": "user", "content": f"{evaluated_set} ticket {index} {UNTRUSTED}"}]
        return {"set": evaluated_set, "index": index, "line": index + 1, "prompt": prompt,
                "reference": f"P{index}", "candidate": {"answer": candidate, "scores": {"exactMatch": 0.0}},
                "baseline": {"answer": champion, "scores": {"exactMatch": 1.0}}, **extra}

    rows = [record("test", index, f"P{index}", "no idea") for index in range(3)]
    rows += [record("regression", index, f"wrong {index} <b>bold</b>", f"P{index}", regressed=True)
             for index in range(regressed)]
    rows += [record("regression", regressed + index, f"P{regressed + index}", f"P{regressed + index}")
             for index in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def gate_tests() -> list:
    """The evaluator's tests: the improvement on test passed, the regression set's non-inferiority failed."""
    return [gate_test("exactMatch improvement on test", "test", "improvement", (0.5, 0.2, 0.7), 0.0005, True),
            gate_test("exactMatch non-inferiority on regression", "regression", "nonInferiority",
                      (-0.4, -0.6, -0.2), 0.4, False)]


def found_status(records: Path, regressed: int) -> FineTuneJobStatus:
    """A finished job whose gate failed on the regression set, with contamination, an untrusted judge and
    a warning that the test set is too small."""
    from stage_results import played_job

    from tuneloop.api.evaluation import Comparison, EvaluationResults, JudgeStats, Score
    from tuneloop.api.finetunejob import ContaminationStats
    from tuneloop.reconcile.gate import decide

    status = played_job()
    regression = Comparison(examples=regressed + 4, candidate={"exactMatch": Score(value=0.3, low=0.1, high=0.5)},
                            baseline={"exactMatch": Score(value=0.7, low=0.5, high=0.9)},
                            difference={"exactMatch": Score(value=-0.4, low=-0.6, high=-0.2)})
    judge = JudgeStats(configured=True, model="smollm2-135m", judged=40, unparseable=3, malformed=2, refusals=1,
                       wins=5, ties=3, losses=2, repeated=8, self_agreement=0.5, position_flips=0.3,
                       trusted=False, note=JUDGE_NOTE)
    evaluation = EvaluationResults.model_validate(status.evaluation.model_dump() | {
        "regression": regression, "regressed_rows": regressed, "judge": judge, "records_uri": records.as_uri(),
        "baseline": "champion", "baseline_version": "2", "gate": decide(gate_tests(), [TOO_SMALL])})
    dataset = status.dataset.model_copy(update={"contamination": ContaminationStats(
        threshold=0.8, test_rows=30, regression_rows=12, contaminated=4, removed=4, examples=CONTAMINATION_FINDINGS)})
    return status.model_copy(update={"evaluation": evaluation, "dataset": dataset})


@pytest.fixture
def found(tmp_path):
    """A job folder holding that status and its records: (job folder, status)."""
    records = regressed_records(tmp_path / "records.jsonl", regressed=7)
    status = found_status(records, regressed=7)
    job_dir = tmp_path / "acme-tickets" / "0123abcd"
    job_dir.mkdir(parents=True)
    (job_dir / "status.json").write_text(status.model_dump_json(by_alias=True), encoding="utf-8")
    return job_dir, status


def test_the_page_names_the_deciding_test_and_shows_the_warnings(found):
    from tuneloop.registry.run_report import collect
    from tuneloop.report import render_html

    job_dir, status = found
    page = render_html(collect(job_dir))

    passed, failed = gate_tests()
    deciding = re.search(r'<li class="check-failed deciding" id="deciding">(.*?)</li>', page)
    assert deciding and unescape(deciding.group(1)).endswith(f"FAILED: {failed.line()}")
    assert "p=0.4000 (Holm 0.8000)" in deciding.group(1)  # the test's p-value and Holm's
    assert len(re.findall(r"<li class=\"check-", page)) == 2 and page.count('id="deciding"') == 1
    assert f'<li class="check-passed">ok: {escape(passed.line())}</li>' in page
    assert "detectable +0.210" in page
    assert f'<p class="warning">Warning: {escape(TOO_SMALL)}</p>' in page


def test_the_page_lists_every_regressed_row_escaped(found):
    from tuneloop.registry.run_report import collect
    from tuneloop.report import render_html

    job_dir, _ = found
    page = render_html(collect(job_dir))

    table = re.search(r'<table class="regressed" id="regressed">(.*?)</table>', page, re.DOTALL)
    assert table, "no table of regressed rows"
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td>(.*?)</tr>", table.group(1), re.DOTALL)
    assert [int(number) for number, _ in rows] == list(range(1, 8))
    cells = re.findall(r"<pre>(.*?)</pre>", rows[6][1], re.DOTALL)
    assert cells == ["regression ticket 6 &lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;",
                     "P6", "P6", "wrong 6 &lt;b&gt;bold&lt;/b&gt;"]
    assert "<script" not in page and "<b>" not in page
    assert "7 of 11 rows regressed" in page
    assert len(re.findall(r'<div class="example">', page)) == 3  # the test rows, not the regression set's


def test_the_page_shows_the_splits_contamination_and_why_the_judge_is_not_trusted(found):
    from tuneloop.registry.run_report import collect
    from tuneloop.report import render_html

    job_dir, _ = found
    page = render_html(collect(job_dir))

    assert "300 rows (alpaca): 270 train, 30 validation, 30 test" in page
    contamination = re.search(r'<dd id="contamination">(.*?)</dd>', page, re.DOTALL)
    assert contamination and "4 training rows near the 30 test and 12 regression-set rows" in contamination.group(1)
    assert "all removed from training" in contamination.group(1)
    assert [finding in contamination.group(1) for finding in CONTAMINATION_FINDINGS] == [True, True, True, False]
    judge = re.search(r'<p id="judge">(.*?)</p>', page)
    assert judge and "self-agreement 0.50 over 8 repeats, position flips 0.30" in judge.group(1)
    assert "NOT trusted" in judge.group(1) and "malformed 2, refusals 1" in judge.group(1)
    assert re.search(rf'<p class="warning" id="judge-distrust">the gate does not rely on judgeScore and '
                     rf'judgeWinRate: {JUDGE_NOTE}</p>', page)


def test_the_terminal_shows_five_regressed_rows_the_deciding_test_and_the_warnings(found, capsys):
    from tuneloop.api.finetunejob import parse_manifest
    from tuneloop.cli.terminal_report import print_evaluation, print_report

    _, status = found
    job = parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                          "metadata": {"name": "acme-tickets"},
                          "spec": {"baseModel": {"name": "smollm2-135m-instruct"},
                                   "dataset": {"uri": "data/tickets.jsonl"}}})

    print_report(job, status, [])
    print_evaluation(job, status)

    out = capsys.readouterr().out
    words = " ".join(out.split())  # long lines are wrapped
    passed, failed = gate_tests()
    assert "  data       300 rows (alpaca): 270 train, 30 validation, 30 test;" in out
    assert "contamination: 4 training rows near the 30 test and 12 regression-set rows" in words
    assert sum(finding in out for finding in CONTAMINATION_FINDINGS) == 3
    assert f"\n    deciding > FAILED: {failed.line()}\n" in out and f"\n    ok: {passed.line()}\n" in out
    assert "p=0.4000 (Holm 0.8000)" in out
    assert f"WARNING: {TOO_SMALL}" in words
    assert "NOT trusted" in words and f"the gate does not rely on judgeScore and judgeWinRate: {JUDGE_NOTE}" in words
    assert "regression set 11 of the champion's test rows: exactMatch 0.300 [0.100, 0.500] vs champion" in words
    shown = re.findall(r"^    (\d)\. prompt    regression ticket (\d) <script>", out, re.MULTILINE)
    assert shown == [(str(n + 1), str(n)) for n in range(5)]
    assert "       candidate wrong 4 <b>bold</b>" in out
    assert "    and 2 more in the report" in out


def test_the_mlflow_description_carries_the_same_findings(found):
    from tuneloop.api.workloads import RegisterResult
    from tuneloop.registry.description import MAX_DESCRIPTION, run_description
    from tuneloop.registry.run_report import local_records_path, read_records

    _, status = found
    regressed = read_records(local_records_path(status.evaluation.records_uri)).regressed
    registered = RegisterResult(succeeded=True, model_name="acme-tickets", version="3",
                                uri="models:/acme-tickets/3", aliases=["challenger"])

    description = run_description("team-a/acme-tickets", status, {}, registered, regressed)

    assert len(description) <= MAX_DESCRIPTION and "(cut)" not in description
    assert description.startswith("**Gate FAILED** · exactMatch 0.600 vs champion 0.100")
    assert "300 rows (alpaca): 270 train, 30 validation, 30 test" in description
    assert "Contamination: 4 training rows near the 30 test and 12 regression-set rows" in description
    assert sum(finding in description for finding in CONTAMINATION_FINDINGS) == 3
    passed, failed = gate_tests()
    assert f"\n- **deciding:** FAILED: {failed.line()}\n" in description
    assert f"\n- ok: {passed.line()}\n" in description
    assert f"- **Warning:** {TOO_SMALL}" in description
    assert "Regression set (11 of the champion's test rows, non-inferiority): 7 of 11 rows regressed" in description
    assert "## What regressed (7 rows)" in description
    assert re.findall(r"^(\d)\. prompt    regression ticket \d", description, re.MULTILINE) == list("12345")
    assert "and 2 more in the report" in description
    assert f"**Warning:** the gate does not rely on judgeScore and judgeWinRate: {JUDGE_NOTE}" in description


# --- what the run cost, in all three reports (the status as the reconciler keeps it, built by hand) ---

COST_SUMMARY = "8.35 GPU-h held, 7.62 used; queued 5m02s, ran 1h07m; 0.167 GPU-h per exactMatch point; 29.23 USD"


def gpu_cost() -> dict:
    """A run on a shared H200 node: queued, preempted once while training, priced at 3.50 USD a GPU-hour."""
    from tuneloop.api.finetunejob import CostStatus, ImprovementCost, QueueStatus, StageCost

    cost = CostStatus(
        stages=[StageCost(stage="validate", queued_seconds=12, running_seconds=35, state="Done"),
                StageCost(stage="train", gpus=8, queued_seconds=250, running_seconds=3720,
                          gpu_seconds_requested=29760, gpu_seconds_used=27200, interruptions=1, state="Done"),
                StageCost(stage="evaluate", gpus=1, queued_seconds=40, running_seconds=300,
                          gpu_seconds_requested=300, gpu_seconds_used=240, state="Done")],
        queued_seconds=302, running_seconds=4055, gpu_hours_requested=8.35, gpu_hours_used=7.62,
        tokens_per_second=15200, mfu=0.412, achieved_tflops=3260, cost_per_gpu_hour=3.5, currency="USD", cost=29.23,
        improvement=ImprovementCost(metric="exactMatch", points=50.0, gpu_hours_per_point=0.167,
                                    running_hours_per_point=0.0225, cost_per_point=0.59),
        summary=COST_SUMMARY)
    queue = QueueStatus(name="team-a-gpus", state="Admitted", since="2026-12-03T10:00:00Z", admissions=3,
                        preemptions=1)
    return {"cost": cost, "queue": queue}


def cpu_cost() -> dict:
    """A local run: no queue, no GPUs, no price."""
    from tuneloop.api.finetunejob import CostStatus, ImprovementCost, StageCost

    return {"cost": CostStatus(
        stages=[StageCost(stage="train", running_seconds=250, state="Done"),
                StageCost(stage="evaluate", running_seconds=60, state="Done")],
        running_seconds=310, tokens_per_second=240, achieved_tflops=0.0123,
        improvement=ImprovementCost(metric="exactMatch", points=50.0, running_hours_per_point=0.0017),
        summary="no GPU; queued 0s, ran 5m10s; 6s per exactMatch point"), "queue": None}


def cluster_job():
    from tuneloop.api.finetunejob import parse_manifest

    return parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                           "metadata": {"name": "acme-tickets"},
                           "spec": {"baseModel": {"name": "smollm2-135m-instruct"},
                                    "dataset": {"uri": "data/tickets.jsonl"}}})


def test_the_terminal_shows_the_cost_per_stage_the_money_the_mfu_and_the_price_of_a_point(found, capsys):
    from tuneloop.cli.terminal_report import print_evaluation

    _, status = found
    print_evaluation(cluster_job(), status.model_copy(update=gpu_cost()))

    out = capsys.readouterr().out
    cost = out[out.index("\n  cost\n"):]
    assert f"    total      {COST_SUMMARY}\n" in cost
    assert "    money      29.23 USD (3.50 USD per GPU-hour x 8.35 GPU-h held)\n" in cost
    assert "    efficiency 15,200 tokens/s, 3,260 TFLOPS achieved, MFU 41.2%\n" in cost
    assert "    per point  +50.0 exactMatch points: 0.167 GPU-h, 1m21s running, 0.59 USD per point\n" in cost
    assert "    queue      team-a-gpus: admitted 3 times, preempted once\n" in cost
    table = re.findall(r"^    (validate|train|evaluate) +(\d+) +(\S+) +(\S+) +(\S+) +(\S+) +(\d+)$", cost, re.MULTILINE)
    assert table == [("validate", "0", "12s", "35s", "0.000", "0.000", "0"),
                     ("train", "8", "4m10s", "1h02m", "8.267", "7.556", "1"),
                     ("evaluate", "1", "40s", "5m00s", "0.083", "0.067", "0")]


def test_a_cpu_run_says_mfu_does_not_apply_and_names_no_price(found, capsys):
    from tuneloop.cli.terminal_report import print_evaluation

    _, status = found
    print_evaluation(cluster_job(), status.model_copy(update=cpu_cost()))

    cost = capsys.readouterr().out.split("\n  cost\n")[1]
    assert "    efficiency 240 tokens/s, 0.0123 TFLOPS achieved, MFU: n/a on a CPU\n" in cost
    assert "    per point  +50.0 exactMatch points: 6s running per point\n" in cost
    assert "    money " not in cost and "    queue " not in cost


def test_a_queued_job_shows_why_kueue_has_not_admitted_it(capsys):
    from tuneloop.api.finetunejob import QueueStatus
    from tuneloop.cli.terminal_report import print_evaluation

    message = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h200"
    waiting = FineTuneJobStatus(phase="Queued", stage="train", queue=QueueStatus(
        name="team-a-gpus", state="Queued", since="2026-12-03T10:00:00Z", reason="Pending", message=message,
        admissions=1, preemptions=1))

    print_evaluation(cluster_job(), waiting)

    words = " ".join(capsys.readouterr().out.split())
    assert (f"queue team-a-gpus: admitted once, preempted once; waiting since 2026-12-03T10:00:00Z "
            f"(Pending: {message})") in words


def test_the_page_has_a_cost_section_with_the_stage_table(found):
    from tuneloop.registry.run_report import collect
    from tuneloop.report import render_html

    job_dir, status = found
    (job_dir / "status.json").write_text(status.model_copy(update=gpu_cost()).model_dump_json(by_alias=True),
                                         encoding="utf-8")
    page = render_html(collect(job_dir))

    facts = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", re.search(r'<dl id="cost">(.*?)</dl>', page,
                                                                        re.DOTALL).group(1)))
    assert unescape(facts["total"]) == COST_SUMMARY
    assert unescape(facts["queue"]) == "team-a-gpus: admitted 3 times, preempted once"
    assert "MFU 41.2%" in facts["efficiency"] and facts["money"].startswith("29.23 USD")
    table = re.search(r'<table id="cost-stages">(.*?)</table>', page, re.DOTALL).group(1)
    rows = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    assert rows[0] == ["stage", "GPUs", "queued", "running", "GPU-h held", "GPU-h used", "interrupted"]
    assert rows[2] == ["train", "8", "4m10s", "1h02m", "8.267", "7.556", "1"]


def test_the_mlflow_description_has_the_cost_section(found):
    from tuneloop.api.workloads import RegisterResult
    from tuneloop.registry.description import run_description

    _, status = found
    registered = RegisterResult(succeeded=True, model_name="acme-tickets", version="3",
                                uri="models:/acme-tickets/3", aliases=["challenger"])

    description = run_description("team-a/acme-tickets", status.model_copy(update=gpu_cost()), {}, registered)

    cost = description.split("## Cost\n", 1)[1]
    assert f"- total: {COST_SUMMARY}\n" in cost
    assert "- per point: +50.0 exactMatch points: 0.167 GPU-h, 1m21s running, 0.59 USD per point\n" in cost
    assert re.search(r"^train +8 +4m10s +1h02m +8\.267 +7\.556 +1$", cost, re.MULTILINE)
    unpriced = status.model_copy(update={"cost": None, "queue": None})
    assert "## Cost" not in run_description("team-a/acme-tickets", unpriced, {}, registered)


def augmented_and_exported(status: FineTuneJobStatus) -> FineTuneJobStatus:
    """The status with synthetic rows and exports, as the augment, export and register stages leave it."""
    from tuneloop.api.augmentation import AugmentationStats
    from tuneloop.api.export import ExportedFile, ExportResults, GgufAgreement

    augmentation = AugmentationStats(wanted=30, requests=60, accepted=19,
                                     rejected={"lost-facts": 34, "duplicate": 6, "failed-request": 1},
                                     teacher="smollm2-135m-instruct @ http://127.0.0.1:8766/v1")
    augmentation.summary = augmentation.describe()
    export = ExportResults(files=[
        ExportedFile(kind="merged", uri="file:///w/export/merged", sha256="ab" * 32, bytes=542_000_000),
        ExportedFile(kind="gguf", uri="file:///w/export/acme-q8_0.gguf", sha256="cd" * 32, bytes=145_000_000,
                     gguf_type="q8_0")],
        agreement=GgufAgreement(rows=30, same_answers=1.0, token_agreement=1.0, expected=0.95, passed=True))
    export.summary = export.describe()
    registry = status.registry.model_copy(update={"exports": {"gguf": "runs:/r1/export/acme-q8_0.gguf",
                                                              "merged": "runs:/r1/export/merged"}})
    dataset = status.dataset.model_copy(update={"synthetic_rows": 19})
    return status.model_copy(update={"augmentation": augmentation, "export": export, "registry": registry,
                                     "dataset": dataset})


def test_synthetic_rows_and_exports_reach_the_terminal_the_page_and_mlflow(found, capsys):
    from tuneloop.api.finetunejob import parse_manifest
    from tuneloop.api.workloads import RegisterResult
    from tuneloop.cli.terminal_report import print_evaluation, print_report
    from tuneloop.registry.description import run_description
    from tuneloop.registry.run_report import collect
    from tuneloop.report import render_html

    job_dir, status = found
    status = augmented_and_exported(status)
    (job_dir / "status.json").write_text(status.model_dump_json(by_alias=True), encoding="utf-8")
    job = parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                          "metadata": {"name": "acme-tickets"},
                          "spec": {"baseModel": {"name": "smollm2-135m-instruct"},
                                   "dataset": {"uri": "data/tickets.jsonl"}}})
    kept = "19 of 30 synthetic rows kept from 60 teacher requests (rejected: 6 duplicate, 1 failed-request, 34 lost-facts)"

    print_report(job, status, [])
    print_evaluation(job, status)
    words = " ".join(capsys.readouterr().out.split())
    assert "270 train + 19 synthetic, 30 validation, 30 test" in words
    assert f"augment {kept}" in words
    assert "export merged 542 MB; gguf q8_0 145 MB; GGUF vs merged on 30 test rows: 100.0% of answer tokens" in words
    assert "gguf q8_0: 145 MB, sha256 cdcdcdcdcdcdcdcd, file:///w/export/acme-q8_0.gguf" in words
    assert "with gguf: runs:/r1/export/acme-q8_0.gguf" in words

    page = unescape(render_html(collect(job_dir)))
    assert kept in page and "gguf q8_0 145 MB" in page and "runs:/r1/export/merged" in page

    registered = RegisterResult(succeeded=True, model_name="acme-tickets", version="3", uri="models:/acme-tickets/3",
                                exports=status.export.files[1:])
    description = run_description("team-a/acme-tickets", status, {}, registered)
    assert f"Synthetic rows: {kept}" in description
    assert f"- gguf q8_0: 145 MB, sha256 `{'cd' * 32}`, `file:///w/export/acme-q8_0.gguf`" in description
    assert "- merged: 542 MB" in description and "not registered" in description
