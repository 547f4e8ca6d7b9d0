"""The preference stage (objective dpo, kto, sft-then-dpo): TRL's DPOTrainer/KTOTrainer on the tiny random Llama,
measured on held-out pairs before and after, resumable after SIGTERM without training SFT again."""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generate_tickets import generate  # tiny_model puts examples/ on the path
from test_resilience import run_to_end, start, wait_for_step
from tiny_model import write_tickets
from tuneloop.api.finetunejob import parse_spec
from tuneloop.api.workloads import TrainerResult, TrainerWorkload, Tracking
from tuneloop_trainer.checkpoints import complete_checkpoints, step_of
from tuneloop_trainer.progress import ProgressReporter
from tuneloop_trainer.train import run

HANG_SECONDS = 600  # a guard against a hung trainer, not a speed target


def write_pairs(path: Path) -> Path:
    """40 preference pairs. Chosen is the ticket as the task writes it, rejected the same fields in reverse order:
    as long as chosen, so the untrained model prefers either about equally often, and the preference (key order)
    can be learnt and holds on pairs never trained on."""
    pairs = []
    for row in generate(40, seed=7):
        ticket = json.loads(row["output"])
        pairs.append({"prompt": f"{row['instruction']}\n\n{row['input']}", "chosen": row["output"],
                      "rejected": json.dumps(dict(reversed(ticket.items())), separators=(",", ":"))})
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """SFT rows (dataset.uri: validation and test splits) and preference pairs (write_pairs)."""
    folder = tmp_path_factory.mktemp("preference-data")
    return write_tickets(folder / "tickets.jsonl", rows=24, seed=1), write_pairs(folder / "pairs.jsonl")


def workload(model: Path, data: tuple[Path, Path], output: Path, objective: str, preference: dict | None = None,
             training: dict | None = None, **extra) -> TrainerWorkload:
    tickets, pairs = data
    spec = parse_spec({
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"uri": str(tickets), "validationFraction": 0.25, "testFraction": 0.2, "seed": 1,
                    "preferences": {"uri": str(pairs)}},  # 40 pairs: 30 to train, 10 held out
        "method": {"type": "lora", "objective": objective, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                   "preference": {"learningRate": 5e-3, "epochs": 1, **(preference or {})}},
        "training": {"epochs": 1, "learningRate": 3e-3, "microBatchSize": 4, "precision": "fp32",
                     **(training or {})},
    })
    return TrainerWorkload(job="default/tiny", model_path=str(model), dataset_path=str(tickets),
                           preferences_path=str(pairs), dataset=spec.dataset, method=spec.method,
                           training=spec.training, output_dir=str(output), preview_examples=0, **extra)


def train(work: TrainerWorkload) -> TrainerResult:
    return run(work, ProgressReporter(None, quiet=True))


def test_dpo_prefers_chosen_on_held_out_pairs_and_writes_an_adapter_peft_loads(tiny_model_dir, data, tmp_path):
    result = train(workload(tiny_model_dir, data, tmp_path / "out", "dpo", {"epochs": 2}))

    stage = result.preference
    assert (stage.objective, stage.reference, stage.beta, stage.steps) == ("dpo", "base", 0.1, 16)  # 2 x 30/4
    assert result.steps == 16
    assert stage.loss_before == pytest.approx(math.log(2), abs=1e-4)  # the adapter starts as a no-op
    assert stage.loss_after < stage.loss_before
    assert stage.margin_after > stage.margin_before
    assert stage.accuracy_after > stage.accuracy_before and stage.accuracy_after >= 0.8
    assert "chosen preferred" in stage.summary()
    # The validation loss column means what it means for sft: dataset.uri's validation rows, SFT-shaped.
    assert result.validation_loss_after != result.validation_loss_before
    assert not result.evaluations and result.best_step is None

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = Path(result.adapter_path)
    assert not (adapter / "ref").exists()  # the reference is no part of the output
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert list(model.peft_config) == ["default"]
    assert any(tensor.abs().sum() > 0 for name, tensor in load_file(adapter / "adapter_model.safetensors").items()
               if "lora_B" in name)


def test_sft_then_dpo_uses_the_sft_adapter_as_reference_and_trains_it_further(tiny_model_dir, data, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(workload(tiny_model_dir, data, tmp_path / "out", "sft-then-dpo",
                            tracking=Tracking(tracking_uri=uri, experiment="tests", run_name="tiny")))

    stage = result.preference
    assert (stage.objective, stage.reference, stage.steps) == ("dpo", "sft", 8)
    assert result.steps == 4 + 8  # SFT (12 rows / 4) then DPO (30 pairs / 4)
    # The policy starts as its reference, the SFT adapter (not the base model): DPO's loss is exactly ln 2.
    assert stage.loss_before == pytest.approx(math.log(2), abs=1e-4)
    assert stage.margin_after > stage.margin_before
    assert result.validation_loss_after < result.validation_loss_before  # SFT taught the task's answers
    sft = load_file(tmp_path / "out" / "sft-adapter" / "adapter_model.safetensors")
    final = load_file(Path(result.adapter_path) / "adapter_model.safetensors")
    assert sft.keys() == final.keys()
    assert any(not torch.equal(sft[name], final[name]) for name in sft)
    # MLflow: one step axis for the run, the SFT curves then the preference stage's own.
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)

    def steps(metric: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(result.mlflow_run_id, metric))

    assert steps("loss/train") == [1, 2, 3, 4]
    assert steps("preference/train_loss") == list(range(5, 13))
    assert steps("preference/margin") == [4, 12]
    margins = sorted(client.get_metric_history(result.mlflow_run_id, "preference/margin"), key=lambda m: m.step)
    assert [m.value for m in margins] == pytest.approx([stage.margin_before, stage.margin_after])
    params = client.get_run(result.mlflow_run_id).data.params
    assert params["objective"] == "sft-then-dpo" and params["preference.beta"] == "0.1"
    assert params["total_steps"] == "12"


def test_kto_learns_from_the_pairs_as_desirable_and_undesirable_answers(tiny_model_dir, data, tmp_path):
    result = train(workload(tiny_model_dir, data, tmp_path / "out", "kto",
                            {"desirableWeight": 1.0, "undesirableWeight": 1.5}))

    stage = result.preference
    assert (stage.objective, stage.reference, stage.steps) == ("kto", "base", 15)  # 60 rows / 4
    assert math.isfinite(stage.loss_before) and stage.loss_after < stage.loss_before
    assert stage.margin_before is None and stage.accuracy_before is None
    assert result.train_loss is not None and result.adapter_path


def test_a_preference_stage_stopped_by_sigterm_resumes_from_its_checkpoint_without_training_sft_again(
        tiny_model_dir, data, tmp_path):
    # SFT: 4 steps; DPO: 3 epochs of 8 steps, a checkpoint every 3. The waits are guards against a hang, not
    # speed targets: on a loaded machine a DPO step of the tiny model takes seconds, not the usual fraction.
    work = workload(tiny_model_dir, data, tmp_path / "out", "sft-then-dpo", {"epochs": 3},
                    {"checkpoints": {"everySteps": 3, "keepLast": 2}})
    folder, root = tmp_path / "run", tmp_path / "out" / "checkpoints-preference"
    process = start(work, folder, sys.executable)
    wait_for_step(folder, 4 + 5, process, timeout=HANG_SECONDS)  # SFT's steps, then the preference stage's
    process.send_signal(signal.SIGTERM)
    assert json.loads((folder / "progress.json").read_text())["totalSteps"] == 4 + 24
    assert process.wait(timeout=HANG_SECONDS) == 143
    preempted = TrainerResult.model_validate_json((folder / "result.json").read_text())
    assert preempted.reason == "Preempted" and "preference stage step" in preempted.message
    stopped_at = step_of(complete_checkpoints(root)[-1])
    assert 5 <= stopped_at < 24
    sft_adapter = tmp_path / "out" / "sft-adapter" / "adapter_model.safetensors"
    sft_written = sft_adapter.stat().st_mtime_ns

    code, result = run_to_end(work, folder)

    assert code == 0, result.message
    log = (folder / "log.txt").read_text()
    assert "the SFT stage was finished by an earlier attempt (4 steps)" in log
    assert f"resuming from {root}/checkpoint-{stopped_at} (step {stopped_at})" in log
    assert sft_adapter.stat().st_mtime_ns == sft_written
    assert result.resumed_from_step == 4 + stopped_at
    assert result.steps == 4 + 24 and result.preference.steps == 24
    # Measured at the start of the stage by the first attempt: policy == reference.
    assert result.preference.loss_before == pytest.approx(math.log(2), abs=1e-4)


def test_a_dpo_loss_near_zero_is_no_divergence_but_one_far_above_ln_2_is():
    from transformers import TrainerState

    from tuneloop_trainer.callbacks import DivergenceGuard, LossDiverged

    guard = DivergenceGuard(spike_factor=10.0, floor=math.log(2), stage="preference stage",
                            learning_rate_field="spec.method.preference.learningRate")
    for step, loss in enumerate([0.69, 0.01, 0.0004, 0.05, 0.3], start=1):  # an SFT guard would stop at 0.05
        guard.on_log(None, TrainerState(global_step=step), None, logs={"loss": loss})
    with pytest.raises(LossDiverged, match="preference stage loss exploded .*spec.method.preference.learningRate"):
        guard.on_log(None, TrainerState(global_step=6), None, logs={"loss": 7.5})


def test_kto_with_one_row_per_micro_batch_names_the_setting(tiny_model_dir, data, tmp_path):
    from tuneloop.api.common import SpecError
    from tuneloop_trainer.preference import preference_config

    with pytest.raises(SpecError, match="spec: method.objective kto needs training.microBatchSize >= 2"):
        workload(tiny_model_dir, data, tmp_path / "out", "kto", training={"microBatchSize": 1})
    # A workload file written by hand, past the API's rule, is refused by the trainer with the same field.
    work = workload(tiny_model_dir, data, tmp_path / "out", "kto", training={"microBatchSize": 2})
    work.training.micro_batch_size = 1
    with pytest.raises(ValueError, match="spec.training.microBatchSize: objective kto needs at least 2"):
        preference_config(work, tmp_path / "checkpoints", total_steps=10)
