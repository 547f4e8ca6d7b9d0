"""What a user sees in MLflow after a job: one real training run (tiny model, subprocess trainer), the
evaluation and the registration logged to it in a real SQLite MLflow, read back as the UI reads them."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from stage_results import evaluated, played_job

from tiny_model import write_tickets
from tuneloop.api.finetunejob import parse_manifest
from tuneloop.api.workloads import EvaluatorResult, TrainerResult, TrainerWorkload, Tracking
from tuneloop.reconcile.finetunejob import registration_inputs
from tuneloop.registry.evaluation import RECORDS_FILE, TABLE_FILE, log_evaluation
from tuneloop.registry.experiments import prepare_tracking
from tuneloop.registry.lineage import lineage_tags
from tuneloop.registry.registration import register
from tuneloop.runtime.stage_workloads import register_workload

CATALOG_NAME = "smollm2-135m-instruct"
MANIFEST = {
    "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
    "metadata": {"name": "acme-tickets", "namespace": "team-a", "uid": "uid-7"},
    "spec": {"baseModel": {"name": CATALOG_NAME}, "dataset": {"uri": "data/tickets.jsonl", "testFraction": 0.2},
             "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
             "training": {"epochs": 1, "learningRate": 5e-3, "microBatchSize": 4, "precision": "fp32"},
             "registry": {"modelName": "acme-tickets"}},
}


def evaluation_records(path: Path, examples: int) -> Path:
    """The evaluator's per-example records (evaluate.records): both answers and their scores."""
    rows = [{"set": "test", "index": index, "line": index + 1,
             "prompt": [{"role": "user", "content": f"ticket {index}: printer on fire"}],
             "reference": "hardware", "candidate": {"answer": "hardware", "scores": {"exactMatch": 1.0}},
             "baseline": {"answer": "I am not sure", "scores": {"exactMatch": 0.0}}} for index in range(examples)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def story(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("story")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    prepare_tracking(uri, "tuneloop", (folder / "artifacts").as_uri())
    job = parse_manifest(MANIFEST)
    dataset = write_tickets(folder / "tickets.jsonl", rows=40, seed=1)
    tracking = Tracking(tracking_uri=uri, run_name=job.metadata.name, tags=lineage_tags(job, "uid-7"))
    workload = TrainerWorkload(job="team-a/acme-tickets", model_path=str(tiny_model_dir), dataset_path=str(dataset),
                               dataset=job.spec.dataset, method=job.spec.method, training=job.spec.training,
                               output_dir=str(folder / "out"), preview_examples=0, tracking=tracking)
    (folder / "workload.json").write_text(workload.model_dump_json(by_alias=True), encoding="utf-8")
    process = subprocess.run([sys.executable, "-m", "tuneloop_trainer", "--spec", str(folder / "workload.json"),
                              "--result", str(folder / "result.json")], capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    trained = TrainerResult.model_validate_json((folder / "result.json").read_text())

    for _ in range(2):  # a retried evaluation
        log_evaluation(tracking, trained.mlflow_run_id, EvaluatorResult.model_validate(evaluated()),
                       evaluation_records(folder / RECORDS_FILE, examples=5))
    status = played_job()
    inputs = {**registration_inputs(job.spec, status), "training_run_id": trained.mlflow_run_id,
              "adapter_uri": trained.adapter_path, "records_uri": None}
    registered = register(register_workload(job, inputs, resolve=str, tracking=tracking, job_uid="uid-7",
                                            retry_seconds=5))
    assert registered.succeeded, registered.message
    return MlflowClient(tracking_uri=uri, registry_uri=uri), trained, registered, folder


def test_the_experiment_opens_as_model_training_not_genai(story):
    client, *_ = story
    assert client.get_experiment_by_name("tuneloop").tags["mlflow.experimentKind"] == "custom_model_development"


def test_train_and_validation_loss_are_curves_over_the_same_steps(story):
    client, trained, *_ = story
    train = {m.step for m in client.get_metric_history(trained.mlflow_run_id, "loss/train")}
    validation = {m.step for m in client.get_metric_history(trained.mlflow_run_id, "loss/validation")}
    assert len(train) == trained.steps > 1
    assert len(validation) > 2 and 0 in validation and trained.steps in validation
    assert validation - {0} <= train


def test_metrics_are_headline_numbers_without_interval_bars(story):
    client, trained, *_ = story
    metrics = client.get_run(trained.mlflow_run_id).data.metrics
    assert not [key for key in metrics if key.endswith(("_low", "_high"))]
    assert metrics["score/exactMatch"] == 0.6 and metrics["score/exactMatch_baseline"] == 0.1
    # the UI sorts chart groups by name: the cost and efficiency numbers, then the loss curves
    assert sorted({key.split("/")[0] for key in metrics}) == ["cost", "efficiency", "loss", "score", "significance",
                                                              "train"]
    assert metrics["efficiency/achieved_tflops"] > 0 and "efficiency/mfu" not in metrics  # no MFU on a CPU
    assert metrics["efficiency/tokens_per_second"] == pytest.approx(trained.tokens_per_second)
    assert metrics["significance/exactMatch_improvement_p_holm"] == 0.0005


def test_the_description_tells_the_story(story):
    client, trained, registered, _ = story
    description = client.get_run(trained.mlflow_run_id).data.tags["mlflow.note.content"]
    assert description.startswith("**Gate PASSED** · exactMatch")  # what shows before "Show more"
    assert re.search(r"\nexactMatch +0\.100 \[0\.000, 0\.200\] +0\.600 \[0\.430, 0\.770\] +\+0\.500 \[\+0\.200, \+0\.700\]\n",
                     description)
    assert registered.uri in description and "## Data" in description and "## Training" in description
    assert "sha256 `" + "cd" * 32 + "`" in description  # the job's status, as the data check found it
    assert "300 rows (alpaca): 270 train, 30 validation, 30 test" in description
    assert "validation loss 4.000 → 0.050" in description.split("\n")[0]
    # the gate's only test decided, with its p-value and the smallest effect it could detect
    assert re.search(r"\n- \*\*deciding:\*\* ok: exactMatch improvement on test: \+0\.500 \[\+0\.200, \+0\.700\] .*"
                     r"p=0\.0005.*detectable \+0\.210", description)
    assert "LLM judge: not configured" in description


def test_the_run_holds_the_html_report_with_the_registered_version(story):
    client, trained, registered, folder = story
    page = Path(client.download_artifacts(trained.mlflow_run_id, "report/report.html", str(folder))).read_text()
    assert "PASSED" in page and f"version {registered.version}" in page
    assert page.count("<svg") >= 1 and "validation" in page  # the loss chart, both series
    assert "printer on fire" in page  # an example, from the records the evaluation logged to the run


def test_each_example_is_a_table_row_with_both_answers(story):
    client, trained, _, folder = story
    table = json.loads(Path(client.download_artifacts(trained.mlflow_run_id, TABLE_FILE, str(folder))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(rows) == 5  # a retried evaluation replaces the table (MlflowClient.log_table would append)
    assert {"path": TABLE_FILE, "type": "table"} in json.loads(
        client.get_run(trained.mlflow_run_id).data.tags["mlflow.loggedArtifacts"])
    for row in rows:
        assert (row["baseline answer"], row["tuned answer"]) == ("I am not sure", "hardware")
        assert (row["exactMatch baseline"], row["exactMatch tuned"]) == (0.0, 1.0)
        assert row["prompt"].endswith("printer on fire") and row["reference"] == "hardware"


def test_the_dataset_is_an_input_with_its_sha256(story):
    client, trained, _, folder = story
    (logged,) = client.get_run(trained.mlflow_run_id).inputs.dataset_inputs
    sha256 = hashlib.sha256((folder / "tickets.jsonl").read_bytes()).hexdigest()
    assert logged.dataset.digest == sha256[:36]  # MLflow's digest column holds 36 characters
    assert json.loads(logged.dataset.profile)["sha256"] == sha256
    assert logged.dataset.name == "tickets.jsonl" and "data/tickets.jsonl" in logged.dataset.source


def test_lineage_and_gate_tags_are_on_the_run_and_the_version(story):
    client, trained, registered, _ = story
    run_tags = client.get_run(trained.mlflow_run_id).data.tags
    version_tags = client.get_model_version("acme-tickets", registered.version).tags
    for tags in (run_tags, version_tags):
        assert tags["tuneloop.dev/finetunejob"] == "acme-tickets" and tags["tuneloop.dev/namespace"] == "team-a"
        assert tags["tuneloop.dev/job-uid"] == "uid-7" and tags["tuneloop.dev/base-model"] == CATALOG_NAME
        assert tags["tuneloop.dev/gate"] == "passed" and "ok:" in tags["tuneloop.dev/gate-checks"]
        assert tags["tuneloop.dev/tuneloop-version"]
    assert client.get_model_version("acme-tickets", registered.version).description.startswith("**Gate PASSED**")


def test_the_base_model_parameter_is_the_catalog_name(story):
    client, trained, *_ = story
    assert client.get_run(trained.mlflow_run_id).data.params["base_model"] == CATALOG_NAME
