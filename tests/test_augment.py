"""The augment stage, `python -m tuneloop_trainer.augment`: synthetic training rows from a teacher model.

The teacher is real where it can be: SmolLM2-135M-Instruct served by `transformers serve` (tests/local_judge.py),
a weak model whose rows are kept only when they pass what a real row passes. A scripted OpenAI-compatible
server (tests/judge_server.py) plays the protocol's edge cases: unreadable replies, copies of real and test rows,
500s, a dead endpoint. And training (prepare) reads the synthetic rows into its training split only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest

from judge_server import Reply, ScriptedJudge, Seen, closed_port_url
from local_judge import local_judge
from tiny_model import build_tiny_tokenizer, write_tickets
from generate_tickets import generate  # examples/, on the path tiny_model sets
from tuneloop.api.augmentation import AugmentSpec, TeacherSpec
from tuneloop.api.finetunejob import CleaningSpec, DatasetSpec, MethodSpec, TrainingSpec
from tuneloop.api.workloads import AugmentResult, AugmentWorkload, TrainerWorkload
from tuneloop.retry import RetryPolicy
from tuneloop.workload_data.rows import load_dataset
from tuneloop_trainer.augment import augment
from tuneloop_trainer.cleaning import row_key
from tuneloop_trainer.prepare import prepare, split_dataset
from tuneloop_trainer.tokens import tokenize

TEACHER_MODEL = "teacher-model"
FAST = RetryPolicy(backoff_seconds=0.01, max_backoff_seconds=0.05)  # the scripted server's 500s need no real wait
ROWS = 60  # 48 train, 6 validation, 6 test with the default fractions


def workload(tmp_path: Path, model: Path, teacher: TeacherSpec | dict, **augment_fields) -> AugmentWorkload:
    rows = tmp_path / "rows.jsonl"
    if not rows.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        write_tickets(rows, ROWS, seed=4)
    dataset = DatasetSpec(uri="rows.jsonl", format="alpaca", cleaning=CleaningSpec(min_tokens=20),
                          augment=AugmentSpec.model_validate({"teacher": teacher, **augment_fields}))
    return AugmentWorkload(job="ml/acme", model_path=str(model), dataset_path=str(rows), dataset=dataset,
                           method=MethodSpec(), training=TrainingSpec(max_seq_length=512),
                           output_dir=str(tmp_path / "out"))


def scripted(server: ScriptedJudge, **fields) -> dict:
    return {"url": server.url, "model": TEACHER_MODEL, **fields}


def real_rows(spec: AugmentWorkload, tokenizer) -> dict[str, list]:
    split = split_dataset(spec, tokenizer).split
    return {"train": split.train, "validation": split.validation, "test": split.test}


def written(result: AugmentResult) -> list[dict]:
    return [json.loads(line) for line in Path(result.synthetic_path).read_text().splitlines()]


def shown_rows(seen: Seen) -> list[dict]:
    """The real rows a generate request shows, as the teacher reads them."""
    return [json.loads(line) for line in seen.prompt.splitlines() if line.startswith("{")]


def fresh_rows():
    """New ticket rows, none of them in the dataset (another generator seed each time)."""
    seeds = count(1000)
    return lambda: json.dumps(generate(1, seed=next(seeds))[0])


def test_a_real_teacher_adds_tagged_training_rows_that_duplicate_no_real_row(tmp_path, tiny_model_dir):
    with local_judge(tmp_path / "teacher.log") as served:
        teacher = {"url": served.url, "model": served.model, "maxTokens": 64, "concurrency": 2, "maxRetries": 1,
                   "temperature": 0.0}  # greedy: the same rows on every run
        spec = workload(tmp_path, tiny_model_dir, teacher, target_rows=50, mode="paraphrase", max_requests=4)
        (tmp_path / "workload.json").write_text(spec.model_dump_json(by_alias=True))
        process = subprocess.run(
            [sys.executable, "-m", "tuneloop_trainer.augment", "--spec", str(tmp_path / "workload.json"),
             "--result", str(tmp_path / "result.json")], capture_output=True, text=True, timeout=600)

    assert process.returncode == 0, process.stderr[-3000:]
    result = AugmentResult.model_validate_json((tmp_path / "result.json").read_text())
    stats = result.stats
    assert stats.wanted == 2 and 1 <= stats.requests <= 4
    assert stats.requests == stats.accepted + sum(stats.rejected.values())
    assert f"requests: {stats.requests}; accepted {stats.accepted}" in process.stdout
    assert stats.accepted >= 1, process.stdout
    real = real_rows(spec, build_tiny_tokenizer())
    rows = load_dataset(Path(result.synthetic_path), "alpaca").examples
    assert len(rows) == stats.accepted
    assert all(row["synthetic"] is True and isinstance(row["source_line"], int) for row in written(result))
    every_real = {row_key(example) for part in real.values() for example in part}
    assert not {row_key(row) for row in rows} & every_real


def test_unreadable_copied_and_test_rows_are_rejected_by_reason(tmp_path, tiny_model_dir):
    new_row = fresh_rows()
    with ScriptedJudge(lambda seen, repeat: Reply(next_reply(seen)), models=(TEACHER_MODEL,)) as server:
        spec = workload(tmp_path, tiny_model_dir, scripted(server, concurrency=1), target_rows=50, max_requests=10)
        test_row = real_rows(spec, build_tiny_tokenizer())["test"][0]
        test_copy = {"instruction": test_row.messages[0]["content"].split("\n\n")[0],
                     "input": test_row.messages[0]["content"].split("\n\n")[1], "output": test_row.reference}
        replies = iter([
            lambda seen: "I'm sorry, I cannot write that.",                               # unparseable
            lambda seen: json.dumps({"instruction": "Route this."}),                      # invalid: no output
            lambda seen: json.dumps({"instruction": "Hi", "output": "x"}),                 # cleaned: under minTokens
            lambda seen: "Here it is:\n```json\n" + json.dumps(shown_rows(seen)[0]) + "\n```",  # duplicate
            lambda seen: json.dumps(test_copy),                                            # near-test
            lambda seen: new_row(),
            lambda seen: new_row(),
        ])

        def next_reply(seen: Seen) -> str:
            return next(replies)(seen)

        result = augment(spec, retry=FAST)

    assert result.succeeded, result.message
    stats = result.stats
    assert (stats.wanted, stats.requests, stats.accepted) == (2, 7, 2)
    assert stats.rejected == {"cleaned": 1, "duplicate": 1, "invalid": 1, "near-test": 1, "unparseable": 1}
    assert any(example.startswith("near-test: ~ test line ") for example in stats.examples)
    assert stats.summary == ("2 of 2 synthetic rows kept from 7 teacher requests (rejected: 1 cleaned, 1 duplicate, "
                             "1 invalid, 1 near-test, 1 unparseable)")
    rows = written(result)
    assert [row["synthetic"] for row in rows] == [True, True]
    assert set(rows[0]) == {"instruction", "input", "output", "synthetic", "source_line"}
    # the teacher saw training rows only
    train_inputs = {example.messages[0]["content"] for example in real_rows(spec, build_tiny_tokenizer())["train"]}
    assert all(f"{row['instruction']}\n\n{row['input']}" in train_inputs
               for seen in server.chat_requests for row in shown_rows(seen))


def test_500s_are_retried_and_a_teacher_that_answers_nothing_fails_in_bounded_time(tmp_path, tiny_model_dir):
    new_row = fresh_rows()
    flaky = ScriptedJudge(lambda seen, repeat: Reply(new_row()) if repeat >= 2 else Reply(status=500),
                          models=(TEACHER_MODEL,))
    with flaky:
        result = augment(workload(tmp_path, tiny_model_dir, scripted(flaky, maxRetries=2), target_rows=50),
                         retry=FAST)
    assert result.succeeded and result.stats.accepted == 2 and result.stats.rejected == {}
    assert len(flaky.chat_requests) == 3 * 2  # two failures, then the answer, for each row

    broken = ScriptedJudge(lambda seen, repeat: Reply(status=500), models=(TEACHER_MODEL,))
    with broken:
        result = augment(workload(tmp_path / "broken", tiny_model_dir, scripted(broken, maxRetries=1, concurrency=2),
                                  target_rows=60, max_requests=100), retry=FAST)
    assert not result.succeeded and result.reason == "TeacherUnavailable"
    assert broken.url in result.message and "HTTP 500" in result.message
    assert len(broken.chat_requests) == 2 * 2  # it gave up after one round of `concurrency` requests, not 100


def test_a_dead_endpoint_fails_the_stage_naming_the_url(tmp_path, tiny_model_dir):
    url = closed_port_url()
    spec = workload(tmp_path, tiny_model_dir, {"url": url, "model": TEACHER_MODEL, "maxRetries": 1}, target_rows=50)
    (tmp_path / "workload.json").write_text(spec.model_dump_json(by_alias=True))

    process = subprocess.run(
        [sys.executable, "-m", "tuneloop_trainer.augment", "--spec", str(tmp_path / "workload.json"),
         "--result", str(tmp_path / "result.json"), "--termination-log", str(tmp_path / "termination-log")],
        capture_output=True, text=True, timeout=120)

    assert process.returncode == 1 and "Traceback" not in process.stdout + process.stderr
    result = AugmentResult.model_validate_json((tmp_path / "result.json").read_text())
    assert result.reason == "TeacherUnavailable" and url in result.message
    assert json.loads((tmp_path / "termination-log").read_text())["reason"] == "TeacherUnavailable"


def test_max_share_caps_the_rows_wanted_and_a_full_split_asks_nothing(tmp_path, tiny_model_dir):
    new_row = fresh_rows()
    with ScriptedJudge(lambda seen, repeat: Reply(new_row()), models=(TEACHER_MODEL,)) as server:
        capped = augment(workload(tmp_path, tiny_model_dir, scripted(server), target_rows=1000, max_share=0.2),
                         retry=FAST)
        assert capped.succeeded and (capped.stats.wanted, capped.stats.accepted) == (12, 12)  # 12 / (48 + 12) = 0.2
        asked = len(server.chat_requests)

        full = augment(workload(tmp_path / "full", tiny_model_dir, scripted(server), target_rows=48), retry=FAST)

    assert asked == 12 and len(server.chat_requests) == asked  # the full split sent no request
    assert full.succeeded and full.stats.wanted == 0 and full.synthetic_path is None
    assert full.stats.summary == "no synthetic row wanted: the training split already has dataset.augment.targetRows"


def test_training_puts_synthetic_rows_in_its_training_split_only_within_max_share(tmp_path, tiny_model_dir):
    tokenizer = build_tiny_tokenizer()
    spec = workload(tmp_path, tiny_model_dir, {"url": "http://127.0.0.1:1/v1", "model": TEACHER_MODEL},
                    target_rows=1000, max_share=0.2)
    real = real_rows(spec, tokenizer)
    near_test = as_alpaca(real["test"][0]) | {"output": '{"acct":"XX-00000"}'}  # a test row's request
    copies = [row | {"synthetic": True, "source_line": 1} for row in (near_test, as_alpaca(real["train"][0]))]
    new = [generate(1, seed=2000 + n)[0] | {"synthetic": True, "source_line": 2} for n in range(20)]
    path = tmp_path / "synthetic.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in copies + new))
    plain = TrainerWorkload.model_validate(spec.model_dump(exclude={"teacher_key_env"}))

    without = prepare(plain, tokenizer)
    with_synthetic = prepare(plain.model_copy(update={"synthetic_path": str(path)}), tokenizer)

    assert with_synthetic.stats.synthetic_rows == 12  # 20 usable, 12 kept: 12 / (48 + 12) = maxShare 0.2
    assert without.stats.synthetic_rows is None  # a job without dataset.augment reports none
    assert len(with_synthetic.train) == len(without.train) + 12
    assert with_synthetic.test_rows == without.test_rows
    assert with_synthetic.validation_rows == without.validation_rows
    trained = {tuple(example.input_ids) for example in with_synthetic.train}
    assert sum(ids == tuple(tokenize(tokenizer, real["train"][0], 512).input_ids) for ids in trained) == 1
    contamination = with_synthetic.stats.contamination  # a test row's request never reaches training
    assert contamination.removed == 1 and contamination.examples[0].startswith("synthetic line 1 ~ test line ")


def as_alpaca(example) -> dict:
    instruction, _, extra = example.messages[0]["content"].partition("\n\n")
    return {"instruction": instruction, "input": extra, "output": example.reference}


@pytest.mark.parametrize("mode", ["generate", "paraphrase"])
def test_the_teacher_key_comes_from_the_named_variable_only(tmp_path, tiny_model_dir, monkeypatch, mode):
    new_row = fresh_rows()

    def reply(seen: Seen) -> str:
        if mode == "generate":
            return new_row()
        request = seen.prompt.split("<request>")[1].split("</request>")[0]
        return "Another way to say it: " + " ".join(re.findall(r"\d{2,}", request))  # keeps every number

    with ScriptedJudge(lambda seen, repeat: Reply(reply(seen)), models=(TEACHER_MODEL,)) as server:
        spec = workload(tmp_path, tiny_model_dir, scripted(server, apiKeyEnv="TEACHER_KEY"), target_rows=49,
                        mode=mode).model_copy(update={"teacher_key_env": "TEACHER_KEY"})
        missing = augment(spec, retry=FAST)
        monkeypatch.setenv("TEACHER_KEY", "s3cret")
        done = augment(spec, retry=FAST)

    assert missing.reason == "TeacherUnavailable"
    assert missing.message == ("dataset.augment.teacher.apiKeyEnv: environment variable TEACHER_KEY, which is not "
                               "set or empty")
    assert done.succeeded and done.stats.accepted == 1
    assert {seen.headers.get("Authorization") for seen in server.chat_requests} == {"Bearer s3cret"}


def test_a_paraphrase_that_drops_a_number_or_rambles_is_rejected_as_lost_facts(tmp_path, tiny_model_dir):
    def rewrite(seen: Seen, keep_numbers: bool, ramble: bool = False) -> str:
        request = seen.prompt.split("<request>")[1].split("</request>")[0]
        numbers = " ".join(re.findall(r"\d{2,}", request)) if keep_numbers else ""
        return f"Please handle this for customer {numbers}." + (" And so on." * 200 if ramble else "")

    replies = iter([lambda seen: rewrite(seen, keep_numbers=False),
                    lambda seen: rewrite(seen, keep_numbers=True, ramble=True),
                    lambda seen: rewrite(seen, keep_numbers=True)])
    with ScriptedJudge(lambda seen, repeat: Reply(next(replies)(seen)), models=(TEACHER_MODEL,)) as server:
        spec = workload(tmp_path, tiny_model_dir, scripted(server, concurrency=1), target_rows=49,
                        mode="paraphrase", max_requests=3)
        result = augment(spec, retry=FAST)

    assert result.succeeded, result.message
    assert (result.stats.accepted, result.stats.rejected) == (1, {"lost-facts": 2})
    assert any("the rewrite drops" in example for example in result.stats.examples)
    assert any("times as long as the request" in example for example in result.stats.examples)
