"""How well training used its hardware: model FLOPs per trained token, achieved TFLOPS and MFU (model FLOPs
utilisation: achieved / the devices' peak), for the result, MLflow and the job's cost status.

FLOPs per token follow the usual 6N estimate: a weight costs 2 FLOPs per token forward, 2 for the gradient of
its input and 2 for its own gradient. Full fine-tuning trains every weight: 6 x N. LoRA and QLoRA train only the
adapter: 4 x N_frozen + 6 x N_trainable, since a frozen weight still costs its forward and the backward through
the activations, not its weight gradient (a QLoRA weight is dequantised and multiplied like any other). N counts
the weights that take part in a matrix product: every parameter but an input embedding table not tied to the
output head, which is looked up, not multiplied.

Left out, as in the usual estimate: attention's own products (about 12 x layers x hidden x sequence length per
token), so MFU reads slightly low for long sequences; and recomputation (gradient checkpointing), which MFU by
definition does not count. A preference stage (DPO, KTO) adds the reference model's forward, 2 x N per token;
KTO's KL-term forwards run on tokens the Trainer does not count and are left out too (its MFU reads low)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from tuneloop.registry import metric_names
from tuneloop_trainer.model import causal_lm

# Dense BF16 tensor-core peak TFLOPS of one GPU, by the name torch.cuda.get_device_name() gives, first match wins.
# From NVIDIA's datasheets (H100/H200, A100, L40S, L4), which print the figure with 2:4 sparsity: these are half.
PEAK_BF16_TFLOPS = (
    (re.compile(r"\bH[12]00\b.*\bNVL\b", re.IGNORECASE), 835.0),
    (re.compile(r"\bH100\b.*\bPCIe\b", re.IGNORECASE), 756.0),
    (re.compile(r"\bH[12]00\b", re.IGNORECASE), 989.0),  # SXM
    (re.compile(r"\bA100\b", re.IGNORECASE), 312.0),
    (re.compile(r"\bL40S\b", re.IGNORECASE), 362.0),
    (re.compile(r"\bL4\b", re.IGNORECASE), 121.0),
)


def peak_tflops(device: str, configured: float | None = None) -> float | None:
    """One GPU's peak: the operator's gpuPeakTflops when set, else the table's; None for a CPU or an unknown GPU."""
    if device == "cpu":
        return None
    if configured is not None:
        return configured
    return next((peak for pattern, peak in PEAK_BF16_TFLOPS if pattern.search(device)), None)


def this_device(world_size: int) -> tuple[str, int]:
    """The device's name and how many of them train (one per process, all nodes); ("cpu", 0) without CUDA."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(), world_size
    return "cpu", 0


@dataclass(frozen=True)
class ModelFlops:
    """The weights of a model about to train that take part in matrix products, frozen and trainable."""

    frozen: int
    trainable: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelFlops":
        """Counted by transformers (a 4-bit weight as its unpacked size), adapter weights included."""
        lm = causal_lm(model)
        trainable = lm.num_parameters(only_trainable=True)
        frozen = lm.num_parameters() - trainable
        table, head = lm.get_input_embeddings().weight, lm.get_output_embeddings()
        if head is None or head.weight is not table:
            if table.requires_grad:
                trainable -= table.numel()
            else:
                frozen -= table.numel()
        return cls(frozen=frozen, trainable=trainable)

    def per_token(self, reference_forward: bool = False) -> int:
        """Training FLOPs per token; with the forward of a reference model as large (a preference stage)."""
        reference = 2 * (self.frozen + self.trainable) if reference_forward else 0
        return 4 * self.frozen + 6 * self.trainable + reference


@dataclass(frozen=True)
class Efficiency:
    """Training throughput over the timed steps of all processes, and what it made of the devices."""

    tokens_per_second: float
    flops_per_token: float  # the timed tokens' mean, when stages differ
    achieved_tflops: float
    peak_tflops: float | None  # one device's
    mfu: float | None
    device: str
    devices: int

    @classmethod
    def of(cls, tokens: int, seconds: float, flops: float, device: str, devices: int,
           configured_peak: float | None = None) -> "Efficiency":
        """`tokens` trained in `seconds` by all processes, `flops` the model FLOPs they took."""
        seconds = max(seconds, 1e-9)
        achieved = flops / seconds / 1e12
        peak = peak_tflops(device, configured_peak)
        return cls(tokens_per_second=tokens / seconds, flops_per_token=flops / max(tokens, 1),
                   achieved_tflops=achieved, peak_tflops=peak,
                   mfu=achieved / (peak * devices) if peak and devices else None, device=device, devices=devices)

    def metrics(self) -> dict[str, float | None]:
        return {metric_names.EFFICIENCY_TOKENS_PER_SECOND: self.tokens_per_second,
                metric_names.EFFICIENCY_ACHIEVED_TFLOPS: self.achieved_tflops,
                metric_names.EFFICIENCY_MFU: self.mfu}

    def describe(self) -> str:
        mfu = f", MFU {self.mfu:.1%} of {self.devices} x {self.peak_tflops:g} TFLOPS" if self.mfu is not None else ""
        return (f"{self.tokens_per_second:,.0f} tokens/s, {self.achieved_tflops:.3g} TFLOPS achieved on "
                f"{self.device}{mfu}")
