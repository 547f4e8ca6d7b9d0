"""Training efficiency: model FLOPs per token on the tiny Llama (full and LoRA), the GPU peak lookup, MFU, and
the operator's gpuPeakTflops reaching the trainer's workload."""

from __future__ import annotations

import json

import pytest
import torch

from tuneloop.api.finetunejob import parse_manifest
from tuneloop.config import OperatorConfig
from tuneloop.runtime.manifests import training_objects
from tuneloop_trainer.efficiency import Efficiency, ModelFlops, peak_tflops
from tuneloop_trainer.model import load_model


def spec(method: dict) -> dict:
    return {"baseModel": {"uri": "pvc://models/tiny"}, "dataset": {"uri": "pvc://data/tickets.jsonl"},
            "method": method, "training": {"precision": "fp32"}, "output": {"uri": "pvc://adapters/tiny"}}


def loaded(model_dir, method: dict) -> torch.nn.Module:
    job = parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                          "metadata": {"name": "tiny"}, "spec": spec(method)})
    return load_model(str(model_dir), job.spec.method, job.spec.training)


def test_full_fine_tuning_costs_six_flops_per_weight_per_token(tiny_model_dir):
    model = loaded(tiny_model_dir, {"type": "full"})
    weights = sum(p.numel() for p in model.parameters())  # the tiny model's embedding is tied to its head
    assert ModelFlops.of(model).per_token() == 6 * weights


def test_lora_costs_four_flops_per_frozen_weight_and_six_per_adapter_weight(tiny_model_dir):
    model = loaded(tiny_model_dir, {"type": "lora", "lora": {"r": 4, "alpha": 8}})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert 0 < trainable < frozen
    flops = ModelFlops.of(model)
    assert flops.per_token() == 4 * frozen + 6 * trainable
    # A preference stage also runs the reference model forward over every token.
    assert flops.per_token(reference_forward=True) == flops.per_token() + 2 * (frozen + trainable)


def test_an_untied_input_embedding_is_a_lookup_and_costs_no_flops(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    table = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is not table
    weights = sum(p.numel() for p in model.parameters())
    assert ModelFlops.of(model).per_token() == 6 * (weights - table.numel())


@pytest.mark.parametrize(("device", "peak"), [
    ("NVIDIA H200", 989), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA L40S", 362), ("NVIDIA L4", 121),
    ("NVIDIA L40", None), ("NVIDIA GeForce RTX 4090", None), ("cpu", None),
])
def test_the_peak_is_looked_up_by_the_gpus_name(device, peak):
    assert peak_tflops(device) == peak


def test_mfu_is_achieved_over_the_peak_of_all_devices():
    # 1,000 tokens in 2 s at 6 GFLOPs each: 3 TFLOPS achieved over two L4s (121 each).
    looked_up = Efficiency.of(tokens=1000, seconds=2.0, flops=1000 * 6e9, device="NVIDIA L4", devices=2)
    assert looked_up.tokens_per_second == 500 and looked_up.flops_per_token == 6e9
    assert looked_up.achieved_tflops == pytest.approx(3.0)
    assert looked_up.mfu == pytest.approx(3.0 / (2 * 121))
    configured = Efficiency.of(tokens=1000, seconds=2.0, flops=1000 * 6e9, device="Acme Tensor 9", devices=2,
                               configured_peak=2.0)
    assert (configured.peak_tflops, configured.mfu) == (2.0, pytest.approx(0.75))
    unknown = Efficiency.of(tokens=1000, seconds=2.0, flops=1000 * 6e9, device="Acme Tensor 9", devices=2)
    assert unknown.mfu is None and unknown.achieved_tflops == pytest.approx(3.0)


def test_a_cpu_has_no_mfu_even_with_a_configured_peak():
    on_cpu = Efficiency.of(tokens=1000, seconds=2.0, flops=1000 * 6e9, device="cpu", devices=0, configured_peak=989)
    assert on_cpu.mfu is None and on_cpu.peak_tflops is None
    assert on_cpu.achieved_tflops == pytest.approx(3.0)
    assert on_cpu.metrics() == {"efficiency/tokens_per_second": 500, "efficiency/achieved_tflops": pytest.approx(3.0),
                                "efficiency/mfu": None}


def test_the_operators_gpu_peak_reaches_the_trainer_workload():
    job = parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                          "metadata": {"name": "tiny", "uid": "uid-1"},
                          "spec": {**spec({"type": "lora"}), "resources": {"gpus": 1}}})

    def workload(config: dict) -> dict:
        objects = training_objects(job, "tiny-train", OperatorConfig.model_validate(config))
        (config_map,) = [obj for obj in objects if obj["kind"] == "ConfigMap"]
        return json.loads(config_map["data"]["workload.json"])

    assert workload({"gpuPeakTflops": 700})["gpuPeakTflops"] == 700
    assert "gpuPeakTflops" not in workload({})
