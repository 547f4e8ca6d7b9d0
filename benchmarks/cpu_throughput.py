"""CPU training throughput: the plain TRL SFTTrainer recipe against Tuneloop's trainer.

    python benchmarks/cpu_throughput.py [--steps N] [--rows N] [--seed N]
    python benchmarks/cpu_throughput.py --check-loss

Both variants fine-tune SmolLM2-135M-Instruct (the local catalog entry) with LoRA on the same
examples of examples/data/tickets.jsonl (cleaned and split the way Tuneloop does it, with the
example manifest's system prompt), `--steps` optimizer steps of 8 examples each, one after the
other in separate child processes of this one run (so that each has its own peak RSS):

  plain recipe  TRL SFTTrainer + SFTConfig as the guides write it: batch 2 x accumulation 4,
                gradient checkpointing, padded batches, LoRA r16/alpha32/dropout 0.05 on
                q,k,v,o_proj, lr 2e-4, fp32 (bf16=False), completion-only loss, max_length 512.
  tuneloop      tuneloop_trainer.train.Training with the example manifest's settings
                (all-linear LoRA r16, micro batch 8, packing, precision auto), epochs set to 1.

Only the optimisation steps are timed, and the first one is left out (warm-up): from the end
of step 1 to the end of the last step. Tokens are the non-padding tokens of the steps timed.

--check-loss trains both pipelines for 3 steps on identical unpacked micro-batches (2 x 4, same
order, same seeded LoRA init on q,k,v,o, dropout 0, fp32, lr 2e-4 constant, no warmup) and
compares the per-step losses: speed must not change the maths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in ("operator", "trainer-image"):
    if str(REPO / folder) not in sys.path:
        sys.path.insert(0, str(REPO / folder))

EXAMPLE = REPO / "examples" / "finetunejob.yaml"
DATA = REPO / "examples" / "data" / "tickets.jsonl"
EXAMPLES_PER_STEP = 8
PLAIN_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
HOLD_OUT_KEPT = 8          # hold-out examples Tuneloop scores before/after (outside the timed loop)
CHECK_STEPS = 3
CHECK_TOLERANCE = 1e-3
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}


# --- shared set-up -----------------------------------------------------------------------------

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def model_path() -> str:
    from tuneloop.catalog import lookup, materialize

    return str(materialize(lookup("smollm2-135m-instruct")))


def example_job():
    import yaml

    from tuneloop.api.finetunejob import parse_manifest

    return parse_manifest(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))


def tuneloop_workload(data_path: str, output_dir: str, seed: int, check: bool):
    """The example manifest's spec as the local runner hands it to the trainer; one epoch, no checkpoints."""
    from tuneloop.api.finetunejob import CheckpointSpec, LoraSpec, MethodSpec, TrainingSpec
    from tuneloop.api.workloads import TrainerWorkload

    spec = example_job().spec
    if check:
        method = MethodSpec(type="lora", lora=LoraSpec(r=16, alpha=32, dropout=0.0, target_modules=PLAIN_TARGETS))
        training = TrainingSpec(
            epochs=1, learning_rate=2e-4, lr_scheduler="constant", warmup_ratio=0.0, micro_batch_size=2,
            gradient_accumulation_steps=4, max_seq_length=512, packing=False, precision="fp32",
            optimizer="adamw", seed=seed, checkpoints=CheckpointSpec(every_steps=0))
    else:
        method = spec.method
        training = spec.training.model_copy(update={"epochs": 1, "seed": seed,
                                                     "checkpoints": CheckpointSpec(every_steps=0)})
    return TrainerWorkload(
        job="default/cpu-throughput", model_path=model_path(), dataset_path=data_path, dataset=spec.dataset,
        method=method, training=training, output_dir=output_dir, preview_examples=0, merge_adapter=False)


def selected_rows(workload, tokenizer, count: int):
    """The training rows exactly as Tuneloop's prepare() orders them (cleaned, split), first `count`."""
    from tuneloop_trainer.cleaning import clean
    from tuneloop_trainer.data import load_dataset, split_hold_out, tokenize

    spec = workload.dataset
    dataset = load_dataset(Path(workload.dataset_path), spec.format, spec.system_prompt)
    rows, _ = clean(dataset.examples, spec.cleaning, lambda row: len(tokenize(tokenizer, row, 10**9).input_ids))
    train_rows, _ = split_hold_out(rows, spec.hold_out_fraction, spec.seed)
    if len(train_rows) < count:
        raise SystemExit(f"only {len(train_rows)} training rows after cleaning and the hold-out split; "
                         f"{count} are needed: lower --steps or raise --rows")
    return train_rows[:count]


def prompt_completion(rows) -> list[dict[str, Any]]:
    """Conversational prompt-completion rows for TRL: system + user as prompt, the answer as completion."""
    return [{"prompt": row.messages[:-1], "completion": row.messages[-1:]} for row in rows]


def restrict_tuneloop_data(train_module, count: int, record: dict) -> None:
    """Keep the first `count` training examples (the rows the plain recipe gets) and a short hold-out."""
    real_prepare = train_module.prepare

    def prepare(workload, tokenizer):
        data = real_prepare(workload, tokenizer)
        data.train = data.train[:count]
        data.hold_out = data.hold_out[:HOLD_OUT_KEPT]
        data.hold_out_rows = data.hold_out_rows[:HOLD_OUT_KEPT]
        record["data"] = data
        return data

    train_module.prepare = prepare


def timed_summary(step_ends: list[float], step_tokens: list[int], step_positions: list[int],
                  first_begin: float) -> dict[str, Any]:
    """Throughput over steps 2..N (step 1 is warm-up); also over all steps for reference."""
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
    summary.update(timed_steps=timed, timed_seconds=seconds, tokens=tokens, positions=positions,
                   tokens_per_second=tokens / seconds, seconds_per_step=seconds / timed,
                   all_steps_tokens_per_second=sum(step_tokens) / (step_ends[-1] - first_begin))
    return summary


# --- the plain recipe (TRL) --------------------------------------------------------------------

def plain_trainer(rows, tokenizer, path: str, output_dir: str, seed: int, steps: int, *, check: bool,
                  meter: dict, lora_init: dict | None = None):
    """SFTTrainer + SFTConfig the way the guides copy it; `check` makes it comparable step for step."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if meter["first_begin"] is None:
                meter["first_begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            meter["step_ends"].append(time.perf_counter())
            for key in ("tokens", "positions", "loss"):
                meter[f"step_{key}"].append(meter[f"current_{key}"])
                meter[f"current_{key}"] = 0

    class CountingSFTTrainer(SFTTrainer):
        """Counts the non-padding tokens (attention_mask) and the loss of every micro-batch trained."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            meter["current_tokens"] += int(mask.sum())
            meter["current_positions"] += int(mask.numel())
            if check:
                meter["batches"].append({k: inputs[k].clone() for k in ("input_ids", "attention_mask", "labels")})
            loss = super().training_step(model, inputs, num_items_in_batch)
            meter["current_loss"] += float(loss)
            return loss

    meter.update(first_begin=None, step_ends=[], step_tokens=[], step_positions=[], step_loss=[], batches=[],
                 current_tokens=0, current_positions=0, current_loss=0.0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0 if check else 0.05,
                             target_modules=PLAIN_TARGETS, task_type="CAUSAL_LM")
    extra: dict[str, Any] = {}
    if check:  # identical batches in Tuneloop's order, constant lr, no warmup
        extra = {"train_sampling_strategy": "sequential", "lr_scheduler_type": "constant", "warmup_steps": 0}
    config = SFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        gradient_checkpointing=True,
        learning_rate=2e-4,
        num_train_epochs=1,
        max_steps=steps,
        max_length=512,
        packing=False,
        completion_only_loss=True,
        bf16=False,  # SFTConfig defaults to bf16=True (autocast); the plain recipe here is fp32
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=seed,
        **extra,
    )
    trainer = CountingSFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(prompt_completion(rows)),
        processing_class=tokenizer, peft_config=peft_config, callbacks=[Clock()],
    )
    if lora_init is not None:
        copy_lora(trainer.model, lora_init)
    return trainer


def same_tokens_as_tuneloop(trainer, rows, tokenizer) -> bool:
    """Does TRL's tokenization give the ids and loss mask Tuneloop's data.tokenize gives?"""
    from tuneloop_trainer.data import IGNORE_INDEX, tokenize

    prepared = trainer.train_dataset
    for index, row in enumerate(rows):
        ours = tokenize(tokenizer, row, 512)
        if prepared[index]["input_ids"] != ours.input_ids:
            return False
        if [label != -100 for label in prepared[index]["labels"]] != [l != IGNORE_INDEX for l in ours.labels]:
            return False
    return True


def worker_plain(args) -> dict[str, Any]:
    import torch

    from tuneloop_trainer.model import load_tokenizer

    torch.manual_seed(args.seed)
    count = args.steps * EXAMPLES_PER_STEP
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as output_dir:
        workload = tuneloop_workload(args.data, output_dir, args.seed, check=False)
        tokenizer = load_tokenizer(workload.model_path)
        rows = selected_rows(workload, tokenizer, count)
        meter: dict = {}
        started = time.perf_counter()
        trainer = plain_trainer(rows, tokenizer, workload.model_path, output_dir, args.seed, args.steps,
                                check=False, meter=meter)
        trainer.train()
        wall = time.perf_counter() - started
    summary = timed_summary(meter["step_ends"], meter["step_tokens"], meter["step_positions"], meter["first_begin"])
    summary.update(name="plain recipe", examples=count, wall_seconds=wall, peak_rss_mib=peak_rss_mib(),
                   same_tokens_as_tuneloop=same_tokens_as_tuneloop(trainer, rows, tokenizer),
                   losses=meter["step_loss"], weights="fp32", batches="2 x 4, padded, grad ckpt")
    return summary


# --- Tuneloop ---------------------------------------------------------------------------------

def clock_reporter(meter: dict):
    from tuneloop_trainer.progress import ProgressReporter

    class ClockReporter(ProgressReporter):
        """Records when the loop starts and when each optimizer step has finished."""

        def __init__(self):
            super().__init__(None, quiet=True)

        def start(self, total_steps: int) -> None:
            meter["first_begin"] = time.perf_counter()

        def step(self, progress) -> None:
            meter["step_ends"].append(time.perf_counter())
            meter["step_loss"].append(progress.loss)

    meter.update(first_begin=None, step_ends=[], step_loss=[])
    return ClockReporter()


def tuneloop_step_tokens(data, training, packing: bool, pad_id: int) -> tuple[list[int], list[int]]:
    """Non-padding tokens and positions computed per optimizer step, in the loop's own order."""
    from tuneloop_trainer.batches import make_batch
    from tuneloop_trainer.train import micro_batches

    batches = micro_batches(data.train, training.micro_batch_size, training.seed, 0)
    per_step = training.gradient_accumulation_steps
    tokens, positions = [], []
    for start in range(0, len(batches), per_step):
        made = [make_batch(group, packing, pad_id) for group in batches[start:start + per_step]]
        tokens.append(sum(batch.tokens for batch in made))
        positions.append(sum(batch.input_ids.numel() for batch in made))
    return tokens, positions


def run_tuneloop(workload, count: int, meter: dict, lora_init: dict | None = None):
    import tuneloop_trainer.train as train_module
    from tuneloop_trainer.distributed import init_world

    record: dict = {}
    restrict_tuneloop_data(train_module, count, record)
    if lora_init is not None:
        real_load_model = train_module.load_model

        def load_model(*a, **k):
            model = real_load_model(*a, **k)
            copy_lora(model, lora_init)
            return model

        train_module.load_model = load_model
    training = train_module.Training(workload, clock_reporter(meter), init_world())
    result = training.run()
    return training, result, record["data"]


def worker_tuneloop(args) -> dict[str, Any]:
    import torch

    from tuneloop_trainer.model import load_tokenizer, weight_dtype

    count = args.steps * EXAMPLES_PER_STEP
    with tempfile.TemporaryDirectory(prefix="bench-tuneloop-") as output_dir:
        workload = tuneloop_workload(args.data, output_dir, args.seed, check=False)
        meter: dict = {}
        started = time.perf_counter()
        training, result, data = run_tuneloop(workload, count, meter)
        wall = time.perf_counter() - started
        pad_id = load_tokenizer(workload.model_path).pad_token_id
    tokens, positions = tuneloop_step_tokens(data, workload.training, training.packing, pad_id)
    if sum(tokens) != result.tokens_trained:
        raise SystemExit(f"token count mismatch: {sum(tokens)} counted, {result.tokens_trained} reported")
    summary = timed_summary(meter["step_ends"], tokens, positions, meter["first_begin"])
    lora = workload.method.lora
    summary.update(
        name="tuneloop", examples=count, wall_seconds=wall, peak_rss_mib=peak_rss_mib(), losses=meter["step_loss"],
        packing=training.packing, reported_tokens_trained=result.tokens_trained,
        reported_tokens_per_second=result.tokens_per_second, reported_seconds=result.seconds,
        weights=f"{str(weight_dtype(workload.training, workload.method)).replace('torch.', '')} base + fp32 LoRA",
        batches=f"{workload.training.micro_batch_size} x {workload.training.gradient_accumulation_steps}, "
                f"{'packed' if training.packing else 'padded'}",
        lora=f"r{lora.r} alpha{lora.alpha:g} dropout{lora.dropout:g} {','.join(lora.target_modules)}",
        hold_out_loss=[result.hold_out_loss_before, result.hold_out_loss_after],
        threads=torch.get_num_threads())
    return summary


# --- --check-loss ------------------------------------------------------------------------------

def reference_lora(path: str, seed: int) -> dict:
    """A seeded LoRA init (q,k,v,o, r16) both pipelines start from, copied in by parameter name."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=PLAIN_TARGETS,
                                            task_type="CAUSAL_LM"))
    return {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}


def copy_lora(model, reference: dict) -> None:
    import torch

    params = {name: param for name, param in model.named_parameters() if "lora_" in name}
    if set(params) != set(reference):
        raise SystemExit(f"LoRA parameters differ: {sorted(set(params) ^ set(reference))[:4]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(reference[name].to(param.dtype))


def rows_of(input_ids, mask, targets) -> list[tuple[list[int], list[int]]]:
    """Per row of a padded batch: its non-padding ids and next-token targets (-100: no loss)."""
    lengths = [int(row.sum()) for row in mask]
    return [(ids[:n].tolist(), t[:n].tolist()) for ids, t, n in zip(input_ids, targets, lengths)]


def trl_targets(labels):
    """TRL's labels are unshifted; Tuneloop's targets are the labels of the next position."""
    import torch

    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)


def worker_check(args) -> dict[str, Any]:
    import torch

    from tuneloop_trainer.batches import make_batch
    from tuneloop_trainer.model import load_tokenizer
    from tuneloop_trainer.train import micro_batches

    count = CHECK_STEPS * EXAMPLES_PER_STEP
    with tempfile.TemporaryDirectory(prefix="bench-check-") as output_dir:
        workload = tuneloop_workload(args.data, output_dir, args.seed, check=True)
        training = workload.training
        tokenizer = load_tokenizer(workload.model_path)
        rows = selected_rows(workload, tokenizer, count)
        init = reference_lora(workload.model_path, args.seed)

        # TRL gets the rows in the order Tuneloop's loop visits them, and samples sequentially.
        order = [i for batch in micro_batches(list(range(count)), training.micro_batch_size, training.seed, 0)
                 for i in batch]
        plain_meter: dict = {}
        trainer = plain_trainer([rows[i] for i in order], tokenizer, workload.model_path, output_dir + "/trl",
                                args.seed, CHECK_STEPS, check=True, meter=plain_meter, lora_init=init)
        same_tokens = same_tokens_as_tuneloop(trainer, [rows[i] for i in order], tokenizer)
        trainer.train()

        meter: dict = {}
        loop, result, data = run_tuneloop(workload, count, meter, lora_init=init)
        ours = [make_batch(group, False, tokenizer.pad_token_id)
                for group in micro_batches(data.train, training.micro_batch_size, training.seed, 0)]
        identical = len(ours) == len(plain_meter["batches"]) and all(
            rows_of(b["input_ids"], b["attention_mask"], trl_targets(b["labels"]))
            == rows_of(o.input_ids, o.attention_mask, o.targets)
            for b, o in zip(plain_meter["batches"], ours))

    trl_losses, our_losses = plain_meter["step_loss"], meter["step_loss"]
    diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(trl_losses, our_losses)]
    return {"trl": trl_losses, "tuneloop": our_losses, "relative_differences": diffs,
            "max_relative_difference": max(diffs) if diffs else None, "identical_batches": identical,
            "same_tokens_as_tuneloop": same_tokens, "packing": loop.packing, "examples": count,
            "threads": torch.get_num_threads()}


# --- the parent: header, children, table ------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(argv: list[str]) -> None:
    import peft
    import torch
    import transformers
    import trl

    from tuneloop_trainer.model import cpu_has_bf16

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("command:   " + shlex.join([Path(sys.executable).name] + argv))
    print(f"versions:  torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"trl {trl.__version__}, python {platform.python_version()}")
    print(f"cpu:       {cpu_name()}, {cores} usable core(s), torch threads {torch.get_num_threads()}, "
          f"bf16 support (mkldnn): {cpu_has_bf16()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.stdout.flush()


def run_child(kind: str, args, workdir: Path) -> dict[str, Any]:
    result, log = workdir / f"{kind}.json", workdir / f"{kind}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--result", str(result),
               "--steps", str(args.steps), "--seed", str(args.seed), "--data", args.data]
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, **OFFLINE_ENV))
    if code != 0 or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(f"{kind} failed (exit {code}); last lines of its log:\n" + "\n".join(tail))
    print(f"  {kind}: done in {time.perf_counter() - started:.0f}s", flush=True)
    return json.loads(result.read_text())


def print_table(plain: dict, ours: dict) -> None:
    head = ("variant", "steps timed", "tokens", "tokens/s", "s/step", "peak RSS MiB", "vs plain")
    lines = []
    for row in (plain, ours):
        lines.append((row["name"], str(row["timed_steps"]), str(row["tokens"]), f"{row['tokens_per_second']:.1f}",
                      f"{row['seconds_per_step']:.2f}", f"{row['peak_rss_mib']:.0f}",
                      f"{row['tokens_per_second'] / plain['tokens_per_second']:.2f}x"))
    widths = [max(len(cells[i]) for cells in [head] + lines) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % widths[0] if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    print(fmt.format(*head))
    print("  ".join("-" * w for w in widths))
    for cells in lines:
        print(fmt.format(*cells))


def parent(args, argv: list[str]) -> int:
    header(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        source = [line for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = source if args.rows is None else source[:args.rows]
        args.data = str(workdir / "rows.jsonl")
        Path(args.data).write_text("\n".join(rows) + "\n", encoding="utf-8")
        if args.check_loss:
            print(f"data:      {len(rows)} rows of {DATA.relative_to(REPO)}; {CHECK_STEPS} steps x "
                  f"{EXAMPLES_PER_STEP} examples (2 x 4, unpacked), seed {args.seed}")
            print("check-loss: TRL SFTTrainer vs Tuneloop's loop, same batches, same LoRA init, fp32, "
                  "lr 2e-4 constant, dropout 0", flush=True)
            check = run_child("check", args, workdir)
            return report_check(check)
        print(f"data:      {len(rows)} rows of {DATA.relative_to(REPO)}; {args.steps} optimizer steps x "
              f"{EXAMPLES_PER_STEP} examples each = {args.steps * EXAMPLES_PER_STEP} examples per variant, "
              f"seed {args.seed}; step 1 is warm-up and not timed", flush=True)
        plain = run_child("plain", args, workdir)
        ours = run_child("tuneloop", args, workdir)
    print()
    print_table(plain, ours)
    print()
    for row in (plain, ours):
        print(f"{row['name']}: {row['weights']}; batches {row['batches']}"
              + (f"; LoRA {row['lora']}" if "lora" in row else
                 "; LoRA r16 alpha32 dropout0.05 q_proj,k_proj,v_proj,o_proj"))
        print(f"  step seconds {row['step_seconds']}  (all steps incl. warm-up: "
              f"{row['all_steps_tokens_per_second']:.1f} tokens/s)")
        print(f"  positions computed / real tokens (padding overhead): {row['positions'] / row['tokens']:.2f}; "
              f"losses {[round(x, 4) for x in row['losses']]}; child wall time {row['wall_seconds']:.0f}s")
    print(f"plain recipe tokenization equals Tuneloop's: {plain['same_tokens_as_tuneloop']}")
    reported = ours["reported_tokens_per_second"]
    print(f"tuneloop's own result.tokensPerSecond: {reported:.1f} ({ours['reported_tokens_trained']} tokens over "
          f"{ours['reported_tokens_trained'] / reported:.0f}s, timed from Training() creation to the end of the "
          f"loop, so it includes data preparation, model loading and the hold-out loss before training)")
    return 0


def report_check(check: dict) -> int:
    print()
    print(f"identical micro-batches (ids and loss positions): {check['identical_batches']}; "
          f"TRL tokenization equals Tuneloop's: {check['same_tokens_as_tuneloop']}; "
          f"Tuneloop packing: {check['packing']}")
    print(f"{'step':>4}  {'TRL SFTTrainer':>16}  {'Tuneloop':>16}  {'rel. diff':>10}")
    for step, (a, b, d) in enumerate(zip(check["trl"], check["tuneloop"], check["relative_differences"]), 1):
        print(f"{step:>4}  {a:>16.8f}  {b:>16.8f}  {d:>10.2e}")
    worst = check["max_relative_difference"]
    ok = worst is not None and worst < CHECK_TOLERANCE and len(check["trl"]) == len(check["tuneloop"]) == CHECK_STEPS
    print(f"max relative difference {worst:.2e}: {'PASS' if ok else 'FAIL'} (tolerance {CHECK_TOLERANCE:g})")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of 8 examples per variant (default 6)")
    parser.add_argument("--rows", type=int, help="use only the first N rows of tickets.jsonl (default: all)")
    parser.add_argument("--seed", type=int, default=42, help="training seed of both variants (default 42)")
    parser.add_argument("--check-loss", action="store_true",
                        help="compare the first 3 steps' losses of TRL and Tuneloop on identical batches")
    parser.add_argument("--worker", choices=("plain", "tuneloop", "check"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.worker is None:
        return parent(args, [sys.argv[0]] + argv)
    random.seed(args.seed)
    worker = {"plain": worker_plain, "tuneloop": worker_tuneloop, "check": worker_check}[args.worker]
    summary = worker(args)
    Path(args.result).write_text(json.dumps(summary), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
