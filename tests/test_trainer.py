"""The trainer as a program (spec file in, result file out) and the local runtime, on a tiny random Llama."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_model import build_tiny_tokenizer, write_tickets
from tuneloop.api.finetunejob import parse_manifest
from tuneloop.api.workloads import TrainerResult, TrainerWorkload
from tuneloop.runtime.local import LocalRuntime



@pytest.fixture(scope="module")
def tickets(tmp_path_factory) -> Path:
    return write_tickets(tmp_path_factory.mktemp("data") / "tickets.jsonl", rows=40, seed=1)


def manifest(model: Path, dataset: Path, **training) -> dict:
    return {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny"},
        "spec": {
            "baseModel": {"uri": f"file://{model}"},
            "dataset": {"uri": str(dataset), "testFraction": 0.2, "seed": 3},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "training": {"epochs": 3, "learningRate": 5e-3, "microBatchSize": 4, "precision": "fp32", **training},
            "output": {"previewExamples": 2},
            "evaluation": {"maxNewTokens": 16, "bootstrap": {"samples": 200}},
        },
    }


def run_trainer(workload: TrainerWorkload, folder: Path) -> tuple[int, TrainerResult]:
    spec = folder / "workload.json"
    spec.write_text(workload.model_dump_json(by_alias=True), encoding="utf-8")
    result = folder / "result.json"
    process = subprocess.run(
        [sys.executable, "-m", "tuneloop_trainer", "--spec", str(spec), "--result", str(result)],
        capture_output=True, text=True, timeout=300,
    )
    return process.returncode, TrainerResult.model_validate_json(result.read_text())


def workload_for(model: Path, dataset: Path, output: Path, **training) -> TrainerWorkload:
    spec = parse_manifest(manifest(model, dataset, **training)).spec
    return TrainerWorkload(job="default/tiny", model_path=str(model), dataset_path=str(dataset),
                           dataset=spec.dataset, method=spec.method, training=spec.training,
                           output_dir=str(output), preview_examples=2)


def test_trainer_learns_and_writes_a_safetensors_adapter(tiny_model_dir, tickets, tmp_path):
    code, result = run_trainer(workload_for(tiny_model_dir, tickets, tmp_path / "out"), tmp_path)

    assert code == 0, result.message
    assert result.succeeded
    assert result.validation_loss_after < result.validation_loss_before
    assert (result.dataset.rows, result.dataset.train_rows, result.dataset.validation_rows,
            result.dataset.test_rows) == (40, 28, 4, 8)
    assert result.steps == 3 * 7  # 28 rows / 4 per micro-batch, 3 epochs
    assert result.achieved_tflops > 0 and (result.device, result.devices, result.mfu) == ("cpu", 0, None)
    adapter = Path(result.adapter_path)
    files = {path.name for path in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    test_rows = Path(result.test_path).read_text().splitlines()
    assert len(test_rows) == 8 and "messages" in json.loads(test_rows[0])
    assert len(result.previews) == 2 and all(preview.reference for preview in result.previews)


def test_qlora_without_cuda_fails_with_a_clear_reason(tiny_model_dir, tickets, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    workload = workload_for(tiny_model_dir, tickets, tmp_path / "out")
    workload.method.type = "qlora"
    code, result = run_trainer(workload, tmp_path)

    assert code == 1
    assert result.reason == "UnsupportedHardware"
    assert "CUDA" in result.message and "spec.method.type" in result.message
    assert not (tmp_path / "out" / "adapter").exists()


def test_bad_data_fails_before_training_naming_file_and_line(tiny_model_dir, tmp_path):
    dataset = tmp_path / "broken.jsonl"
    dataset.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', encoding="utf-8")
    code, result = run_trainer(workload_for(tiny_model_dir, dataset, tmp_path / "out"), tmp_path)

    assert code == 1
    assert result.reason == "InvalidData"
    assert f"{dataset}:2: broken JSON" in result.message
    assert not (tmp_path / "out" / "adapter").exists()


def collated(examples, padding_free: bool, pad_token_id: int) -> dict:
    """A micro-batch as TRL's collator makes it: one padding-free row, or padded rows with a mask."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=padding_free)
    return collator([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])


def summed_loss(model, batch: dict):
    """The model's own loss (mean over answer tokens) times the number of answer tokens."""
    targets = int((batch["labels"][:, 1:] != -100).sum())
    return model(**batch, use_cache=False).loss * targets


@pytest.mark.parametrize("attention", ["sdpa", "tuneloop"])
def test_padding_free_and_padded_batches_give_the_same_loss(tiny_model_dir, tickets, attention):
    from tuneloop_trainer.attention import ATTENTION
    from tuneloop.workload_data.rows import load_jsonl
    from tuneloop_trainer.tokens import tokenize
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    examples = [tokenize(tokenizer, row, 512) for row in load_jsonl(tickets).examples[:5]]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation=ATTENTION if attention == "tuneloop" else attention)
    pad = tokenizer.pad_token_id
    packed, padded = collated(examples, True, pad), collated(examples, False, pad)
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples)) and "attention_mask" in padded
    with torch.no_grad():
        assert float(summed_loss(model, packed)) == pytest.approx(float(summed_loss(model, padded)), rel=1e-4)
        # Attention must not cross example boundaries: the last example alone scores the same as inside the row.
        alone = float(summed_loss(model, collated(examples[-1:], True, pad)))
        without_last = float(summed_loss(model, collated(examples[:-1], True, pad)))
        assert float(summed_loss(model, packed)) == pytest.approx(alone + without_last, rel=1e-4)


def test_per_example_attention_gives_the_block_diagonal_masks_loss_and_gradients(tiny_model_dir, tickets, monkeypatch):
    """The CPU fast path (attention per example, no row x row mask) changes no sum and no gradient."""
    import tuneloop_trainer.attention as attention
    from tuneloop.workload_data.rows import load_jsonl
    from tuneloop_trainer.tokens import tokenize
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    examples = [tokenize(tokenizer, row, 512) for row in load_jsonl(tickets).examples[:6]]
    batch = collated(examples, True, tokenizer.pad_token_id)
    lengths = [len(e.input_ids) for e in examples]
    row = torch.empty(1, 2, sum(lengths), 8)
    assert attention.example_lengths(row, row, None, batch["cu_seq_lens_q"], None) == lengths
    assert attention.example_lengths(row, row, None, None, batch["position_ids"]) == lengths
    grads = []
    for implementation in ("sdpa", attention.ATTENTION):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                     attn_implementation=implementation)
        if implementation == attention.ATTENTION:  # the per-example path, never the fallback
            monkeypatch.setattr(attention, "sdpa_attention_forward", None)
        loss = summed_loss(model, batch)
        loss.backward()
        grads.append((float(loss.detach()), [p.grad.clone() for p in model.parameters()]))
    (reference, expected), (loss, actual) = grads
    assert loss == pytest.approx(reference, rel=1e-5)
    for want, got in zip(expected, actual):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_bit_dropout_drops_at_rate_p_scales_the_rest_and_follows_the_seed():
    from tuneloop_trainer.model import BitDropout

    dropout = BitDropout(0.1)
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x)
    assert float((y == 0).float().mean()) == pytest.approx(0.1, abs=2e-3)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.9)]
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the same mask and scale
    torch.manual_seed(3)
    assert torch.equal(dropout(x), y)
    assert dropout.eval()(x) is x


def test_local_runtime_trains_evaluates_registers_and_a_second_run_reuses_it(tiny_model_dir, tickets, tmp_path):
    from tuneloop.runtime.local import local_mlflow, prepare_tracking

    job = parse_manifest(manifest(tiny_model_dir, tickets, epochs=1))
    events = []
    tracking_uri, artifacts = local_mlflow(tmp_path / "work")
    (tmp_path / "work" / "mlflow").mkdir(parents=True)
    prepare_tracking(tracking_uri, artifacts)
    runtime = LocalRuntime(workdir=tmp_path / "work", manifest_dir=tmp_path, on_event=events.append,
                           tracking_uri=tracking_uri)

    status = runtime.run(job, poll_seconds=0.2)

    assert status.phase == "Succeeded", status.message
    assert status.training.validation_loss_after < status.training.validation_loss_before
    assert status.training.adapter_uri.startswith("file://")
    reasons = [event.reason for event in events]
    assert reasons[:5] == ["ValidatingStarted", "DataValidated", "TrainingStarted", "Trained", "EvaluatingStarted"]
    assert reasons[-3:] == ["RegisteringStarted", "Registered", "Succeeded"]
    conditions = {condition.type: condition.status for condition in status.conditions}
    assert {"SpecValid", "DataValidated", "Trained", "Evaluated", "GatePassed", "Registered",
            "Complete"} <= set(conditions)
    assert status.data_report.training_rows == status.dataset.train_rows
    assert status.evaluation.test.examples == status.dataset.test_rows
    assert (status.registry.model_name, status.registry.version) == ("tiny", "1")
    result_file = runtime.workload_dir(job, "tiny-train") / "result.json"
    written = result_file.stat().st_mtime_ns

    again = LocalRuntime(workdir=tmp_path / "work", manifest_dir=tmp_path, on_event=events.append,
                         tracking_uri=tracking_uri).run(job)

    assert again.phase == "Succeeded"
    assert result_file.stat().st_mtime_ns == written  # nothing was trained twice
    assert len(events) == len(reasons)


def test_a_local_run_without_mlflow_refuses_to_register(tiny_model_dir, tickets, tmp_path):
    job = parse_manifest(manifest(tiny_model_dir, tickets, epochs=1))
    status = LocalRuntime(workdir=tmp_path / "work", manifest_dir=tmp_path).run(job)
    assert status.phase == "Failed"
    assert "spec.registry.enabled: this run has no MLflow tracking URI" in status.message


def test_the_adapters_chat_template_defaults_to_the_system_prompt_of_training(tiny_model_dir, tickets, tmp_path):
    from transformers import AutoTokenizer

    workload = workload_for(tiny_model_dir, tickets, tmp_path / "out", epochs=1)
    workload.dataset.system_prompt = 'You are Acme\'s ticket router. Answer "with the record" only.'
    code, result = run_trainer(workload, tmp_path)

    assert code == 0, result.message
    # A client that sends only a user message prompts the model as it was trained (the export stage's merged
    # model keeps this template: tests/test_export.py).
    for folder in (Path(result.adapter_path),):
        assert (folder / "chat_template.jinja").is_file()  # what vLLM's --chat-template reads
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Parcel lost"}], tokenize=False)
        assert workload.dataset.system_prompt in prompt
        own = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Parcel lost"}], tokenize=False)
        assert "Be brief." in own and workload.dataset.system_prompt not in own


def test_dora_and_rslora_reach_peft_and_the_saved_adapter(tiny_model_dir, tickets, tmp_path):
    workload = workload_for(tiny_model_dir, tickets, tmp_path / "out", epochs=1)
    workload.method.lora.use_dora, workload.method.lora.use_rslora = True, True
    code, result = run_trainer(workload, tmp_path)

    assert code == 0, result.message
    config = json.loads((Path(result.adapter_path) / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["use_rslora"] is True


def test_vllm_loads_the_adapters_the_operator_lets_through_and_refuses_the_others(tiny_model_dir, tickets, tmp_path):
    """vLLM's own adapter check (PEFTHelper.validate_legal, tests/vllm_cli.py) on adapters trained
    here agrees with the operator's: the rank against maxLoraRank, and DoRA (vLLM serves none)."""
    from vllm_cli import vllm_checks

    from tuneloop.api.modeldeployment import lora_options, parse_manifest as parse_deployment, unservable_adapter

    adapters = {}
    for name, r, dora in (("lora-16", 16, False), ("dora-8", 8, True)):
        workload = workload_for(tiny_model_dir, tickets, tmp_path / name, epochs=1)
        workload.method.lora.r, workload.method.lora.use_dora = r, dora
        code, result = run_trainer(workload, tmp_path)
        assert code == 0, result.message
        config = json.loads((Path(result.adapter_path) / "adapter_config.json").read_text())
        adapters[name] = (result.adapter_path, lora_options(config))  # the tag registration writes
    cases = [("lora-16", 16), ("lora-16", 32), ("lora-16", 8), ("dora-8", 8)]
    verdicts = vllm_checks(adapters=[(adapters[name][0], rank) for name, rank in cases])["adapters"]
    assert verdicts[:2] == [None, None]
    assert "LoRA rank 16 is greater than max_lora_rank 8" in verdicts[2]
    assert "vLLM does not yet support DoRA" in verdicts[3]
    for (name, rank), verdict in zip(cases, verdicts):
        md = parse_deployment({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelDeployment",
                               "metadata": {"name": "tickets"}, "spec": {
                                   "baseModel": {"name": "tiny"}, "adapter": {"name": "tickets", "version": "1"},
                                   "serving": {"maxLoraRank": rank}}})
        ours = unservable_adapter(md.spec, "1", adapters[name][1])
        assert (ours is None) == (verdict is None), (name, rank, ours, verdict)


def test_a_killed_local_run_leaves_no_trainer_behind(tiny_model_dir, tickets, tmp_path):
    """SIGKILL to `tuneloop run` (a timeout, an OOM kill) reaches its trainer as SIGTERM: it checkpoints and ends."""
    import signal
    import time

    import yaml

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest(tiny_model_dir, tickets, epochs=100)))
    cli = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "run", str(tmp_path / "job.yaml"), "--local",
                            "--workdir", str(tmp_path / "work")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def training() -> bool:
        for progress in (tmp_path / "work").glob("tiny/*/tiny-train/progress.json"):
            try:
                return json.loads(progress.read_text())["stage"] == "training"
            except (OSError, ValueError):
                return False
        return False

    deadline = time.monotonic() + 120
    while not training():
        assert time.monotonic() < deadline and cli.poll() is None, "the trainer did not start training"
        time.sleep(0.1)
    cli.send_signal(signal.SIGKILL)
    cli.wait(timeout=10)
    (folder,) = (tmp_path / "work").glob("tiny/*/tiny-train")
    while not (folder / "result.json").is_file():
        assert time.monotonic() < deadline + 30, "the trainer outlived the run that started it"
        time.sleep(0.1)
    assert TrainerResult.model_validate_json((folder / "result.json").read_text()).reason == "Preempted"


def test_the_cpu_loss_equals_trls_fused_head_loss_and_gradients(tiny_model_dir, tickets, tmp_path):
    """On CPUs the trainer computes logits at answer positions only, in the model's dtype: same sum, same grads."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tuneloop.workload_data.rows import load_jsonl
    from tuneloop_trainer.tokens import tokenize
    from tuneloop_trainer.sft import as_dataset, sft_trainer_class

    tokenizer = build_tiny_tokenizer()
    examples = [tokenize(tokenizer, row, 512) for row in load_jsonl(tickets).examples[:6]]
    config = SFTConfig(output_dir=str(tmp_path), padding_free=True, max_length=None, report_to="none",
                       dataset_kwargs={"skip_prepare_dataset": True}, use_cpu=True)
    results = []
    for trainer_class in (SFTTrainer, sft_trainer_class()):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        trainer = trainer_class(model=model, args=config, train_dataset=as_dataset(examples),
                                processing_class=tokenizer)
        batch = trainer.data_collator([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
        loss = trainer.compute_loss(model, batch, num_items_in_batch=None)
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in model.parameters()]))
    (reference, expected), (loss, actual) = results
    assert sft_trainer_class() is not SFTTrainer or torch.cuda.is_available()
    assert loss == pytest.approx(reference, rel=1e-5)
    for want, got in zip(expected, actual):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
