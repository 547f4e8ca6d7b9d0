"""Data preparation: read and check, clean, split, mix in replay rows, tokenize."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.api.finetunejob import CleaningStats, DatasetStats
from tuneloop.api.workloads import TrainerWorkload
from tuneloop.workload_data.rows import BadRows, DataError, Example, load_dataset
from tuneloop_trainer.cleaning import clean, describe as describe_cleaning
from tuneloop_trainer.tokens import TokenizedExample, tokenize

log = logging.getLogger("tuneloop_trainer")


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    hold_out: list[TokenizedExample]
    hold_out_rows: list[Example]
    stats: DatasetStats
    cleaning: CleaningStats
    replay_rows: int


def split_hold_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic split: the same rows, fraction and seed always give the same hold-out set."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = min(len(examples) - 1, max(1, math.ceil(fraction * len(examples))))
    hold_out_indices = set(order[:count])
    train = [example for index, example in enumerate(examples) if index not in hold_out_indices]
    hold_out = [example for index, example in enumerate(examples) if index in hold_out_indices]
    return train, hold_out


def replay_count(train_rows: int, fraction: float) -> int:
    """Replay rows needed so that they are `fraction` of the training mix."""
    return round(fraction / (1 - fraction) * train_rows)


def load_replay(workload: TrainerWorkload, tokenizer: Any, wanted: int) -> list[Example]:
    replay = workload.dataset.replay
    dataset = load_dataset(Path(workload.replay_path or ""), replay.format, workload.dataset.system_prompt)
    rows, _ = clean(dataset.examples, workload.dataset.cleaning, lambda row: len(tokenize(tokenizer, row, 10**9).input_ids))
    if len(rows) < wanted:
        log.warning("replay set %s has %d usable rows, fewer than the %d wanted for fraction %.2f",
                    dataset.path, len(rows), wanted, replay.fraction)
    return random.Random(workload.dataset.seed).sample(rows, min(wanted, len(rows)))


def prepare(workload: TrainerWorkload, tokenizer: Any) -> PreparedData:
    spec, max_length = workload.dataset, workload.training.max_seq_length
    dataset = load_dataset(Path(workload.dataset_path), spec.format, spec.system_prompt)
    rows, cleaning = clean(dataset.examples, spec.cleaning, lambda row: len(tokenize(tokenizer, row, 10**9).input_ids))
    log.info("cleaning %s: %s", dataset.path, describe_cleaning(cleaning))
    if len(rows) < 2:
        raise DataError(f"{dataset.path}: {len(rows)} rows left after cleaning ({describe_cleaning(cleaning)}); "
                        "at least 2 are needed to train and hold one out")
    train_rows, hold_out_rows = split_hold_out(rows, spec.hold_out_fraction, spec.seed)

    replay_rows: list[Example] = []
    if spec.replay is not None:
        replay_rows = load_replay(workload, tokenizer, replay_count(len(train_rows), spec.replay.fraction))
    train = [tokenize(tokenizer, row, max_length) for row in train_rows + replay_rows]
    answerless = [f"{dataset.path}:{row.line}: no answer tokens left within maxSeqLength {max_length}; raise "
                  "spec.training.maxSeqLength or shorten the row"
                  for row, tokenized in zip(train_rows, train) if tokenized.trained_tokens == 0]
    if answerless:
        raise BadRows(dataset.path, answerless, len(train_rows))
    truncated = sum(example.truncated for example in train)
    if truncated:
        log.warning("%d training rows were longer than maxSeqLength %d and were truncated", truncated, max_length)
    stats = DatasetStats(
        rows=len(dataset.examples), train_rows=len(train_rows), hold_out_rows=len(hold_out_rows),
        train_tokens=sum(len(example.input_ids) for example in train), format=dataset.format,
        sha256=dataset.sha256,
    )
    log.info("dataset %s: %d rows (%s), %d train + %d replay / %d hold-out, %d train tokens, sha256 %s",
             dataset.path, stats.rows, stats.format, stats.train_rows, len(replay_rows), stats.hold_out_rows,
             stats.train_tokens, stats.sha256[:12])
    return PreparedData(
        train=train,
        hold_out=[tokenize(tokenizer, row, max_length) for row in hold_out_rows],
        hold_out_rows=hold_out_rows,
        stats=stats,
        cleaning=cleaning,
        replay_rows=len(replay_rows),
    )
