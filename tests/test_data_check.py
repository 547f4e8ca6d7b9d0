"""The Validating stage's program, `python -m tuneloop_trainer.check_data`: on a CPU, with the base
model's tokenizer only, it reads every row and either reports what training will see or names every
bad row; a bad dataset fails a FineTuneJob before any trainer starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tiny_model import write_tickets

from tuneloop.api.finetunejob import DatasetSpec, MethodSpec, TrainingSpec, parse_manifest
from tuneloop.api.workloads import TERMINATION_MESSAGE_LIMIT, DataCheckResult, DataCheckWorkload
from tuneloop.runtime.local import LocalRuntime


def check_data(tmp_path: Path, model: Path, rows: str, **workload) -> tuple[subprocess.CompletedProcess, dict, str]:
    (tmp_path / "rows.jsonl").write_text(rows, encoding="utf-8")
    workload = {"dataset": DatasetSpec(uri="rows.jsonl", format="alpaca"), "method": MethodSpec(), **workload}
    spec = DataCheckWorkload(job="ml/acme", model_path=str(model), dataset_path=str(tmp_path / "rows.jsonl"),
                             training=TrainingSpec(epochs=2, micro_batch_size=4, gradient_accumulation_steps=2,
                                                   max_seq_length=512),
                             output_dir=str(tmp_path / "unused"), **workload)
    (tmp_path / "workload.json").write_text(spec.model_dump_json(by_alias=True), encoding="utf-8")
    process = subprocess.run(
        [sys.executable, "-m", "tuneloop_trainer.check_data", "--spec", str(tmp_path / "workload.json"),
         "--result", str(tmp_path / "result.json"), "--termination-log", str(tmp_path / "termination-log")],
        capture_output=True, text=True, timeout=300)
    result = json.loads((tmp_path / "result.json").read_text())
    return process, result, (tmp_path / "termination-log").read_text()


def test_good_data_is_reported_as_training_will_see_it(tmp_path, tiny_model_dir):
    write_tickets(tmp_path / "tickets.jsonl", 60, seed=4)

    process, result, termination = check_data(tmp_path, tiny_model_dir, (tmp_path / "tickets.jsonl").read_text(),
                                              world_size=2)

    assert process.returncode == 0, process.stderr
    checked = DataCheckResult.model_validate(result)
    assert checked.succeeded and checked.dataset.rows == 60 and checked.dataset.format == "alpaca"
    report = checked.report
    assert (checked.dataset.validation_rows, checked.dataset.test_rows) == (6, 6)
    assert report.training_rows == checked.dataset.train_rows == 48
    # 48 rows over 2 processes in micro-batches of 4 -> 6 per process, accumulated by 2 -> 3 steps an epoch
    assert report.estimated_steps == 6 and report.max_seq_length == 512
    assert sum(bin.rows for bin in report.token_lengths) == 48
    assert report.token_lengths[-1].tokens == "> 512 (truncated)"
    assert "steps: about 6 optimizer steps (2 epoch(s))" in process.stdout  # the pod's log says it too
    assert json.loads(termination)["report"]["estimatedSteps"] == 6
    assert not (tmp_path / "unused").exists()  # it reads; it writes nothing next to the training's output


def test_every_bad_row_is_named_by_line_in_bounded_output_and_never_a_traceback(tmp_path, tiny_model_dir):
    good = json.dumps({"instruction": "Route this.", "output": "BIL"})
    rows = [good] * 10 + ["[" * 100_000 + "]" * 100_000, '{"text": ' + "9" * 5000 + "}",
                          '{"instruction": "a\\ud800", "output": "x"}'] + ['{"instruction": "x"}'] * 3000

    process, result, termination = check_data(tmp_path, tiny_model_dir, "\n".join(rows) + "\n")

    assert process.returncode == 1
    assert "Traceback" not in process.stdout + process.stderr
    assert result["reason"] == "InvalidData" and result["badRows"] == 3003
    assert "3,003 bad rows of 3,013" in result["message"]
    assert "rows.jsonl:11: broken JSON: nested deeper than a dataset row can be" in result["message"]
    assert "rows.jsonl:13: field 'instruction' holds a lone UTF-16 surrogate" in result["message"]
    assert len(termination) <= TERMINATION_MESSAGE_LIMIT and json.loads(termination)["badRows"] == 3003


def test_every_row_cut_before_its_answer_is_named(tmp_path, tiny_model_dir):
    write_tickets(tmp_path / "tickets.jsonl", 40, seed=4)
    rows = (tmp_path / "tickets.jsonl").read_text().splitlines()
    rows[5:7] = [json.dumps({"instruction": f"case {n}: " + " ".join(f"w{n}x{i}" for i in range(2000)),
                             "output": "an answer"}) for n in range(2)]

    process, result, _ = check_data(tmp_path, tiny_model_dir, "\n".join(rows) + "\n")

    assert process.returncode == 1 and result["reason"] == "InvalidData"
    assert result["message"].count("no answer tokens left") == result["badRows"] == 2, result["message"]
    assert "no answer tokens left within maxSeqLength 512" in result["message"]


def test_a_model_folder_without_a_usable_tokenizer_is_named(tmp_path):
    (tmp_path / "model").mkdir()

    process, result, _ = check_data(tmp_path, tmp_path / "model", json.dumps({"instruction": "a", "output": "b"}))

    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert result["reason"] == "InvalidModel" and str(tmp_path / "model") in result["message"]


def test_a_local_run_with_bad_data_fails_at_validating_and_never_starts_a_trainer(tmp_path, tiny_model_dir):
    (tmp_path / "rows.jsonl").write_text('{"instruction": "only a question"}\n' * 5, encoding="utf-8")
    job = parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bad"},
                          "spec": {"baseModel": {"uri": f"file://{tiny_model_dir}"},
                                   "dataset": {"uri": "rows.jsonl", "format": "alpaca"},
                                   "registry": {"enabled": False}}})
    events = []
    runtime = LocalRuntime(workdir=tmp_path / "work", manifest_dir=tmp_path, on_event=events.append)

    status = runtime.run(job, poll_seconds=0.2)

    assert status.phase == "Failed"
    assert status.conditions[-1].reason == "InvalidData" or any(
        c.type == "Failed" and c.reason == "InvalidData" for c in status.conditions)
    assert "5 bad rows of 5" in status.message and "rows.jsonl:1:" in status.message
    assert [event.reason for event in events] == ["ValidatingStarted", "InvalidData"]
    assert not runtime.workload_dir(job, "bad-train").exists()


def preference_workload(tmp_path: Path, rows: list[str], objective: str = "dpo") -> dict:
    (tmp_path / "prefs.jsonl").write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    return {"dataset": DatasetSpec(uri="rows.jsonl", format="alpaca", preferences={"uri": "prefs.jsonl"}),
            "method": MethodSpec(type="lora", objective=objective),
            "preferences_path": str(tmp_path / "prefs.jsonl")}


def test_preference_rows_are_counted_and_their_steps_estimated(tmp_path, tiny_model_dir):
    write_tickets(tmp_path / "tickets.jsonl", 40, seed=4)
    pairs = [json.dumps({"prompt": f"Is parcel {n} of order {n * 13} lost?", "chosen": "Routed to SHIP.",
                         "rejected": "Routed to BIL."}) for n in range(20)]

    process, result, _ = check_data(tmp_path, tiny_model_dir, (tmp_path / "tickets.jsonl").read_text(),
                                    **preference_workload(tmp_path, pairs, objective="sft-then-dpo"))

    assert process.returncode == 0, process.stderr
    checked = DataCheckResult.model_validate(result)
    preferences = checked.dataset.preferences
    assert (preferences.rows, preferences.format, preferences.train_rows, preferences.validation_rows) == (
        20, "pairs", 18, 2)
    assert "preference rows: 20 (pairs); after cleaning 20" in process.stdout
    assert "preference split: 18 train, 2 validation" in process.stdout
    # SFT: 32 rows in micro-batches of 4, by 2 -> 4 steps an epoch, 2 epochs; then DPO: 18 pairs -> 5 batches
    # -> 3 steps an epoch, 2 epochs (method.preference.epochs)
    assert checked.report.estimated_steps == 8 + 6
    assert "steps: about 14 optimizer steps (8 SFT (2 epoch(s)) + 6 preference (2 epoch(s)))" in process.stdout


def test_a_bad_preference_file_fails_the_check_with_every_bad_row_by_line(tmp_path, tiny_model_dir):
    write_tickets(tmp_path / "tickets.jsonl", 40, seed=4)
    good = json.dumps({"prompt": "Where is my parcel?", "chosen": "Routed to SHIP.", "rejected": "Routed to BIL."})
    rows = [good, json.dumps({"prompt": "Refund?", "chosen": "Routed to BIL.", "rejected": " Routed to BIL. "}),
            good, json.dumps({"prompt": "Refund?", "completion": "Routed to BIL.", "label": "yes"})]

    process, result, termination = check_data(tmp_path, tiny_model_dir, (tmp_path / "tickets.jsonl").read_text(),
                                              **preference_workload(tmp_path, rows))

    assert process.returncode == 1 and "Traceback" not in process.stdout + process.stderr
    assert result["reason"] == "InvalidData" and result["badRows"] == 2
    assert "prefs.jsonl:2: chosen and rejected are the same answer: nothing to prefer" in result["message"]
    assert "prefs.jsonl:4: a kto row (completion, label) in a pairs file" in result["message"]
    assert json.loads(termination)["badRows"] == 2
