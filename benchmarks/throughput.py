"""Training throughput: the plain recipe, Tuneloop's trainer and the fast peers, side by side (issue 16).

    python benchmarks/throughput.py                                   # CPU: SmolLM2-135M LoRA
    python benchmarks/throughput.py --shape llama-3.1-8b --method qlora   # GPU (CUDA) shapes
    python benchmarks/throughput.py --shape llama-3.2-1b --method lora --dry-run   # plan only
    python benchmarks/throughput.py --check-loss                      # speed must not change the maths

One run trains every variant on the same machine, on the same fixed-seed synthetic instruction
data (lengths log-normal, median about 200 tokens, mean about 250, at most 1024), the same
examples and so the same number of tokens, one after the other, each in its own child process:

  plain    transformers + peft + TRL SFTTrainer as the guides write it: batch 2 x accumulation 4,
           gradient checkpointing, padded batches, completion-only loss, TRL's default optimizer;
           bf16 on CUDA, fp32 on CPU; qlora: bitsandbytes NF4, double quantisation, bf16 compute.
  tuneloop tuneloop_trainer.train.Training with TrainingSpec's defaults: TRL SFTTrainer too, with micro
           batches of 8 padding-free (one row, attention per example), precision auto (bf16 base,
           fp32 LoRA), optimizer auto, gradient checkpointing only on CUDA; on a CPU, Tuneloop's
           per-example attention and LoRA dropout plug in (trainer-image/tuneloop_trainer).
  liger    the plain recipe with SFTConfig(use_liger_kernel=True)   (CUDA, liger-kernel installed)
  unsloth  Unsloth's FastLanguageModel + the same SFTTrainer config (CUDA, unsloth installed)

Every variant trains LoRA r16, alpha 32 on q,k,v,o_proj (dropout 0.05; Unsloth 0, its fast path),
lr 2e-4, max length 1024, `--steps` optimizer steps of 8 examples.

Shapes: smollm2-135m is the real model of the local catalog (CPU or CUDA); llama-3.2-1b and
llama-3.1-8b are randomly initialised from their published configurations (nothing is
downloaded; the folder is written once under ~/.cache/tuneloop/bench-models, on the GPU),
with SmolLM2's tokenizer (its ids are valid in Llama 3's larger vocabulary); llama-tiny is a
small random Llama that runs the random-init path on a CPU in seconds.

Timed: optimizer steps 2..N (step 1 is warm-up), CUDA synchronised at every step end. Tokens:
non-padding tokens. Peak memory: torch.cuda.max_memory_allocated on CUDA, peak RSS on CPU.
MFU: 4 x base parameters x tokens/s over the device's dense bf16 peak (LoRA: forward plus the
input-gradient half of backward; attention FLOPs not counted).

--check-loss trains the plain recipe and Tuneloop for 3 steps on identical unpacked micro-batches
(2 x 4, the Trainer's seeded order in both, same seeded LoRA init on q,k,v,o, dropout 0, fp32, lr
2e-4 constant) and compares the per-step losses; then Tuneloop once more on the same micro-batches
padding-free (the fast path: one row per micro-batch, attention per example).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in ("operator", "trainer-image"):
    if str(REPO / folder) not in sys.path:
        sys.path.insert(0, str(REPO / folder))

EXAMPLES_PER_STEP = 8
PLAIN_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LEARNING_RATE = 2e-4
MAX_LENGTH = 1024
LENGTH_MEDIAN, LENGTH_SIGMA, LENGTH_MIN = 200, 0.668, 48   # log-normal: mean = median * exp(sigma^2 / 2) = 250
HELD_OUT_FRACTION = 0.05   # validation and test each
VALIDATION_KEPT = 8        # validation examples Tuneloop scores before/after (outside the timed loop)
CHECK_STEPS = 3
CHECK_TOLERANCE = 1e-3
MODEL_CACHE = Path(os.environ.get("TUNELOOP_BENCH_MODELS", Path.home() / ".cache" / "tuneloop" / "bench-models"))
QUIET_ENV = {"TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}  # beside OFFLINE_ENV
# Dense bf16 peaks (no sparsity) by a substring of torch.cuda.get_device_name().
GPU_BF16_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
VARIANTS = ("plain", "tuneloop", "liger", "unsloth")


@dataclass(frozen=True)
class Shape:
    name: str
    catalog: str | None = None                       # a catalog entry, or a random-init config:
    config: dict[str, Any] = field(default_factory=dict)
    cpu: bool = False                                # worth training on a CPU

    @property
    def random_init(self) -> bool:
        return self.catalog is None


LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "num_key_value_heads": 8, "hidden_act": "silu",
          "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "rope_theta": 500000.0}
SHAPES = {
    "smollm2-135m": Shape("smollm2-135m", catalog="smollm2-135m-instruct", cpu=True),
    "llama-3.2-1b": Shape("llama-3.2-1b", config={
        **LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "head_dim": 64, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}}),
    "llama-3.1-8b": Shape("llama-3.1-8b", config={
        **LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "head_dim": 128, "tie_word_embeddings": False,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}}),
    "llama-tiny": Shape("llama-tiny", config={
        **LLAMA3, "vocab_size": 49152, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "tie_word_embeddings": True}, cpu=True),
}


# --- models, data, workloads (shared by parent and children) ----------------------------------

def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def smollm2_path() -> str:
    from tuneloop.catalog import lookup, materialize

    return str(materialize(lookup(SHAPES["smollm2-135m"].catalog)))


def shape_config(shape: Shape):
    """The transformers config of a shape (read from the catalog model, or built from the table)."""
    from transformers import AutoConfig, LlamaConfig

    if not shape.random_init:
        return AutoConfig.from_pretrained(smollm2_path())
    from tuneloop.workload_data.chat import load_tokenizer

    tokenizer = load_tokenizer(smollm2_path())
    settings = {k: v for k, v in shape.config.items() if k != "model_type"}
    return LlamaConfig(**settings, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)


def base_parameters(shape: Shape) -> int:
    """Parameters of the base model (tied embeddings once), counted on the meta device: no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config(shape))
    return sum(p.numel() for p in model.parameters())


def model_path(shape: Shape) -> str:
    """The catalog model's folder, or a random-init folder written once (bf16 safetensors + tokenizer)."""
    if not shape.random_init:
        return smollm2_path()
    folder = MODEL_CACHE / shape.name
    if (folder / "config.json").is_file():
        return str(folder)
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.workload_data.chat import load_tokenizer

    device = "cuda" if cuda() else "cpu"
    if device == "cpu" and not shape.cpu:
        raise SystemExit(f"{shape.name}: building the random-init model needs CUDA (use --dry-run here)")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape_config(shape), dtype=torch.bfloat16)
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    load_tokenizer(smollm2_path()).save_pretrained(partial)
    del model
    partial.rename(folder)
    return str(folder)


def one_token_words(tokenizer, limit: int = 4000) -> list[str]:
    """Lower-case words that the tokenizer encodes as one token after a space."""
    words = []
    for token in tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), 30000)))):
        text = tokenizer.convert_tokens_to_string([token])
        if text.startswith(" ") and text[1:].isalpha() and text[1:].islower() and 3 <= len(text) <= 10 \
                and len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1:
            words.append(text[1:])
            if len(words) == limit:
                break
    return words


def synthetic_rows(tokenizer, count: int, seed: int) -> list[dict[str, str]]:
    """Alpaca rows of random words whose chat-templated length is log-normal (median ~200, mean ~250)."""
    from tuneloop.workload_data.rows import Example
    from tuneloop_trainer.tokens import tokenize

    words = one_token_words(tokenizer)
    probe = Example(line=0, messages=[{"role": "user", "content": words[0]},
                                      {"role": "assistant", "content": words[1]}])
    overhead = len(tokenize(tokenizer, probe, 10**9).input_ids) - 2
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        length = min(MAX_LENGTH - 4, max(LENGTH_MIN, round(rng.lognormvariate(math.log(LENGTH_MEDIAN), LENGTH_SIGMA))))
        content = max(2, length - overhead)
        answer = max(1, round(content * rng.uniform(0.2, 0.6)))
        text = [rng.choice(words) for _ in range(content)]
        rows.append({"instruction": " ".join(text[answer:]).capitalize() + "?",
                     "output": " ".join(text[:answer]).capitalize() + "."})
    return rows


def lora_spec(dropout: float | None = None):
    from tuneloop.api.finetunejob import LoraSpec

    return LoraSpec(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"] if dropout is None else dropout,
                    target_modules=PLAIN_TARGETS)


def workload(args, output_dir: str, check: bool):
    """The TrainerWorkload the local runner would hand Tuneloop's trainer: one epoch, no checkpoints."""
    from tuneloop.api.finetunejob import CheckpointSpec, DatasetSpec, MethodSpec, TrainingSpec
    from tuneloop.api.workloads import TrainerWorkload

    dataset = DatasetSpec(uri=args.data, format="alpaca", validation_fraction=HELD_OUT_FRACTION,
                          test_fraction=HELD_OUT_FRACTION, seed=7)
    no_checkpoints = CheckpointSpec(every_steps=0)
    if check:
        method = MethodSpec(type="lora", lora=lora_spec(dropout=0.0))
        training = TrainingSpec(
            epochs=1, learning_rate=LEARNING_RATE, lr_scheduler="constant", warmup_ratio=0.0, micro_batch_size=2,
            gradient_accumulation_steps=4, max_seq_length=MAX_LENGTH, packing=False, precision="fp32",
            optimizer="adamw", seed=args.seed, checkpoints=no_checkpoints)
    else:
        method = MethodSpec(type=args.method, lora=lora_spec())
        training = TrainingSpec(epochs=1, learning_rate=LEARNING_RATE, max_seq_length=MAX_LENGTH, seed=args.seed,
                                checkpoints=no_checkpoints)
    return TrainerWorkload(job="default/throughput", model_path=args.model_path, dataset_path=args.data,
                           dataset=dataset, method=method, training=training, output_dir=output_dir,
                           preview_examples=0, merge_adapter=False)


def selected_rows(spec, tokenizer, count: int):
    """The training rows exactly as Tuneloop's prepare() orders them (cleaned, split), first `count`."""
    from tuneloop.workload_data.rows import load_dataset
    from tuneloop_trainer.cleaning import clean
    from tuneloop_trainer.prepare import split_rows
    from tuneloop_trainer.tokens import tokenize

    dataset = load_dataset(Path(spec.dataset_path), spec.dataset.format, spec.dataset.system_prompt)
    rows, _ = clean(dataset.examples, spec.dataset.cleaning, lambda row: len(tokenize(tokenizer, row, 10**9).input_ids))
    train_rows = split_rows(rows, spec.dataset.validation_fraction, spec.dataset.test_fraction, spec.dataset.seed).train
    if len(train_rows) < count:
        raise SystemExit(f"only {len(train_rows)} training rows after cleaning and the split; {count} needed")
    return train_rows[:count]


def rows_needed(examples: int) -> int:
    return math.ceil(examples / (1 - 2 * HELD_OUT_FRACTION)) + 4


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_summary(meter: dict, step_tokens: list[int], step_positions: list[int]) -> dict[str, Any]:
    """Throughput over steps 2..N (step 1 is warm-up); also over all steps, and the process's CPU time.

    CPU seconds (all threads of the child, time.process_time) say what a step costs when other work
    on a shared machine takes turns on the cores: wall-clock seconds then grow, CPU seconds much less.
    """
    step_ends, first_begin = meter["step_ends"], meter["first_begin"]
    cpu = [b - a for a, b in zip([meter["first_cpu"]] + meter["step_cpu"][:-1], meter["step_cpu"])]
    steps = len(step_ends)
    summary: dict[str, Any] = {"steps": steps, "step_seconds": [round(b - a, 3) for a, b in
                                                               zip([first_begin] + step_ends[:-1], step_ends)],
                               "step_tokens": step_tokens}
    if steps >= 2:
        seconds = step_ends[-1] - step_ends[0]
        tokens, positions, timed = sum(step_tokens[1:]), sum(step_positions[1:]), steps - 1
    else:
        seconds = step_ends[-1] - first_begin
        tokens, positions, timed = sum(step_tokens), sum(step_positions), steps
    timed_cpu = sum(cpu[1:]) if steps >= 2 else sum(cpu)
    summary.update(step_cpu_seconds=[round(c, 3) for c in cpu], tokens_per_cpu_second=tokens / timed_cpu,
                   timed_steps=timed, timed_seconds=seconds, tokens=tokens, positions=positions,
                   tokens_per_second=tokens / seconds, seconds_per_step=seconds / timed,
                   all_steps_tokens_per_second=sum(step_tokens) / (step_ends[-1] - first_begin))
    return summary


# --- the plain recipe and its peers (TRL SFTTrainer) ------------------------------------------

def prompt_completion(rows) -> list[dict[str, Any]]:
    """Conversational prompt-completion rows for TRL: the prompt messages and the answer."""
    return [{"prompt": row.messages[:-1], "completion": row.messages[-1:]} for row in rows]


def plain_model(path: str, method: str, precision: str):
    """from_pretrained as the guides write it: bf16 (or fp32 on CPU), NF4 for qlora."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if precision == "bf16" else torch.float32}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def sft_trainer(rows, tokenizer, model, output_dir: str, seed: int, steps: int, *, meter: dict, check: bool = False,
                precision: str = "fp32", peft_config=None, lora_init: dict | None = None, **config_extra):
    """SFTTrainer + SFTConfig the way the guides copy it; `check` makes it comparable step for step."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if meter["first_begin"] is None:
                sync()
                meter["first_begin"], meter["first_cpu"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            meter["step_ends"].append(time.perf_counter())
            meter["step_cpu"].append(time.process_time())
            for key in ("tokens", "positions", "loss"):
                meter[f"step_{key}"].append(meter[f"current_{key}"])
                meter[f"current_{key}"] = 0

    class CountingSFTTrainer(SFTTrainer):
        """Counts the non-padding tokens (attention_mask) of every micro-batch; in a check, its loss too."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            meter["current_tokens"] += int(mask.sum())
            meter["current_positions"] += int(mask.numel())
            if check:
                meter["batches"].append({k: inputs[k].clone() for k in ("input_ids", "attention_mask", "labels")})
            loss = super().training_step(model, inputs, num_items_in_batch)
            if check:
                meter["current_loss"] += float(loss)
            return loss

    meter.update(first_begin=None, first_cpu=None, step_ends=[], step_cpu=[], step_tokens=[], step_positions=[],
                 step_loss=[], batches=[],
                 current_tokens=0, current_positions=0, current_loss=0.0)
    if check:  # constant lr, no warmup, as Tuneloop's check workload
        config_extra.update(lr_scheduler_type="constant", warmup_steps=0)
    config = SFTConfig(
        output_dir=output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=4,
        gradient_checkpointing=True, learning_rate=LEARNING_RATE, num_train_epochs=1, max_steps=steps,
        max_length=MAX_LENGTH, packing=False, completion_only_loss=True,
        bf16=precision == "bf16",  # SFTConfig's default is bf16=True; the CPU plain recipe is fp32
        report_to="none", save_strategy="no", disable_tqdm=True, seed=seed, **config_extra)
    trainer = CountingSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(prompt_completion(rows)),
                                 processing_class=tokenizer, peft_config=peft_config, callbacks=[Clock()])
    if lora_init is not None:
        copy_lora(trainer.model, lora_init)
    return trainer


def peft_lora(dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout, target_modules=PLAIN_TARGETS,
                      task_type="CAUSAL_LM")


def same_tokens_as_tuneloop(trainer, rows, tokenizer) -> bool:
    """Does TRL's tokenization give the ids and loss mask Tuneloop's tokens.tokenize gives?"""
    from tuneloop_trainer.tokens import IGNORE_INDEX, tokenize

    prepared = trainer.train_dataset
    for index, row in enumerate(rows):
        ours = tokenize(tokenizer, row, MAX_LENGTH)
        if prepared[index]["input_ids"] != ours.input_ids:
            return False
        if [label != -100 for label in prepared[index]["labels"]] != [l != IGNORE_INDEX for l in ours.labels]:
            return False
    return True


def worker_sft(args) -> dict[str, Any]:
    """plain, liger and unsloth: the same SFTTrainer run, with a different model or one flag."""
    if args.worker == "unsloth":
        import unsloth  # noqa: F401  (must be imported before transformers and trl to patch them)
    import torch

    from tuneloop.workload_data.chat import load_tokenizer

    torch.manual_seed(args.seed)
    count = args.steps * EXAMPLES_PER_STEP
    precision = "bf16" if cuda() else "fp32"
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.worker}-") as output_dir:
        spec = workload(args, output_dir, check=False)
        tokenizer = load_tokenizer(args.model_path)
        rows = selected_rows(spec, tokenizer, count)
        meter: dict = {}
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if args.worker == "unsloth":
            from unsloth import FastLanguageModel

            model, _ = FastLanguageModel.from_pretrained(
                model_name=args.model_path, max_seq_length=MAX_LENGTH, dtype=None,
                load_in_4bit=args.method == "qlora", local_files_only=True)
            model = FastLanguageModel.get_peft_model(
                model, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0, target_modules=PLAIN_TARGETS,
                use_gradient_checkpointing="unsloth", random_state=args.seed)
            peft_config, dropout = None, 0.0
        else:
            model = plain_model(args.model_path, args.method, precision)
            peft_config, dropout = peft_lora(LORA["dropout"]), LORA["dropout"]
            if args.worker == "liger":
                extra["use_liger_kernel"] = True
        trainer = sft_trainer(rows, tokenizer, model, output_dir, args.seed, args.steps, meter=meter,
                              precision=precision, peft_config=peft_config, **extra)
        trainer.train()
        wall = time.perf_counter() - started
        same = same_tokens_as_tuneloop(trainer, rows, tokenizer)
    summary = timed_summary(meter, meter["step_tokens"], meter["step_positions"])
    weights = {"qlora": "NF4 base, bf16 compute"}.get(args.method, "bf16" if precision == "bf16" else "fp32")
    summary.update(name=args.worker, examples=count, wall_seconds=wall, peak_memory_mib=peak_memory_mib(),
                   same_tokens_as_tuneloop=same, weights=weights,
                   batches="2 x 4, padded, grad ckpt" + (", liger kernels" if extra else ""),
                   lora=f"r{LORA['r']} alpha{LORA['alpha']} dropout{dropout:g} {','.join(PLAIN_TARGETS)}")
    return summary


# --- Tuneloop ---------------------------------------------------------------------------------

def clock_callback(meter: dict):
    """Records when the loop starts, when each optimizer step has finished, its tokens and its loss."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if meter["first_begin"] is None:
                sync()
                meter["first_begin"], meter["first_cpu"] = time.perf_counter(), time.process_time()
                meter["tokens_at"] = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            meter["step_ends"].append(time.perf_counter())
            meter["step_cpu"].append(time.process_time())
            meter["step_tokens"].append(state.num_input_tokens_seen - meter["tokens_at"])
            meter["tokens_at"] = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                meter["step_loss"].append(logs["loss"])

    meter.update(first_begin=None, first_cpu=None, step_ends=[], step_cpu=[], step_tokens=[], step_loss=[],
                 batches=[])
    return Clock()


def run_tuneloop(spec, count: int, meter: dict, lora_init: dict | None = None):
    """Training(...).run() on the first `count` training rows, a short validation split, optionally a given LoRA init;
    every micro-batch it trains on is kept in meter["batches"]."""
    import tuneloop_trainer.train as train_module
    from tuneloop_trainer.progress import ProgressReporter

    record: dict = {}
    real_prepare, real_load_model = train_module.prepare, train_module.load_model

    def prepare(workload, tokenizer):
        data = real_prepare(workload, tokenizer)
        data.train = data.train[:count]
        data.validation = data.validation[:VALIDATION_KEPT]
        data.validation_rows = data.validation_rows[:VALIDATION_KEPT]
        record["data"] = data
        return data

    def load_model(*a, **k):
        model = real_load_model(*a, **k)
        if lora_init is not None:
            copy_lora(model, lora_init)
        return model

    class Benchmarked(train_module.Training):
        def trainer(self, model, tokenizer, data, callbacks):
            trainer = super().trainer(model, tokenizer, data, [*callbacks, clock_callback(meter)])
            training_step = trainer.training_step

            def recorded(model, inputs, num_items_in_batch=None):
                meter["batches"].append({k: v.clone() for k, v in inputs.items()
                                         if k in ("input_ids", "attention_mask", "labels", "position_ids")})
                return training_step(model, inputs, num_items_in_batch)

            trainer.training_step = recorded
            return trainer

    train_module.prepare, train_module.load_model = prepare, load_model
    try:
        training = Benchmarked(spec, ProgressReporter(None, quiet=True))
        result = training.run()
    finally:
        train_module.prepare, train_module.load_model = real_prepare, real_load_model
    return training, result, record["data"]


def worker_tuneloop(args) -> dict[str, Any]:
    import torch

    from tuneloop_trainer.model import weight_dtype

    count = args.steps * EXAMPLES_PER_STEP
    with tempfile.TemporaryDirectory(prefix="bench-tuneloop-") as output_dir:
        spec = workload(args, output_dir, check=False)
        meter: dict = {}
        started = time.perf_counter()
        _, result, _ = run_tuneloop(spec, count, meter)
        wall = time.perf_counter() - started
    tokens = meter["step_tokens"]
    if sum(tokens) != result.tokens_trained:
        raise SystemExit(f"token count mismatch: {sum(tokens)} counted, {result.tokens_trained} reported")
    positions = [sum(batch["input_ids"].numel() for batch in group) for group in
                 steps_of(meter["batches"], spec.training.gradient_accumulation_steps)]
    summary = timed_summary(meter, tokens, positions)
    packing = spec.training.packing
    base = "NF4" if args.method == "qlora" else str(weight_dtype(spec.training, spec.method)).replace("torch.", "")
    summary.update(
        name="tuneloop", examples=count, wall_seconds=wall, peak_memory_mib=peak_memory_mib(),
        packing=packing, reported_tokens_trained=result.tokens_trained,
        reported_tokens_per_second=result.tokens_per_second, weights=f"{base} base + fp32 LoRA",
        batches=f"{spec.training.micro_batch_size} x {spec.training.gradient_accumulation_steps}, "
                f"{'padding-free' if packing else 'padded'}, TRL SFTTrainer",
        lora=f"r{LORA['r']} alpha{LORA['alpha']} dropout{LORA['dropout']:g} {','.join(PLAIN_TARGETS)}",
        validation_loss=[result.validation_loss_before, result.validation_loss_after], threads=torch.get_num_threads())
    return summary


def steps_of(batches: list, accumulation: int) -> list[list]:
    return [batches[start:start + accumulation] for start in range(0, len(batches), accumulation)]


# --- --check-loss ------------------------------------------------------------------------------

def reference_lora(path: str, seed: int) -> dict:
    """A seeded LoRA init (q,k,v,o, r16) both pipelines start from, copied in by parameter name."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(base, peft_lora(0.0))
    return {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}


def copy_lora(model, reference: dict) -> None:
    import torch

    params = {name: param for name, param in model.named_parameters() if "lora_" in name}
    if set(params) != set(reference):
        raise SystemExit(f"LoRA parameters differ: {sorted(set(params) ^ set(reference))[:4]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(reference[name].to(param.device, param.dtype))


def rows_of(input_ids, mask, targets) -> list[tuple[list[int], list[int]]]:
    """Per row of a padded batch: its non-padding ids and next-token targets (-100: no loss)."""
    lengths = [int(row.sum()) for row in mask]
    return [(ids[:n].tolist(), t[:n].tolist()) for ids, t, n in zip(input_ids.cpu(), targets.cpu(), lengths)]


def worker_check(args) -> dict[str, Any]:
    import torch

    from tuneloop.workload_data.chat import load_tokenizer

    count = CHECK_STEPS * EXAMPLES_PER_STEP
    with tempfile.TemporaryDirectory(prefix="bench-check-") as output_dir:
        spec = workload(args, output_dir, check=True)
        tokenizer = load_tokenizer(args.model_path)
        rows = selected_rows(spec, tokenizer, count)
        init = reference_lora(args.model_path, args.seed)

        # Both run the Trainer's seeded sampler over the same rows in the same order: the same micro-batches.
        plain_meter: dict = {}
        trainer = sft_trainer(rows, tokenizer, plain_model(args.model_path, "lora", "fp32"), output_dir + "/trl",
                              args.seed, CHECK_STEPS, meter=plain_meter, check=True, peft_config=peft_lora(0.0),
                              lora_init=init)
        same_tokens = same_tokens_as_tuneloop(trainer, rows, tokenizer)
        trainer.train()

        meter: dict = {}
        run_tuneloop(spec, count, meter, lora_init=init)
        identical = len(meter["batches"]) == len(plain_meter["batches"]) and all(
            rows_of(b["input_ids"], b["attention_mask"], b["labels"])
            == rows_of(o["input_ids"], o["attention_mask"], o["labels"])
            for b, o in zip(plain_meter["batches"], meter["batches"]))

        # The same micro-batches padding-free (one row each, attention per example): the fast path's maths.
        packed_spec = spec.model_copy(update={"training": spec.training.model_copy(update={"packing": True})})
        packed_meter: dict = {}
        run_tuneloop(packed_spec, count, packed_meter, lora_init=init)
        packed = all("position_ids" in b and b["input_ids"].shape[0] == 1 for b in packed_meter["batches"])

    trl_losses, our_losses, packed_losses = plain_meter["step_loss"], meter["step_loss"], packed_meter["step_loss"]
    diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(trl_losses, our_losses)]
    packed_diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(trl_losses, packed_losses)]
    return {"trl": trl_losses, "tuneloop": our_losses, "relative_differences": diffs,
            "tuneloop_packed": packed_losses, "packed_relative_differences": packed_diffs, "packed": packed,
            "max_relative_difference": max(diffs + packed_diffs) if diffs else None, "identical_batches": identical,
            "same_tokens_as_tuneloop": same_tokens, "packing": spec.training.packing, "examples": count,
            "threads": torch.get_num_threads()}


# --- the parent: header, plan, children, table --------------------------------------------------

def cpu_info() -> tuple[str, float | None, set[str]]:
    """CPU model name, clock in GHz (as /proc/cpuinfo reports it) and feature flags."""
    name, mhz, flags = platform.processor() or "unknown", None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                name = value.strip()
            elif key == "cpu MHz":
                mhz = max(mhz or 0.0, float(value))
            elif key == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return name, (mhz / 1000 if mhz else None), flags


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def device_peak() -> tuple[float | None, str]:
    """Dense bf16 peak FLOP/s of the device the children use, and where the figure comes from."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peak in GPU_BF16_PEAK.items():
            if key in name:
                return peak, f"{name}: dense bf16 peak {peak / 1e12:.0f} TFLOP/s (table)"
        return None, f"{name}: no bf16 peak in the table, MFU n/a"
    name, ghz, flags = cpu_info()
    per_cycle = ((1024, "AMX-BF16 tiles, 1024 bf16 FLOP/cycle/core") if "amx_bf16" in flags else
                 (128, "AVX512-BF16 dot products, 2 x 64 FLOP/cycle/core") if "avx512_bf16" in flags else None)
    if ghz is None or per_cycle is None:
        return None, f"{name}: no bf16 matrix units known (or no clock), MFU n/a"
    peak = cores() * ghz * 1e9 * per_cycle[0]
    return peak, (f"{name}: estimated {cores()} cores x {ghz:.2f} GHz x {per_cycle[1]} = {peak / 1e12:.2f} "
                  "TFLOP/s (an estimate; the VM's reported clock, no turbo)")


def header(argv: list[str]) -> None:
    import peft
    import torch
    import transformers
    import trl

    extras = []
    for module in ("bitsandbytes", "liger_kernel", "unsloth"):
        if importlib.util.find_spec(module) is not None:
            try:
                from importlib.metadata import version

                extras.append(f"{module} {version(module.replace('_', '-'))}")
            except Exception:
                extras.append(f"{module} (version unknown)")
    print("command:   " + shlex.join([Path(sys.executable).name] + argv))
    print(f"versions:  torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"trl {trl.__version__}" + "".join(f", {e}" for e in extras) + f", python {platform.python_version()}")
    if torch.cuda.is_available():
        print(f"device:    {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        print(f"device:    CPU {cpu_info()[0]}, {cores()} usable core(s), torch threads {torch.get_num_threads()}, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.stdout.flush()


def available(variant: str, method: str, shape: Shape) -> str | None:
    """None when the variant can run here, else why not."""
    if not shape.cpu and not cuda():
        return f"{shape.name} needs CUDA"
    if variant in ("liger", "unsloth"):
        module = {"liger": "liger_kernel", "unsloth": "unsloth"}[variant]
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
        if not cuda():
            return "needs CUDA"
    if method == "qlora" and not cuda():
        return "qlora needs CUDA (bitsandbytes)"
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def run_child(kind: str, args, workdir: Path) -> dict[str, Any]:
    result, log = workdir / f"{kind}.json", workdir / f"{kind}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--result", str(result),
               "--shape", args.shape, "--method", args.method, "--steps", str(args.steps), "--seed", str(args.seed),
               "--data", args.data, "--model-path", args.model_path]
    from tuneloop.offline_env import OFFLINE_ENV

    env = {**os.environ, **OFFLINE_ENV, **QUIET_ENV}
    if kind == "tuneloop" and not cuda():  # the environment Tuneloop's launchers give a CPU trainer
        from tuneloop.runtime.manifests import CPU_TRAINER_ENV

        env = {**CPU_TRAINER_ENV, **env}
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(f"{kind} failed (exit {code}); last lines of its log:\n" + "\n".join(tail))
    print(f"  {kind}: done in {time.perf_counter() - started:.0f}s", flush=True)
    return json.loads(result.read_text())


def table(rows: list[dict[str, Any]], skipped: dict[str, str], parameters: int, peak: float | None,
          memory: str) -> str:
    head = ("variant", "steps timed", "tokens", "tokens/s", "s/step", f"peak {memory} MiB", "MFU", "vs plain")
    base = next((row["tokens_per_second"] for row in rows if row["name"] == "plain"), None)
    lines = []
    for row in rows:
        speed = row["tokens_per_second"]
        mfu = f"{4 * parameters * speed / peak:.2%}" if peak else "n/a"
        lines.append((row["name"], str(row["timed_steps"]), str(row["tokens"]), f"{speed:.1f}",
                      f"{row['seconds_per_step']:.2f}", f"{row['peak_memory_mib']:.0f}", mfu,
                      f"{speed / base:.2f}x" if base else "n/a"))
    for name, reason in skipped.items():
        lines.append((name, "-", "-", "-", "-", "-", "-", f"skipped: {reason}"))
    widths = [max(len(cells[i]) for cells in [head] + lines) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % widths[0] if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    out = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*cells).rstrip() for cells in lines]
    return "\n".join(out)


def length_stats(tokenizer, args, count: int) -> str:
    from tuneloop_trainer.tokens import tokenize

    with tempfile.TemporaryDirectory() as output_dir:
        spec = workload(args, output_dir, check=False)
        lengths = [len(tokenize(tokenizer, row, MAX_LENGTH).input_ids) for row in selected_rows(spec, tokenizer, count)]
    return (f"{count} examples, {sum(lengths)} tokens; length median {statistics.median(lengths):.0f}, "
            f"mean {statistics.mean(lengths):.0f}, max {max(lengths)}")


def dry_run(args, shape: Shape, variants: list[str]) -> int:
    """Everything but training: config, parameter count, LoRA on a meta-device model, data, workloads."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = shape_config(shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, peft_lora(LORA["dropout"]))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as output_dir:
        spec = workload(args, output_dir, check=False)
    print(f"dry run:   {shape.name} ({'random init' if shape.random_init else 'catalog ' + shape.catalog}), "
          f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}: "
          f"{parameters / 1e9:.3f}B parameters, LoRA {trainable / 1e6:.2f}M trainable (built on the meta device)")
    print(f"           tuneloop workload: method {spec.method.type}, micro batch {spec.training.micro_batch_size} x "
          f"{spec.training.gradient_accumulation_steps}, packing {spec.training.packing}, "
          f"max length {spec.training.max_seq_length}")
    for variant in variants:
        reason = available(variant, args.method, shape)
        print(f"           {variant}: {'would run' if reason is None else 'skipped here: ' + reason}")
    return 0


def parent(args, argv: list[str]) -> int:
    from tuneloop.workload_data.chat import load_tokenizer

    header(argv)
    shape = SHAPES[args.shape]
    variants = [v.strip() for v in args.variants.split(",")]
    peak, peak_note = device_peak()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        examples = (CHECK_STEPS if args.check_loss else args.steps) * EXAMPLES_PER_STEP
        tokenizer = load_tokenizer(smollm2_path())
        args.data = str(workdir / "rows.jsonl")
        args.model_path = str(MODEL_CACHE / shape.name) if shape.random_init else smollm2_path()
        rows = synthetic_rows(tokenizer, rows_needed(examples), args.seed)
        Path(args.data).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"data:      synthetic instructions, seed {args.seed}: " + length_stats(tokenizer, args, examples))
        if args.dry_run:
            return dry_run(args, shape, variants)
        if not shape.cpu and not cuda():
            raise SystemExit(f"{shape.name} is a GPU shape and this machine has no CUDA: use --dry-run here")
        args.model_path = model_path(shape)
        if args.check_loss:
            print(f"check-loss: {shape.name}, the plain TRL recipe vs Tuneloop, {CHECK_STEPS} steps x "
                  f"{EXAMPLES_PER_STEP} examples (2 x 4, unpacked), same batches, same LoRA init, fp32, "
                  "lr 2e-4 constant, dropout 0", flush=True)
            return report_check(run_child("check", args, workdir))
        print(f"shape:     {shape.name}, {args.method}; {args.steps} optimizer steps x {EXAMPLES_PER_STEP} examples "
              f"per variant; step 1 is warm-up and not timed", flush=True)
        print(f"MFU peak:  {peak_note}", flush=True)
        results, skipped = [], {}
        for variant in variants:
            reason = available(variant, args.method, shape)
            if reason is None:
                results.append(run_child(variant, args, workdir))
            else:
                skipped[variant] = reason
    parameters = base_parameters(shape)
    print()
    print(table(results, skipped, parameters, peak, "CUDA alloc" if cuda() else "RSS"))
    print(f"\nMFU = 4 x {parameters / 1e6:.1f}M base parameters x tokens/s / peak")
    base = next((row for row in results if row["name"] == "plain"), None)
    for row in results:
        print(f"{row['name']}: {row['weights']}; batches {row['batches']}; LoRA {row['lora']}")
        print(f"  step seconds {row['step_seconds']}  (all steps incl. warm-up: "
              f"{row['all_steps_tokens_per_second']:.1f} tokens/s)")
        print(f"  step CPU seconds (all threads) {row['step_cpu_seconds']}; timed steps: "
              f"{row['tokens_per_cpu_second']:.1f} tokens per CPU second"
              + (f" ({row['tokens_per_cpu_second'] / base['tokens_per_cpu_second']:.2f}x plain)" if base else ""))
        print(f"  positions computed / real tokens (padding overhead): {row['positions'] / row['tokens']:.2f}; "
              f"child wall time {row['wall_seconds']:.0f}s"
              + (f"; tokenization equals Tuneloop's: {row['same_tokens_as_tuneloop']}"
                 if "same_tokens_as_tuneloop" in row else ""))
    return 0


def report_check(check: dict) -> int:
    print()
    print(f"identical micro-batches (ids and loss positions): {check['identical_batches']}; "
          f"TRL tokenization equals Tuneloop's: {check['same_tokens_as_tuneloop']}; "
          f"Tuneloop packing: {check['packing']}")
    print(f"{'step':>4}  {'TRL SFTTrainer':>16}  {'Tuneloop':>16}  {'rel. diff':>10}  {'Tuneloop packed':>16}  "
          f"{'rel. diff':>10}")
    for step, row in enumerate(zip(check["trl"], check["tuneloop"], check["relative_differences"],
                                   check["tuneloop_packed"], check["packed_relative_differences"]), 1):
        print(f"{step:>4}  {row[0]:>16.8f}  {row[1]:>16.8f}  {row[2]:>10.2e}  {row[3]:>16.8f}  {row[4]:>10.2e}")
    print(f"(packed: the same micro-batches, each packed into one row, attention per example; "
          f"the packed run really packed: {check['packed']})")
    worst = check["max_relative_difference"]
    ok = (worst is not None and worst < CHECK_TOLERANCE and check["identical_batches"] and check["packed"]
          and len(check["trl"]) == len(check["tuneloop"]) == len(check["tuneloop_packed"]) == CHECK_STEPS)
    print(f"max relative difference {worst:.2e}: {'PASS' if ok else 'FAIL'} (tolerance {CHECK_TOLERANCE:g})")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m",
                        help="model shape (default smollm2-135m; the llama-3.x shapes are for CUDA)")
    parser.add_argument("--method", choices=("lora", "qlora"), default="lora", help="lora (default) or qlora (CUDA)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of 8 examples per variant (default 6)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)} (default all; the unavailable are skipped)")
    parser.add_argument("--seed", type=int, default=42, help="data and training seed (default 42)")
    parser.add_argument("--check-loss", action="store_true",
                        help="compare the first 3 steps' losses of TRL and Tuneloop on identical batches")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the data, the workloads and the model on the meta device; train nothing")
    parser.add_argument("--worker", choices=("plain", "liger", "unsloth", "tuneloop", "check"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    unknown = set(v.strip() for v in args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    if args.worker is None:
        return parent(args, [sys.argv[0]] + argv)
    random.seed(args.seed)
    worker = {"check": worker_check, "tuneloop": worker_tuneloop}.get(args.worker, worker_sft)
    summary = worker(args)
    Path(args.result).write_text(json.dumps(summary), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
