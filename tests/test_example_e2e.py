"""The README's main command on the real model: SmolLM2-135M-Instruct learns the bundled example,
beats the base model on the hold-out set beyond the noise, and is registered in MLflow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.example
def test_readme_example_fine_tunes_evaluates_and_registers_smollm2(tmp_path):
    workdir = tmp_path / "work"
    process = subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", "run", "examples/finetunejob.yaml", "--local", "--workdir", str(workdir)],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]

    (status_file,) = workdir.glob("acme-tickets/*/status.json")
    status = json.loads(status_file.read_text())
    assert status["phase"] == "Succeeded"
    training = status["training"]
    # The base model has never seen the ticket format; after two epochs it should be close to certain of it.
    assert training["holdOutLossAfter"] < 0.25 * training["holdOutLossBefore"]
    assert status["dataset"]["rows"] == 300 and status["dataset"]["holdOutRows"] == 30

    report = process.stdout
    assert "FineTuneJob acme-tickets: Succeeded" in report
    assert len(re.findall(r"^  hold-out example \d+$", report, re.MULTILINE)) == 3
    assert "expected" in report and "base" in report and "tuned" in report
    adapter = Path(training["adapterUri"].removeprefix("file://"))
    assert (adapter / "adapter_model.safetensors").is_file()

    # The tuned model beats the base model by a margin outside the confidence interval.
    evaluation = status["evaluation"]
    assert evaluation["baseline"] == "base" and evaluation["holdOut"]["examples"] == 30
    for metric in ("exactMatch", "rougeL", "fieldAccuracy"):
        assert evaluation["holdOut"]["difference"][metric]["low"] > 0, (metric, evaluation["holdOut"])
    assert evaluation["gate"]["passed"], evaluation["gate"]["message"]
    gate = next(c for c in status["conditions"] if c["type"] == "GatePassed")
    assert gate["status"] == "True"
    assert "baseline" in report and "candidate" in report and "gate       PASSED" in report

    # Registered as version 1 of the model named after the job, with both aliases, in the work folder's MLflow.
    registry = status["registry"]
    assert (registry["modelName"], registry["version"], registry["uri"]) == ("acme-tickets", "1", "models:/acme-tickets/1")
    assert sorted(registry["aliases"]) == ["challenger", "champion"]
    assert f"registered models:/acme-tickets/1" in report and "mlflow ui --backend-store-uri sqlite:///" in report

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("acme-tickets", "champion")
    assert str(version.version) == "1" and version.tags["tuneloop.dev/gate"] == "passed"  # int from SQLite
    assert version.tags["tuneloop.dev/dataset-sha256"] == status["dataset"]["sha256"]
    run = client.get_run(version.run_id)
    assert "hold_out_loss_final" in run.data.metrics and "eval_exactMatch_candidate" in run.data.metrics
