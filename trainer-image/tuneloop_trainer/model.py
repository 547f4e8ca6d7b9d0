"""Load the base model and attach what the method trains (LoRA, QLoRA or all weights)."""

from __future__ import annotations

import json

from typing import Any

import torch

from tuneloop.api.finetunejob import MethodSpec, TrainingSpec


class UnsupportedHardware(RuntimeError):
    """The spec asks for something this machine cannot do (QLoRA without CUDA)."""


def cpu_has_bf16() -> bool:
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(checker and checker())


def weight_dtype(training: TrainingSpec, method: MethodSpec) -> torch.dtype:
    """dtype of the frozen base weights. Trainable weights (LoRA, or all of `full`) stay fp32."""
    if method.type == "full" or training.precision == "fp32":
        return torch.float32
    if training.precision == "bf16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def with_default_system_prompt(template: str, system_prompt: str) -> str:
    """The chat template with the training's system prompt as its default: a conversation without a
    system message gets this one, as every training example had, instead of the base model's own.
    Saved with the adapter, so every consumer of its tokenizer (vLLM's --chat-template, the
    evaluator, a person trying the model) prompts the model as it was trained."""
    # json.dumps quotes and escapes the prompt; Jinja reads string literals with the same escapes.
    literal = json.dumps(system_prompt, ensure_ascii=False)
    return ("{%- if not messages or messages[0]['role'] != 'system' -%}"
            f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
            "{%- endif -%}" + template)


def attention_implementation() -> str:
    """flash-attention's varlen kernels where installed on CUDA, else transformers' SDPA (which turns the
    padding-free rows' position ids into a block-diagonal mask); on a CPU, our per-example SDPA."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
        return "flash_attention_2"
    from tuneloop_trainer.attention import ATTENTION  # registers it with transformers

    return ATTENTION


def gradient_checkpointing(training: TrainingSpec) -> bool:
    """The spec's choice; unset, on with CUDA (memory is the limit there) and off on CPUs (speed is)."""
    return torch.cuda.is_available() if training.gradient_checkpointing is None else training.gradient_checkpointing


def load_model(model_path: str, method: MethodSpec, training: TrainingSpec) -> torch.nn.Module:
    """Base model with the method's trainable parameters attached; a peft model for lora/qlora."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {"dtype": weight_dtype(training, method),
                              "attn_implementation": attention_implementation()}
    if method.type == "qlora":
        if not torch.cuda.is_available():
            raise UnsupportedHardware(
                "spec.method.type: qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                "use type lora on this machine")
        from transformers import BitsAndBytesConfig

        quant = method.quantization
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if method.type != "qlora":
        model.to(device)
    model.config.use_cache = False
    if method.type == "full":
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing(training),
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = method.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.peft_target_modules(),
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype keeps the adapter weights in fp32 over a bf16 base.
    model = get_peft_model(model, config, autocast_adapter_dtype=True)
    if device == "cpu":
        use_bit_dropout(model)
    return model


class BitDropout(torch.nn.Module):
    """torch.nn.Dropout(p) with a cheaper mask for CPUs: 31 random bits per element compared with
    p * 2**31 (p exact to 2**-31) instead of bernoulli_'s float sampling. Same distribution, same
    1 / (1 - p) scaling, same seeding (torch's default generator); about a third less CPU time
    forward and backward, where LoRA dropout was a sixth of a training step."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.threshold = p, round(p * 2**31)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_() >= self.threshold
        return x * keep * (1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_bit_dropout(model: torch.nn.Module) -> None:
    """Swap peft's LoRA dropout modules (nn.Dropout) for BitDropout; nothing else changes."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                    dropouts[name] = BitDropout(dropout.p)


def causal_lm(model: torch.nn.Module) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
