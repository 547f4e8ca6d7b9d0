"""Data preparation end to end: Parquet input, replay mixing, and what the trainer writes besides the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiny_model import build_tiny_tokenizer
from tuneloop.api.finetunejob import parse_spec
from tuneloop.api.workloads import TrainerWorkload
from tuneloop.workload_data.rows import DataError, load_dataset
from tuneloop_trainer.prepare import prepare, replay_count


def alpaca_rows(count: int, tag: str) -> list[dict]:
    return [{"instruction": f"{tag} question number {i} about topic {i * 7 % 13}",
             "output": f"{tag} answer {i}"} for i in range(count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def workload(tmp_path: Path, dataset: Path, replay: Path | None = None, fraction: float = 0.1,
             seed: int = 3) -> TrainerWorkload:
    raw = {"baseModel": {"uri": "file:///models/x"}, "dataset": {"uri": str(dataset), "seed": seed,
                                                               "testFraction": 0.2}}
    if replay:
        raw["dataset"]["replay"] = {"uri": str(replay), "fraction": fraction}
    spec = parse_spec(raw)
    return TrainerWorkload(job="default/t", model_path="/models/x", dataset_path=str(dataset),
                           replay_path=str(replay) if replay else None, dataset=spec.dataset,
                           method=spec.method, training=spec.training, output_dir=str(tmp_path / "out"))


def test_parquet_rows_load_like_jsonl(tmp_path):
    rows = alpaca_rows(5, "task")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    jsonl = load_dataset(write_jsonl(tmp_path / "data.jsonl", rows))
    parquet = load_dataset(path)
    assert parquet.format == "alpaca"
    assert [e.messages for e in parquet.examples] == [e.messages for e in jsonl.examples]

    messages = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"}]}]), messages)
    assert load_dataset(messages).format == "messages"


def test_a_bad_parquet_row_is_named_by_row_number(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}]), path)
    with pytest.raises(DataError, match=rf"{path} row 2: field 'output' is empty"):
        load_dataset(path)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_dataset(broken)


def test_replay_rows_join_training_only_at_the_asked_fraction_and_reproducibly(tmp_path):
    dataset = write_jsonl(tmp_path / "task.jsonl", alpaca_rows(100, "task"))
    replay = write_jsonl(tmp_path / "general.jsonl", alpaca_rows(200, "general"))
    tokenizer = build_tiny_tokenizer()

    first = prepare(workload(tmp_path, dataset, replay, fraction=0.1), tokenizer)
    again = prepare(workload(tmp_path, dataset, replay, fraction=0.1), tokenizer)
    other_seed = prepare(workload(tmp_path, dataset, replay, fraction=0.1, seed=4), tokenizer)

    assert (first.stats.train_rows, first.stats.validation_rows, first.stats.test_rows) == (70, 10, 20)
    assert first.replay_rows == replay_count(70, 0.1) == 8  # 8 of 78 rows: about 10% of the mix
    assert len(first.train) == 78
    assert all("general" not in row.messages[0]["content"] for row in first.validation_rows + first.test_rows)
    assert [e.input_ids for e in first.train] == [e.input_ids for e in again.train]
    assert [e.input_ids for e in first.train] != [e.input_ids for e in other_seed.train]


def test_a_dataset_emptied_by_cleaning_is_an_error(tmp_path):
    dataset = write_jsonl(tmp_path / "same.jsonl", [{"instruction": "a", "output": "b"}] * 5)
    with pytest.raises(DataError, match="1 rows left after cleaning"):
        prepare(workload(tmp_path, dataset), build_tiny_tokenizer())
