"""What a person wants to know about a dataset before paying for GPUs.

The same preparation the trainer runs (read and check every row, clean, split, mix in replay rows,
tokenize with the base model's tokenizer), on a CPU and without the model's weights: every bad row
by file and line, rows per format, a token-length histogram, how many rows maxSeqLength cuts, and
the optimizer steps the run will take.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tuneloop.api.finetunejob import CleaningStats, DataReportSummary, DatasetStats, TokenLengthBin
from tuneloop.api.workloads import TrainerWorkload
from tuneloop_trainer.contamination import describe as describe_contamination
from tuneloop_trainer.prepare import prepare
from tuneloop_trainer.sft import steps_per_epoch


@dataclass
class DataReport:
    stats: DatasetStats
    cleaning: CleaningStats
    replay_rows: int
    lengths: list[int]  # tokens of each training row; a truncated one counts one over maxSeqLength
    max_seq_length: int
    truncated: int
    steps: int
    epochs: int

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
        out.append(f"steps: about {self.steps:,} optimizer steps ({self.epochs} epoch(s))")
        return out


def data_report(workload: TrainerWorkload, tokenizer: Any, world_size: int = 1) -> DataReport:
    """Raises DataError (BadRows names every bad row) as the trainer would, before any GPU."""
    data = prepare(workload, tokenizer)
    training = workload.training
    per_epoch = steps_per_epoch(len(data.train), training.micro_batch_size, training.gradient_accumulation_steps,
                                world_size)
    lengths = [len(example.input_ids) + (1 if example.truncated else 0) for example in data.train]
    return DataReport(stats=data.stats, cleaning=data.cleaning, replay_rows=data.replay_rows, lengths=lengths,
                      max_seq_length=training.max_seq_length, truncated=sum(e.truncated for e in data.train),
                      steps=per_epoch * training.epochs, epochs=training.epochs)
