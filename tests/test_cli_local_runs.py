"""`tuneloop list`, `status` and `logs` on real local runs (a tiny random Llama), and what a re-run says it reused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_model import write_tickets


def tuneloop(*args: str, cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"} | env_vars
    return subprocess.run([sys.executable, "-m", "tuneloop.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def write_job(folder: Path, name: str, model: Path, dataset: Path) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"baseModel": {"uri": f"file://{model}"},
                 "dataset": {"uri": str(dataset), "validationFraction": 0.2, "testFraction": 0.2, "seed": 3},
                 "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                 "training": {"epochs": 1, "learningRate": 5e-3, "microBatchSize": 4, "precision": "fp32"},
                 "evaluation": {"maxNewTokens": 8, "batchSize": 2, "bootstrap": {"samples": 100}}}}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A work folder with a finished run (`tiny`) and, newer, one that failed at its data check (`broken`)."""
    folder = tmp_path_factory.mktemp("local-runs")
    tickets = write_tickets(folder / "tickets.jsonl", rows=30, seed=1)
    (folder / "bad.jsonl").write_text('{"instruction": "only a question"}\n' * 5, encoding="utf-8")
    # A progress line at every step of every long pass (default: one every 10 s), to see them on a tiny model.
    first = tuneloop("run", str(write_job(folder, "tiny", tiny_model_dir, tickets)), "--local", cwd=folder,
                     TUNELOOP_PROGRESS_SECONDS="0")
    assert first.returncode in (0, 1) and "FineTuneJob tiny: Succeeded" in first.stdout, first.stdout + first.stderr
    broken = tuneloop("run", str(write_job(folder, "broken", tiny_model_dir, folder / "bad.jsonl")), "--local",
                      cwd=folder)
    assert broken.returncode == 1 and "FineTuneJob broken: Failed" in broken.stdout
    return folder, first


def test_list_shows_every_run_newest_first_with_phase_step_and_gate(runs):
    folder, _ = runs
    shown = tuneloop("list", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["NAME", "SPEC", "HASH", "PHASE", "STEP", "GATE", "UPDATED"]
    assert [row.split()[:3] for row in rows] == [
        ["broken", next((folder / "tuneloop-work" / "broken").iterdir()).name, "Failed"],
        ["tiny", next((folder / "tuneloop-work" / "tiny").iterdir()).name, "Succeeded"]]
    tiny = rows[1].split()
    assert re.fullmatch(r"([1-9]\d*)/\1", tiny[3]) and tiny[4] in ("passed", "failed") and re.fullmatch(r"\d{4}-\d\d-\d\d", tiny[5])
    assert rows[0].split()[3:5] == ["-", "-"]


def test_status_prints_the_runs_report_again(runs):
    folder, first = runs
    shown = tuneloop("status", "tiny", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    report = first.stdout[first.stdout.index("FineTuneJob tiny: Succeeded"):first.stdout.index("  work folder")]
    assert report.strip() in shown.stdout  # the same report the run ended with
    assert f"work folder {folder / 'tuneloop-work' / 'tiny'}" in shown.stdout
    newest = tuneloop("status", cwd=folder)
    assert "FineTuneJob broken: Failed" in newest.stdout and "5 bad rows of 5" in newest.stdout


def test_logs_show_what_each_workload_wrote_to_the_terminal(runs):
    folder, first = runs
    shown = tuneloop("logs", "tiny", "--stage", "train", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    assert header.startswith("--- train (tiny-train), started ")
    assert lines, "the trainer wrote nothing"
    terminal = first.stdout + first.stderr
    assert all(line in terminal for line in lines)
    assert tuneloop("logs", "tiny", "--stage", "train", "-f", cwd=folder).stdout == shown.stdout  # it has ended
    newest = tuneloop("logs", cwd=folder)  # the newest run's last workload: its data check
    assert newest.stdout.startswith("--- validate (broken-validate), started ") and "bad rows" in newest.stdout


def test_wrong_names_say_what_there_is(runs, tmp_path):
    folder, _ = runs
    missing = tuneloop("status", "nope", cwd=folder)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr and "tiny/" in missing.stderr
    not_run = tuneloop("logs", "broken", "--stage", "evaluate", cwd=folder)
    assert not_run.returncode == 1 and "stage 'evaluate' has not run (stages that did: validate)" in not_run.stderr
    empty = tuneloop("list", "--workdir", str(tmp_path), cwd=folder)
    assert empty.returncode == 0 and empty.stdout == f"no local runs in {tmp_path}\n"
    for output in (missing, not_run, empty):
        assert "Traceback" not in output.stderr


def test_a_rerun_says_what_it_reused_and_runs_nothing_again(runs):
    folder, _ = runs
    result = next((folder / "tuneloop-work" / "tiny").iterdir()) / "tiny-train" / "result.json"
    written = result.stat().st_mtime_ns
    again = tuneloop("run", str(folder / "tiny.yaml"), "--local", cwd=folder)
    assert "FineTuneJob tiny: Succeeded" in again.stdout, again.stderr
    reused = [line for line in again.stdout.splitlines() if "reusing the finished result" in line]
    assert [line.split(":")[0] for line in reused] == ["validate", "train", "evaluate", "register"]
    assert f"train: reusing the finished result from {result.parent}" in reused
    assert result.stat().st_mtime_ns == written


def test_a_runs_output_off_a_terminal_has_progress_lines_and_no_library_noise(runs):
    _, first = runs
    output = first.stdout + first.stderr
    warned = re.findall(r"^.*\w+Warning: .*$", output, re.MULTILINE)  # Python's warnings, not our [Warning] events
    assert warned == []
    assert "\r" not in output and max(map(len, output.splitlines())) <= 300, "a progress bar in a log"
    assert re.search(r"INFO tuneloop_trainer: validation loss: batch 1/\d+, \d+s$", output, re.MULTILINE)
    assert re.search(r"INFO tuneloop_evaluator: evaluation: generating answers \d+/6 \(candidate\), \d+s$",
                     output, re.MULTILINE)
    assert "evaluation: generating answers 6/6 (base model), done in" in output
    assert re.search(r"cleaning \S+tickets.jsonl: 30 rows in, 30 kept; removed none; \d+ normalised; "
                     r"personal data redacted: none$", output, re.MULTILINE)
