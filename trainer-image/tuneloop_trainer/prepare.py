"""Data preparation: read and check, clean, split three ways, drop training rows that near-duplicate the
rows the model is judged on (test split, champion's test rows), mix in replay rows, tokenize.

For a dpo, kto or sft-then-dpo objective the preference rows (dataset.preferences) are read, cleaned, checked
against the same test and regression rows, and split into train and validation too; dataset.uri's rows still
give the test split the evaluator and the gate judge with."""

from __future__ import annotations

import logging
import math
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tuneloop.api.finetunejob import (
    PAIR_OBJECTIVES,
    PII_KINDS,
    CleaningSpec,
    CleaningStats,
    ContaminationStats,
    DatasetStats,
    PreferenceDataStats,
)
from tuneloop.api.workloads import TrainerWorkload
from tuneloop.registry.champion import ChampionUnavailable
from tuneloop.registry.test_rows import champion_test_rows
from tuneloop.workload_data.preferences import PreferenceRow, load_preferences
from tuneloop.workload_data.rows import BadRows, DataError, Dataset, Example, load_dataset
from tuneloop_trainer.cleaning import (
    clean,
    describe as describe_cleaning,
    normalize_text,
    redact_text,
    row_key,
)
from tuneloop_trainer.contamination import (
    describe as describe_contamination,
    find_contamination,
    find_preference_contamination,
)
from tuneloop_trainer.tokens import TokenizedExample, tokenize

log = logging.getLogger("tuneloop_trainer")


@dataclass
class PreparedPreferences:
    """The preference rows to train on and to measure the preference stage with, before and after."""

    train: list[PreferenceRow]
    validation: list[PreferenceRow]
    stats: PreferenceDataStats
    cleaning: CleaningStats = field(default_factory=lambda: CleaningStats(rows_in=0, rows_out=0))
    contamination: ContaminationStats | None = None
    # pairs whose two answers cleaning made the same (e.g. they differed only in a redacted e-mail address)
    same_after_cleaning: int = 0


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    validation_rows: list[Example]
    test_rows: list[Example]
    stats: DatasetStats
    cleaning: CleaningStats
    replay_rows: int
    preferences: PreparedPreferences | None = None


@dataclass
class Split:
    train: list[Example]
    validation: list[Example]
    test: list[Example]


def split_rows(examples: list[Example], validation_fraction: float, test_fraction: float, seed: int) -> Split:
    """Deterministic three-way split: the same rows, fractions and seed always give the same sets.

    Validation chooses (early stopping, the checkpoint kept, the loss curve); test only judges (the
    evaluator and the gate). Each holds at least one row and train keeps at least one.
    """
    if len(examples) < 3:
        raise ValueError(f"{len(examples)} rows cannot be split into train, validation and test")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test_count = min(len(examples) - 2, max(1, math.ceil(test_fraction * len(examples))))
    validation_count = min(len(examples) - test_count - 1, max(1, math.ceil(validation_fraction * len(examples))))
    test_indices = set(order[:test_count])
    validation_indices = set(order[test_count:test_count + validation_count])
    split = Split([], [], [])
    for index, example in enumerate(examples):
        part = split.test if index in test_indices else split.validation if index in validation_indices else split.train
        part.append(example)
    return split


def token_count(tokenizer: Any) -> Callable[[Example], int]:
    """Tokens of a whole row, uncut: what dataset.cleaning's minTokens and maxTokens compare."""
    return lambda row: len(tokenize(tokenizer, row, 10**9).input_ids)


def replay_count(train_rows: int, fraction: float) -> int:
    """Replay rows needed so that they are `fraction` of the training mix."""
    return round(fraction / (1 - fraction) * train_rows)


def load_replay(workload: TrainerWorkload, tokenizer: Any, wanted: int, test: list[Example],
                regression: list[Example]) -> tuple[list[Example], ContaminationStats]:
    """`wanted` cleaned replay rows, none of them near a test or regression row: a schedule cycle replays
    the dataset its champion's test rows came from."""
    replay = workload.dataset.replay
    dataset = load_dataset(Path(workload.replay_path or ""), replay.format, workload.dataset.system_prompt)
    rows, _ = clean(dataset.examples, workload.dataset.cleaning, token_count(tokenizer))
    rows, contamination = find_contamination(rows, test, regression, workload.dataset.contamination,
                                             train_name="replay")
    if len(rows) < wanted:
        log.warning("replay set %s has %d usable rows, fewer than the %d wanted for fraction %.2f",
                    dataset.path, len(rows), wanted, replay.fraction)
    return random.Random(workload.dataset.seed).sample(rows, min(wanted, len(rows))), contamination


def combined(first: ContaminationStats, second: ContaminationStats) -> ContaminationStats:
    return first.model_copy(update={
        "contaminated": first.contaminated + second.contaminated, "removed": first.removed + second.removed,
        "examples": (first.examples + second.examples)[:10]})


def champion_rows(workload: TrainerWorkload) -> list[Example]:
    """The registered champion's test rows (the next evaluation's regression set); none without a champion."""
    if workload.tracking is None or not workload.registered_model:
        return []
    with tempfile.TemporaryDirectory(prefix="champion-test-rows-") as folder:
        try:
            found = champion_test_rows(workload.tracking.tracking_uri, workload.registered_model, Path(folder))
        except ChampionUnavailable as error:
            log.warning("contamination check without the champion's test rows: %s", error)
            return []
        if found is None:
            return []
        return load_dataset(found.path, "auto", workload.dataset.system_prompt).examples


@dataclass
class SplitDataset:
    """The dataset's rows as training splits them, before tokenizing: read and checked, cleaned, split, and the
    training rows near a test or regression row handled as dataset.contamination says. Shared by training and
    the augment stage, which shows the teacher training rows only."""

    dataset: Dataset
    rows: list[Example]  # every row kept by cleaning, all splits
    cleaning: CleaningStats
    split: Split  # split.train: after the contamination check
    regression: list[Example]  # the champion's test rows
    contamination: ContaminationStats


def split_dataset(workload: TrainerWorkload, tokenizer: Any) -> SplitDataset:
    spec = workload.dataset
    dataset = load_dataset(Path(workload.dataset_path), spec.format, spec.system_prompt)
    rows, cleaning = clean(dataset.examples, spec.cleaning, token_count(tokenizer))
    log.info("cleaning %s: %s", dataset.path, describe_cleaning(cleaning))
    if len(rows) < 3:
        raise DataError(f"{dataset.path}: {len(rows)} rows left after cleaning ({describe_cleaning(cleaning)}); "
                        "at least 3 are needed: one each to train, validate and test")
    split = split_rows(rows, spec.validation_fraction, spec.test_fraction, spec.seed)
    regression = champion_rows(workload)
    train_rows, contamination = find_contamination(split.train, split.test, regression, spec.contamination)
    if not train_rows:
        raise DataError(f"{dataset.path}: no training row left after removing near duplicates of test rows; "
                        "lower dataset.contamination.threshold or set remove to false")
    return SplitDataset(dataset, rows, cleaning, replace(split, train=train_rows), regression, contamination)


def synthetic_cap(real_rows: int, max_share: float) -> int:
    """The most synthetic rows that keep them at most `max_share` of real + synthetic."""
    return math.floor(max_share / (1 - max_share) * real_rows + 1e-9)


def load_synthetic(workload: TrainerWorkload, tokenizer: Any, data: SplitDataset,
                   ) -> tuple[list[Example], ContaminationStats]:
    """The augment stage's rows (workload.synthetic_path), for the training split only: cleaned as real rows are,
    none equal to a real row (any split) nor near a test or regression row (removed whatever
    dataset.contamination.remove says: a synthetic row is never worth a leak), none without an answer token
    within maxSeqLength, and at most dataset.augment.maxShare of the training rows (the first ones of the file)."""
    spec = workload.dataset
    path = Path(workload.synthetic_path or "")
    rows = load_dataset(path, data.dataset.format, spec.system_prompt).examples
    rows, _ = clean(rows, spec.cleaning, token_count(tokenizer))
    real = {row_key(row) for row in data.rows}
    rows = [row for row in rows if row_key(row) not in real
            and tokenize(tokenizer, row, workload.training.max_seq_length).trained_tokens > 0]
    rows, contamination = find_contamination(rows, data.split.test, data.regression,
                                             spec.contamination.model_copy(update={"remove": True}),
                                             train_name="synthetic")
    max_share = spec.augment.max_share if spec.augment else 0.0  # no dataset.augment: no synthetic rows
    cap = synthetic_cap(len(data.split.train), max_share)
    if len(rows) > cap:
        log.info("synthetic rows %s: %d usable, the first %d kept (dataset.augment.maxShare %s of %d training rows)",
                 path, len(rows), cap, max_share, len(data.split.train))
    return rows[:cap], contamination


def prepare(workload: TrainerWorkload, tokenizer: Any) -> PreparedData:
    spec, max_length = workload.dataset, workload.training.max_seq_length
    data = split_dataset(workload, tokenizer)
    dataset, cleaning, split, regression = data.dataset, data.cleaning, data.split, data.regression
    train_rows, contamination = split.train, data.contamination

    synthetic_rows: list[Example] = []
    if workload.synthetic_path:
        synthetic_rows, synthetic_contamination = load_synthetic(workload, tokenizer, data)
        contamination = combined(contamination, synthetic_contamination)
    replay_rows: list[Example] = []
    if spec.replay is not None:
        wanted = replay_count(len(train_rows) + len(synthetic_rows), spec.replay.fraction)
        replay_rows, replay_contamination = load_replay(workload, tokenizer, wanted, split.test, regression)
        contamination = combined(contamination, replay_contamination)
    if contamination.contaminated:
        log.warning("contamination: %s", describe_contamination(contamination))
    train = [tokenize(tokenizer, row, max_length) for row in train_rows + synthetic_rows + replay_rows]
    answerless = [f"{dataset.path}:{row.line}: no answer tokens left within maxSeqLength {max_length}; raise "
                  "spec.training.maxSeqLength or shorten the row"
                  for row, tokenized in zip(train_rows, train) if tokenized.trained_tokens == 0]
    if answerless:
        raise BadRows(dataset.path, answerless, len(train_rows))
    truncated = sum(example.truncated for example in train)
    if truncated:
        log.warning("%d training rows were longer than maxSeqLength %d and were truncated", truncated, max_length)
    preferences = prepare_preferences(workload, split.test, regression)
    stats = DatasetStats(
        rows=len(dataset.examples), train_rows=len(train_rows), validation_rows=len(split.validation),
        test_rows=len(split.test), contamination=contamination,
        train_tokens=sum(len(example.input_ids) for example in train), format=dataset.format,
        sha256=dataset.sha256, preferences=preferences.stats if preferences else None,
        synthetic_rows=len(synthetic_rows) or None,
    )
    log.info("dataset %s: %d rows (%s), %d train + %d synthetic + %d replay / %d validation / %d test, %d train "
             "tokens, sha256 %s", dataset.path, stats.rows, stats.format, stats.train_rows, len(synthetic_rows),
             len(replay_rows), stats.validation_rows, stats.test_rows,
             stats.train_tokens, stats.sha256[:12])
    return PreparedData(
        train=train,
        validation=[tokenize(tokenizer, row, max_length) for row in split.validation],
        validation_rows=split.validation,
        test_rows=split.test,
        stats=stats,
        cleaning=cleaning,
        replay_rows=len(replay_rows),
        preferences=preferences,
    )


# --- preference rows (dataset.preferences) ---------------------------------------------------------

def prepare_preferences(workload: TrainerWorkload, test: list[Example], regression: list[Example],
                        ) -> PreparedPreferences | None:
    """The preference rows of a dpo, kto or sft-then-dpo objective, cleaned, checked against the rows the model
    is judged on, and split; None for sft (a preference file given to an sft job is not read)."""
    spec, objective = workload.dataset, workload.method.objective
    if objective == "sft":
        if workload.preferences_path:
            log.info("dataset.preferences is not used: method.objective is sft")
        return None
    if not workload.preferences_path or spec.preferences is None:
        raise DataError(f"method.objective {objective} learns from preference rows: set dataset.preferences")
    dataset = load_preferences(Path(workload.preferences_path), spec.preferences.format, spec.system_prompt)
    if objective in PAIR_OBJECTIVES and dataset.format == "kto":
        raise DataError(f"{dataset.path}: holds kto rows (completion, label), and method.objective {objective} "
                        "learns from preference pairs (prompt, chosen, rejected); kto rows fit objective kto only")
    rows, cleaning, same = clean_preferences(dataset.rows, spec.cleaning)
    # The prompt is what is compared: the test split's prompts are those of corrected answers, and a pair whose
    # prompt is a test row's prompt would train on that test answer (a correction is the `chosen` of its pair).
    rows, contamination = find_preference_contamination(rows, test, regression, spec.contamination)
    if contamination.contaminated:
        log.warning("preference rows: %s", describe_contamination(contamination))
    if len(rows) < 2:
        raise DataError(
            f"{dataset.path}: {len(rows)} preference rows left of {len(dataset.rows)} (cleaning: "
            f"{describe_cleaning(cleaning)}; near a test or regression row and removed: {contamination.removed}); "
            "at least 2 are needed: one to train on and one to measure the preference stage with")
    train, validation = split_preferences(rows, spec.validation_fraction, spec.seed)
    stats = PreferenceDataStats(
        rows=len(dataset.rows), format=dataset.format, train_rows=len(train), validation_rows=len(validation),
        contaminated=contamination.contaminated, removed=contamination.removed, sha256=dataset.sha256,
        desirable=sum(bool(row.label) for row in rows) if dataset.format == "kto" else None)
    log.info("preferences %s: %d rows (%s), %d train / %d validation, sha256 %s", dataset.path, stats.rows,
             stats.format, stats.train_rows, stats.validation_rows, stats.sha256[:12])
    return PreparedPreferences(train=train, validation=validation, stats=stats, cleaning=cleaning,
                               contamination=contamination, same_after_cleaning=same)


def split_preferences(rows: list[PreferenceRow], validation_fraction: float, seed: int,
                      ) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """(train, validation): the same rows, fraction and seed always give the same sets; each holds at least one
    row, and both keep the file's order."""
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} preference rows cannot be split into train and validation")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:min(len(rows) - 1, max(1, math.ceil(validation_fraction * len(rows))))])
    return ([row for index, row in enumerate(rows) if index not in held_out],
            [row for index, row in enumerate(rows) if index in held_out])


def clean_preferences(rows: list[PreferenceRow], spec: CleaningSpec,
                      ) -> tuple[list[PreferenceRow], CleaningStats, int]:
    """dataset.cleaning's steps that apply to preference rows: normalise, redact personal data, drop exact
    duplicates (near duplicates and token lengths are SFT rows' concerns). Returns the rows kept, what was done,
    and how many pairs were dropped because cleaning left their two answers the same."""
    stats = CleaningStats(rows_in=len(rows), rows_out=0)
    counts: Counter[str] = Counter()
    kept, seen, same = [], set(), 0
    for row in rows:
        cleaned = row
        if spec.normalize:
            cleaned = map_preference_text(cleaned, normalize_text)
            if cleaned != row:
                stats.normalized += 1
            if not all(preference_texts(cleaned)):
                stats.too_short += 1
                continue
        if spec.pii.redact:
            cleaned = map_preference_text(cleaned, lambda text: redact_text(text, spec.pii.kinds, counts))
        if cleaned.chosen is not None and cleaned.chosen.strip() == (cleaned.rejected or "").strip():
            same += 1
            continue
        if spec.deduplicate:
            if cleaned.key() in seen:
                stats.exact_duplicates += 1
                continue
            seen.add(cleaned.key())
        kept.append(cleaned)
    stats.pii_redacted = {kind: counts[kind] for kind in PII_KINDS if counts[kind]}
    stats.rows_out = len(kept)
    return kept, stats, same


def preference_texts(row: PreferenceRow) -> list[str]:
    answers = [row.chosen, row.rejected, row.completion]
    return [message["content"] for message in row.prompt_messages] + [text for text in answers if text is not None]


def map_preference_text(row: PreferenceRow, transform: Callable[[str], str]) -> PreferenceRow:
    """A new row with `transform` applied to every prompt message and answer."""
    def apply(text: str | None) -> str | None:
        return None if text is None else transform(text)

    return replace(row, prompt_messages=[{**message, "content": transform(message["content"])}
                                         for message in row.prompt_messages],
                   chosen=apply(row.chosen), rejected=apply(row.rejected), completion=apply(row.completion))
