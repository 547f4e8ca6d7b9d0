"""The README's main command on the real model: SmolLM2-135M-Instruct learns the bundled example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.example
def test_readme_example_fine_tunes_smollm2_and_hold_out_loss_falls(tmp_path):
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
    assert report.count("hold-out example") == 3
    assert "expected" in report and "base" in report and "tuned" in report
    adapter = Path(training["adapterUri"].removeprefix("file://"))
    assert (adapter / "adapter_model.safetensors").is_file()
