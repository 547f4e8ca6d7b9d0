"""What a person wants to know about a dataset before paying for GPUs.

The same preparation the trainer runs (read and check every row, clean, split, mix in replay rows,
tokenize with the base model's tokenizer), on a CPU and without the model's weights: every bad row
by file and line, rows per format, a token-length histogram, how many rows maxSeqLength cuts, and
the optimizer steps the run will take. For a dpo, kto or sft-then-dpo objective the preference rows
too: every bad one by file and line, how many are trained on and held out, and the preference stage's
steps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tuneloop.api.finetunejob import CleaningStats, DataReportSummary, DatasetStats, TokenLengthBin
from tuneloop.api.workloads import TrainerWorkload
from tuneloop_trainer.contamination import describe as describe_contamination
from tuneloop_trainer.preference import preference_steps
from tuneloop_trainer.prepare import PreparedPreferences, prepare
from tuneloop_trainer.sft import steps_per_epoch


@dataclass
class DataReport:
    stats: DatasetStats
    cleaning: CleaningStats
    replay_rows: int
    lengths: list[int]  # tokens of each training row; a truncated one counts one over maxSeqLength
    max_seq_length: int
    truncated: int
    steps: int  # all stages: SFT, preference or both, as method.objective says
    epochs: int
    preferences: PreparedPreferences | None = None
    preference_steps: int = 0
    preference_epochs: int = 0

    def histogram(self) -> list[tuple[str, int]]:
        """Rows per power-of-two token range, up to maxSeqLength, and the rows over it."""
        edges, edge = [], 16
        while edge < self.max_seq_length:
            edges.append(edge)
            edge *= 2
        edges.append(self.max_seq_length)
        counts: Counter[int] = Counter()
        for length in self.lengths:
            counts[next((edge for edge in edges if length <= edge), -1)] += 1
        rows, low = [], 1
        for edge in edges:
            rows.append((f"{low}-{edge}", counts[edge]))
            low = edge + 1
        rows.append((f"> {self.max_seq_length} (truncated)", counts[-1]))
        return rows

    def summary(self) -> DataReportSummary:
        return DataReportSummary(
            training_rows=len(self.lengths), replay_rows=self.replay_rows, truncated_rows=self.truncated,
            max_seq_length=self.max_seq_length, estimated_steps=self.steps,
            token_lengths=[TokenLengthBin(tokens=label, rows=rows) for label, rows in self.histogram()])

    def lines(self) -> list[str]:
        stats, cleaning = self.stats, self.cleaning
        out = [f"rows: {stats.rows:,} ({stats.format}); after cleaning {cleaning.rows_out:,} "
               f"(exact duplicates {cleaning.exact_duplicates}, near duplicates {cleaning.near_duplicates}, "
               f"too short {cleaning.too_short}, too long {cleaning.too_long})",
               f"split: {stats.train_rows:,} train + {self.replay_rows:,} replay, {stats.validation_rows:,} validation, "
               f"{stats.test_rows:,} test; {stats.train_tokens:,} training tokens",
               f"tokens per training row (maxSeqLength {self.max_seq_length}):"]
        if stats.contamination is not None:
            out.insert(2, f"contamination: {describe_contamination(stats.contamination)}")
        widest = max(count for _, count in self.histogram()) or 1
        for label, count in self.histogram():
            out.append(f"  {label:>22} {count:>7,} {'#' * round(30 * count / widest)}")
        out.append(f"truncated: {self.truncated:,} of {len(self.lengths):,} training rows are longer than "
                   f"maxSeqLength {self.max_seq_length}")
        if self.preferences is None:
            out.append(f"steps: about {self.steps:,} optimizer steps ({self.epochs} epoch(s))")
        else:
            out += self.preference_lines()
            sft_steps = self.steps - self.preference_steps
            stages = ([f"{sft_steps:,} SFT ({self.epochs} epoch(s))"] if sft_steps else []) + [
                f"{self.preference_steps:,} preference ({self.preference_epochs} epoch(s))"]
            out.append(f"steps: about {self.steps:,} optimizer steps ({' + '.join(stages)})")
        return out

    def preference_lines(self) -> list[str]:
        prepared = self.preferences
        stats, cleaning = prepared.stats, prepared.cleaning
        dropped = [f"{count:,} {label}" for label, count in (
            ("exact duplicates", cleaning.exact_duplicates), ("emptied by normalising", cleaning.too_short),
            ("with chosen = rejected after cleaning", prepared.same_after_cleaning)) if count]
        labels = (f"; {stats.desirable:,} desirable, {stats.train_rows + stats.validation_rows - stats.desirable:,} "
                  "undesirable" if stats.desirable is not None else "")
        redacted = [f"{count:,} {kind}" for kind, count in cleaning.pii_redacted.items()]
        out = [f"preference rows: {stats.rows:,} ({stats.format}); after cleaning {cleaning.rows_out:,}"
               + (f" ({', '.join(dropped)})" if dropped else "")
               + (f"; personal data redacted: {', '.join(redacted)}" if redacted else ""),
               f"preference split: {stats.train_rows:,} train, {stats.validation_rows:,} validation{labels}"]
        if prepared.contamination is not None:
            out.append(f"preference contamination: {describe_contamination(prepared.contamination)}")
        return out


def data_report(workload: TrainerWorkload, tokenizer: Any, world_size: int = 1) -> DataReport:
    """Raises DataError (BadRows names every bad row) as the trainer would, before any GPU."""
    data = prepare(workload, tokenizer)
    training = workload.training
    per_epoch = steps_per_epoch(len(data.train), training.micro_batch_size, training.gradient_accumulation_steps,
                                world_size)
    lengths = [len(example.input_ids) + (1 if example.truncated else 0) for example in data.train]
    sft_steps = per_epoch * training.epochs if workload.method.objective in ("sft", "sft-then-dpo") else 0
    stage_steps = preference_steps(workload, data.preferences.train, world_size) if data.preferences else 0
    return DataReport(stats=data.stats, cleaning=data.cleaning, replay_rows=data.replay_rows, lengths=lengths,
                      max_seq_length=training.max_seq_length, truncated=sum(e.truncated for e in data.train),
                      steps=sft_steps + stage_steps, epochs=training.epochs, preferences=data.preferences,
                      preference_steps=stage_steps, preference_epochs=workload.method.preference.epochs)
