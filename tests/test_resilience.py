"""Training that survives: checkpoints, SIGTERM/SIGKILL and resume, early stopping, divergence,
MLflow metrics and torchrun data parallelism, on a tiny random Llama."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_model import write_tickets
from tuneloop.api.finetunejob import parse_spec
from tuneloop.api.workloads import TrainerResult, TrainerWorkload, Tracking
from tuneloop_trainer.checkpoints import COMPLETE, complete_checkpoints, mark_complete, step_of



@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tickets(tmp_path_factory.mktemp("data") / "tickets.jsonl", rows=48, seed=5)


def workload(tiny_model_dir: Path, dataset: Path, output: Path, training: dict | None = None, **extra) -> TrainerWorkload:
    spec = parse_spec({
        "baseModel": {"uri": f"file://{tiny_model_dir}"},
        "dataset": {"uri": str(dataset), "validationFraction": 0.08, "testFraction": 0.15, "seed": 1},  # 36 to train
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "training": {"epochs": 3, "learningRate": 3e-3, "microBatchSize": 4, "precision": "fp32",
                     **(training or {})},
    })
    return TrainerWorkload(job="default/tiny", model_path=str(tiny_model_dir), dataset_path=str(dataset),
                           dataset=spec.dataset, method=spec.method, training=spec.training,
                           output_dir=str(output), preview_examples=0, **extra)


def start(work: TrainerWorkload, folder: Path, *prefix: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(work.model_dump_json(by_alias=True), encoding="utf-8")
    (folder / "result.json").unlink(missing_ok=True)
    command = [*prefix, "-m", "tuneloop_trainer", "--spec", str(folder / "spec.json"),
               "--result", str(folder / "result.json"), "--progress", str(folder / "progress.json")]
    log = open(folder / "log.txt", "a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def run_to_end(work: TrainerWorkload, folder: Path, *prefix: str) -> tuple[int, TrainerResult]:
    process = start(work, folder, *(prefix or (sys.executable,)))
    code = process.wait(timeout=600)
    return code, TrainerResult.model_validate_json((folder / "result.json").read_text())


def wait_for_step(folder: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (folder / "log.txt").read_text()[-2000:]
        try:
            if json.loads((folder / "progress.json").read_text()).get("step", 0) >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def adapter_weights(result: TrainerResult) -> dict[str, torch.Tensor]:
    return load_file(Path(result.adapter_path) / "adapter_model.safetensors")


def test_sigterm_then_sigkill_resume_continues_the_step_count_and_matches_an_uninterrupted_run(
        tiny_model_dir, dataset, tmp_path):
    # Long enough (36 training rows / 4 per micro-batch = 9 steps an epoch, 180 in all) to stop it midway.
    training = {"epochs": 20, "checkpoints": {"everySteps": 3, "keepLast": 2}}
    code, reference = run_to_end(workload(tiny_model_dir, dataset, tmp_path / "ref", training), tmp_path / "ref-run")
    assert code == 0 and reference.steps == 180

    work, folder = workload(tiny_model_dir, dataset, tmp_path / "out", training), tmp_path / "run"
    root = tmp_path / "out" / "checkpoints"
    process = start(work, folder, sys.executable)
    wait_for_step(folder, 5, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    preempted = TrainerResult.model_validate_json((folder / "result.json").read_text())
    assert preempted.reason == "Preempted"
    stopped_at = step_of(complete_checkpoints(root)[-1])
    assert 5 <= stopped_at < 180

    process = start(work, folder, sys.executable)
    wait_for_step(folder, stopped_at + 7, process)
    process.send_signal(signal.SIGKILL)  # no chance to save: the periodic checkpoints must do
    process.wait(timeout=30)
    (root / "checkpoint-999999").mkdir()  # a write cut short (no COMPLETE marker): never to be used
    complete = complete_checkpoints(root)
    assert 1 <= len(complete) <= 2 and stopped_at < step_of(complete[-1]) < 180
    # The newest complete checkpoint cannot be loaded (say its disk sector went bad): the one before must do.
    weights = complete[-1] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # Rarely the kill lands while the Trainer deletes the older one (its rotation): then none is usable.
    from tuneloop_trainer.train import loadable
    older = complete[:-1]
    fallback = step_of(older[-1]) if older and loadable(older[-1]) is None else None

    code, result = run_to_end(work, folder)

    assert code == 0, result.message
    assert result.resumed_from_step == fallback
    assert result.steps == 180
    log = (folder / "log.txt").read_text()
    assert f"resuming from {root}/checkpoint-{stopped_at} (step {stopped_at})" in log
    assert f"checkpoint {complete[-1]} cannot be loaded (adapter_model.safetensors" in log
    if fallback is not None:
        assert f"resuming from {root}/checkpoint-{fallback} (step {fallback})" in log
    assert not (root / "checkpoint-999999").exists()
    # Same data order, same schedule, same optimizer and RNG state: the same adapter as without interruptions.
    ours, theirs = adapter_weights(result), adapter_weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5)
    assert result.validation_loss_before == pytest.approx(reference.validation_loss_before)


def test_a_checkpoint_is_complete_only_with_its_marker_written_after_its_files(tmp_path):
    from tuneloop_trainer.checkpoints import remove_incomplete

    for step in (4, 8, 12):
        (tmp_path / f"checkpoint-{step}" / "nested").mkdir(parents=True)
        (tmp_path / f"checkpoint-{step}" / "nested" / "optimizer.pt").write_bytes(b"state")
    mark_complete(tmp_path / "checkpoint-4")
    mark_complete(tmp_path / "checkpoint-12")
    (tmp_path / "checkpoint-12" / COMPLETE).unlink()  # cut short before the marker
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-4"]
    remove_incomplete(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]


def test_a_complete_checkpoint_that_lost_a_file_is_not_resumed_from(tmp_path):
    """The Trainer deletes old checkpoints with rmtree: a SIGKILL during it can leave the marker, not the weights."""
    from tuneloop_trainer.train import loadable

    folder = tmp_path / "checkpoint-9"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "trainer_state.json").write_text("{}")
    mark_complete(folder)
    assert loadable(folder) is not None  # these bytes are no safetensors file
    (folder / "adapter_model.safetensors").unlink()
    assert loadable(folder) == "adapter_model.safetensors is missing"


def test_early_stopping_outputs_the_best_checkpoint(tiny_model_dir, dataset, tmp_path):
    # min_delta this large means nothing after the first evaluation counts as an improvement.
    training = {"epochs": 5, "earlyStopping": {"enabled": True, "evalEverySteps": 3, "patience": 2, "minDelta": 5.0}}
    code, result = run_to_end(workload(tiny_model_dir, dataset, tmp_path / "out", training), tmp_path / "run")

    assert code == 0, result.message
    assert result.stopped_early
    assert [e.step for e in result.evaluations] == [3, 6, 9]
    best = min(result.evaluations, key=lambda e: e.validation_loss)
    assert result.steps == 9 and result.best_step == best.step
    assert result.validation_loss_after == pytest.approx(best.validation_loss, rel=1e-4)
    kept = load_file(tmp_path / "out" / "checkpoints" / f"checkpoint-{best.step}" / "adapter_model.safetensors")
    saved = adapter_weights(result)
    assert saved.keys() == kept.keys()
    for name, tensor in kept.items():
        torch.testing.assert_close(saved[name], tensor)


def test_exploding_loss_stops_with_a_named_reason_and_keeps_the_last_good_checkpoint(tiny_model_dir, dataset, tmp_path):
    # A random tiny model cannot really explode, so the threshold is set just above the lowest loss:
    # the first step whose loss rises trips it.
    training = {"learningRate": 1.0, "lossSpikeFactor": 1.001, "checkpoints": {"everySteps": 1, "keepLast": 1}}
    code, result = run_to_end(workload(tiny_model_dir, dataset, tmp_path / "out", training), tmp_path / "run")

    assert code == 1
    assert result.reason == "LossDiverged"
    assert "exploded" in result.message and "learningRate" in result.message
    failed_at = int(result.message.split(" at step ")[1].split()[0])
    (kept,) = complete_checkpoints(tmp_path / "out" / "checkpoints")
    assert step_of(kept) == failed_at - 1  # the last good step is kept
    assert not (tmp_path / "out" / "adapter").exists()


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_a_non_finite_loss_is_divergence(loss):
    from transformers import TrainerState

    from tuneloop_trainer.callbacks import DivergenceGuard, LossDiverged

    guard = DivergenceGuard(spike_factor=10.0)
    guard.on_log(None, TrainerState(global_step=6), None, logs={"loss": 1.0})
    with pytest.raises(LossDiverged, match="became"):
        guard.on_log(None, TrainerState(global_step=7), None, logs={"loss": loss})


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant", "warmup-stable-decay"])
def test_learning_rate_schedules(scheduler, tiny_model_dir, dataset, tmp_path):
    """As the Trainer builds the schedule from the SFTConfig that the spec maps to."""
    from transformers import get_scheduler

    from tuneloop_trainer.sft import sft_config

    work = workload(tiny_model_dir, dataset, tmp_path, {"lrScheduler": scheduler, "warmupRatio": 0.1,
                                                        "learningRate": 1e-3, "epochs": 1, "microBatchSize": 1})
    config = sft_config(work, tmp_path / "checkpoints", train_examples=100)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    schedule = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.get_warmup_steps(100),
                             num_training_steps=100, scheduler_specific_kwargs=config.lr_scheduler_kwargs)
    rates = []
    for _ in range(100):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.0 and rates[10] == pytest.approx(1e-3)  # linear warmup over 10 steps
    if scheduler == "constant":
        assert rates[99] == pytest.approx(1e-3)
    elif scheduler == "warmup-stable-decay":
        assert rates[50] == pytest.approx(1e-3) and rates[99] < 1e-4  # stable, then decays in the last 20
    else:
        assert rates[99] < 1e-4 and rates[50] < 1e-3


def test_metrics_and_parameters_reach_a_real_mlflow(tiny_model_dir, dataset, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    work = workload(tiny_model_dir, dataset, tmp_path / "out", {"epochs": 1},
                    tracking=Tracking(tracking_uri=uri, experiment="tests", run_name="tiny"))
    code, result = run_to_end(work, tmp_path / "run")

    assert code == 0, result.message
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lora.r"] == "4" and run.data.params["method"] == "lora"
    losses = client.get_metric_history(result.mlflow_run_id, "loss/train")
    # every step: the operator reads the latest one's step for live progress
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == list(range(1, result.steps + 1))
    assert {"train/learning_rate", "train/tokens_per_second", "loss/validation"} <= set(run.data.metrics)


def test_unreachable_mlflow_does_not_stop_training(tiny_model_dir, dataset, tmp_path):
    work = workload(tiny_model_dir, dataset, tmp_path / "out", {"epochs": 1},
                    tracking=Tracking(tracking_uri="http://127.0.0.1:9", experiment="tests"))
    env_timeout = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        code, result = run_to_end(work, tmp_path / "run")
    finally:
        if env_timeout is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    assert code == 0, result.message
    assert result.mlflow_run_id is None
    assert "MLflow at http://127.0.0.1:9 is not usable" in (tmp_path / "run" / "log.txt").read_text()


def test_two_process_torchrun_produces_one_adapter(tiny_model_dir, dataset, tmp_path):
    single_code, single = run_to_end(workload(tiny_model_dir, dataset, tmp_path / "one", {"epochs": 2}), tmp_path / "run1")
    code, result = run_to_end(
        workload(tiny_model_dir, dataset, tmp_path / "two", {"epochs": 2}), tmp_path / "run2",
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
    )

    assert single_code == 0 and code == 0, result.message
    assert result.steps == 10  # 9 micro-batches an epoch shared by 2 processes: 5 steps an epoch
    assert single.steps == 18
    adapters = [path for path in (tmp_path / "two").glob("**/adapter_model.safetensors")
                if "checkpoints" not in path.parts]
    assert adapters == [tmp_path / "two" / "adapter" / "adapter_model.safetensors"]
    assert result.validation_loss_after < result.validation_loss_before
