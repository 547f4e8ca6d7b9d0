"""CUDA-only paths: QLoRA (bitsandbytes 4-bit NF4 base) with paged 8-bit AdamW. Skipped without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_model import build_tiny_model, write_tickets
from tuneloop.api.finetunejob import parse_spec
from tuneloop.api.workloads import TrainerResult, TrainerWorkload

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_qlora_with_paged_8bit_adamw_trains_and_saves_an_adapter(tmp_path):
    pytest.importorskip("bitsandbytes")
    model = build_tiny_model(tmp_path / "model")
    dataset = write_tickets(tmp_path / "data.jsonl", rows=40, seed=2)
    spec = parse_spec({"baseModel": {"uri": f"file://{model}"}, "dataset": {"uri": str(dataset)},
                       "method": {"type": "qlora", "lora": {"r": 4, "alpha": 8}},
                       "training": {"epochs": 2, "learningRate": 3e-3, "microBatchSize": 4,
                                    "optimizer": "paged-adamw-8bit"}})
    workload = TrainerWorkload(job="default/gpu", model_path=str(model), dataset_path=str(dataset),
                               dataset=spec.dataset, method=spec.method, training=spec.training,
                               output_dir=str(tmp_path / "out"), preview_examples=1)
    (tmp_path / "spec.json").write_text(workload.model_dump_json(by_alias=True))
    process = subprocess.run([sys.executable, "-m", "tuneloop_trainer", "--spec", str(tmp_path / "spec.json"),
                              "--result", str(tmp_path / "result.json")], capture_output=True, text=True)
    result = TrainerResult.model_validate_json((tmp_path / "result.json").read_text())
    assert process.returncode == 0, result.message or process.stderr[-2000:]
    assert result.validation_loss_after < result.validation_loss_before
    assert (Path(result.adapter_path) / "adapter_model.safetensors").is_file()
