"""Preference rows (dataset.preferences) as the trainer reads them: every bad row named by file and line,
both row shapes from JSONL and Parquet, and prepare()'s cleaning, contamination check and seeded split."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiny_model import build_tiny_tokenizer
from tuneloop.api.finetunejob import parse_spec
from tuneloop.api.workloads import TrainerWorkload
from tuneloop.workload_data.preferences import load_preferences
from tuneloop.workload_data.rows import BadRows, DataError
from tuneloop_trainer.prepare import prepare


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def pair(prompt: str, chosen: str = "Refunds take 5 days.", rejected: str = "No idea.") -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def chat(*turns: str) -> list[dict]:
    return [{"role": "user" if index % 2 == 0 else "assistant", "content": turn} for index, turn in enumerate(turns)]


# --- loading and checking -------------------------------------------------------------------------

def test_every_bad_row_is_named_with_its_line_and_problem(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        pair("Where is my refund?"),
        {"prompt": "Hi", "messages": chat("Hi"), "chosen": "a", "rejected": "b"},
        {"messages": chat("Hi", "Hello", "Where is it?", "Here."), "chosen": "a", "rejected": "b"},
        pair("Reset my password", chosen="  Use the link. ", rejected="Use the link."),
        pair("Reset my password", rejected=" "),
        {"prompt": "Is this good?", "completion": "Yes.", "label": True},
        {"chosen": "a", "rejected": "b"},
        '{"prompt": "broken',
        {"prompt": "Both kinds", "chosen": "a", "rejected": "b", "completion": "c", "label": False},
        pair("fine again"),
    ])

    with pytest.raises(BadRows) as raised:
        load_preferences(path)

    assert raised.value.problems == [
        f"{path}:2: give either prompt or messages, not both",
        f"{path}:3: messages must end with the user's turn (the answer being judged follows it)",
        f"{path}:4: chosen and rejected are the same answer: nothing to prefer",
        f"{path}:5: field 'rejected' is empty",
        f"{path}:6: a kto row (completion, label) in a pairs file (the file's first row is a pairs row)",
        f"{path}:7: missing the prompt: give prompt (a string) or messages (ending with the user's turn)",
        f"{path}:8: broken JSON: Unterminated string starting at at column 12",
        f"{path}:9: give either chosen and rejected (pairs) or completion and label (kto), not both",
    ]
    assert raised.value.rows == 10
    assert str(raised.value).startswith(f"{path}: 8 bad rows of 10: {path}:2: give either prompt or messages")


def test_kto_rows_need_a_boolean_label_and_a_declared_format_is_held_to(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "Where is my refund?", "completion": "In 5 days.", "label": True},
        {"prompt": "Where is my refund?", "completion": "No idea.", "label": False},
        {"prompt": "Reset my password", "completion": "Use the link.", "label": "yes"},
        {"prompt": "Reset my password", "completion": "Use the link.", "label": 1},
        {"prompt": "Reset my password", "completion": "Use the link."},
        pair("Where is my refund?"),
    ])

    with pytest.raises(BadRows) as raised:
        load_preferences(path, declared_format="kto")

    assert raised.value.problems == [
        f'{path}:3: label must be true or false, got "yes"',
        f"{path}:4: label must be true or false, got 1",
        f"{path}:5: missing required field 'label' (true: a desirable answer, false: an undesirable one)",
        f"{path}:6: a pairs row (chosen, rejected) in a kto file (dataset.preferences.format is kto)",
    ]
    with pytest.raises(BadRows, match=r"kto.jsonl:1: a kto row \(completion, label\) in a pairs file "
                                      r"\(dataset.preferences.format is pairs\)"):
        load_preferences(path, declared_format="pairs")


def test_many_bad_rows_are_all_counted_and_the_message_stays_short(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [pair("fine")] + [pair("same", "x", "x")] * 3000)

    with pytest.raises(BadRows) as raised:
        load_preferences(path)

    assert len(raised.value.problems) == 3000
    assert raised.value.problems[-1] == f"{path}:3001: chosen and rejected are the same answer: nothing to prefer"
    message = str(raised.value)
    assert message.startswith(f"{path}: 3,000 bad rows of 3,001: ") and message.endswith("; and 2,990 more")
    assert message.count("nothing to prefer") == 10


def test_prompts_become_conversations_with_the_system_prompt_first(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        pair("Where is my refund?"),
        {"messages": [{"role": "system", "content": "Be terse."}, *chat("Hi", "Hello", "Refund?")],
         "chosen": "5 days.", "rejected": "Dunno."},
    ])

    loaded = load_preferences(path, system_prompt="You route tickets.")

    assert loaded.format == "pairs" and len(loaded.sha256) == 64
    first, second = loaded.rows
    assert first.line == 1 and first.prompt_messages == [
        {"role": "system", "content": "You route tickets."}, {"role": "user", "content": "Where is my refund?"}]
    assert (first.chosen, first.rejected, first.completion, first.label) == (
        "Refunds take 5 days.", "No idea.", None, None)
    assert second.prompt_messages[0] == {"role": "system", "content": "Be terse."}  # the row's own system message
    assert [message["role"] for message in second.prompt_messages] == ["system", "user", "assistant", "user"]


def test_parquet_rows_load_like_jsonl_and_a_null_column_is_a_missing_field(tmp_path):
    rows = [{**pair("Where is my refund?"), "messages": None},
            {"prompt": None, "messages": chat("Hi", "Hello", "Refund?"), "chosen": "a", "rejected": "b"}]
    parquet = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)  # every column in every row: the unused one null

    from_parquet = load_preferences(parquet)
    from_jsonl = load_preferences(write_jsonl(tmp_path / "prefs.jsonl", rows))

    assert [row.prompt_messages for row in from_parquet.rows] == [row.prompt_messages for row in from_jsonl.rows]
    assert from_parquet.format == "pairs"
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Refund?", "completion": "Soon.", "label": None}]), bad)
    with pytest.raises(BadRows, match=rf"{bad} row 1: missing required field 'label'"):
        load_preferences(bad)


def test_an_empty_or_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="prefs.jsonl: dataset file not found"):
        load_preferences(tmp_path / "prefs.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load_preferences(tmp_path / "empty.jsonl")


# --- prepare(): cleaning, contamination, split -----------------------------------------------------

def sft_rows(count: int) -> list[dict]:
    return [{"instruction": f"ticket {i}: my order number {i * 37} arrived broken in box {i % 7}",
             "output": f"Routed to team {i % 3}."} for i in range(count)]


def workload(tmp_path: Path, preferences: list, objective: str = "dpo", seed: int = 3, **preference_spec,
             ) -> TrainerWorkload:
    dataset = write_jsonl(tmp_path / "tickets.jsonl", sft_rows(40))
    prefs = write_jsonl(tmp_path / "prefs.jsonl", preferences)
    spec = parse_spec({"baseModel": {"uri": "file:///models/x"},
                       "method": {"type": "lora", "objective": objective},
                       "dataset": {"uri": str(dataset), "seed": seed, "testFraction": 0.2, "validationFraction": 0.2,
                                   "preferences": {"uri": str(prefs), **preference_spec}}})
    return TrainerWorkload(job="default/t", model_path="/models/x", dataset_path=str(dataset),
                           preferences_path=str(prefs), dataset=spec.dataset, method=spec.method,
                           training=spec.training, output_dir=str(tmp_path / "out"))


def unrelated_pairs(count: int) -> list[dict]:
    return [pair(f"question {i} about the weather in city {i * 11} this coming weekend") for i in range(count)]


def test_a_pair_asking_a_test_rows_question_is_removed_and_counted(tmp_path):
    """Corrections of test-split answers must not train: a pair whose prompt is a test row's prompt leaks it."""
    every_sft_prompt = [pair(row["instruction"], chosen=row["output"], rejected="Routed nowhere.")
                        for row in sft_rows(40)]
    tokenizer = build_tiny_tokenizer()

    data = prepare(workload(tmp_path, every_sft_prompt + unrelated_pairs(20)), tokenizer)

    test_prompts = {row.messages[0]["content"] for row in data.test_rows}
    stats = data.preferences.stats
    assert len(test_prompts) == data.stats.test_rows == 8
    assert (stats.rows, stats.contaminated, stats.removed) == (60, 8, 8)
    kept = data.preferences.train + data.preferences.validation
    assert len(kept) == stats.train_rows + stats.validation_rows == 52
    assert not test_prompts & {row.prompt_text for row in kept}
    assert data.stats.preferences == stats  # the job's status.dataset.preferences


def test_with_contamination_remove_false_the_pairs_are_kept_and_still_counted(tmp_path):
    every_sft_prompt = [pair(row["instruction"]) for row in sft_rows(40)]
    work = workload(tmp_path, every_sft_prompt)
    work.dataset.contamination.remove = False

    stats = prepare(work, build_tiny_tokenizer()).preferences.stats

    assert (stats.contaminated, stats.removed, stats.train_rows + stats.validation_rows) == (8, 0, 40)


def test_the_split_is_the_same_under_the_same_seed_and_keeps_a_row_on_each_side(tmp_path):
    tokenizer = build_tiny_tokenizer()

    def split(seed: int, rows: int = 30) -> tuple[list[int], list[int]]:
        prepared = prepare(workload(tmp_path, unrelated_pairs(rows), seed=seed), tokenizer).preferences
        return [row.line for row in prepared.train], [row.line for row in prepared.validation]

    first, again, other = split(3), split(3), split(4)
    assert first == again and first != other
    assert len(first[1]) == 6 and sorted(first[0] + first[1]) == list(range(1, 31))  # 20% of 30 held out
    assert tuple(map(len, split(3, rows=2))) == (1, 1)


def test_cleaning_drops_duplicates_and_pairs_it_makes_the_same(tmp_path):
    rows = unrelated_pairs(5) + [pair("question 0 about the weather in city 0 this coming weekend")] + [
        pair("Send the invoice", chosen="Mail it to ann@example.com", rejected="Mail it to bob@example.com")]
    work = workload(tmp_path, rows)
    work.dataset.cleaning.pii.redact = True

    prepared = prepare(work, build_tiny_tokenizer()).preferences

    assert (prepared.cleaning.exact_duplicates, prepared.same_after_cleaning) == (1, 1)
    assert prepared.cleaning.pii_redacted == {"email": 2} and prepared.cleaning.rows_out == 5
    assert prepared.stats.rows == 7 and prepared.stats.train_rows + prepared.stats.validation_rows == 5


def test_too_few_rows_left_to_split_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match=r"prefs.jsonl: 1 preference rows left of 2 .* at least 2 are needed"):
        prepare(workload(tmp_path, [pair("only one"), pair("only one")]), build_tiny_tokenizer())


@pytest.mark.parametrize("objective", ["dpo", "sft-then-dpo"])
def test_a_pairs_objective_refuses_a_kto_file_by_name(tmp_path, objective):
    rows = [{"prompt": f"question {i}", "completion": "answer", "label": i % 2 == 0} for i in range(4)]
    with pytest.raises(DataError, match=rf"prefs.jsonl: holds kto rows \(completion, label\), and "
                                        rf"method.objective {objective} learns from preference pairs"):
        prepare(workload(tmp_path, rows, objective=objective), build_tiny_tokenizer())


def test_kto_counts_desirable_rows_and_sft_leaves_the_file_unread(tmp_path):
    rows = [{"prompt": f"question {i} about the weather in city {i * 11}", "completion": "answer",
             "label": i % 3 == 0} for i in range(9)]
    tokenizer = build_tiny_tokenizer()

    kto = prepare(workload(tmp_path, rows, objective="kto", format="kto"), tokenizer).preferences
    sft = prepare(workload(tmp_path, ["not even JSON"], objective="sft"), tokenizer)

    assert (kto.stats.format, kto.stats.desirable, kto.stats.rows) == ("kto", 3, 9)
    assert sft.preferences is None and sft.stats.preferences is None
