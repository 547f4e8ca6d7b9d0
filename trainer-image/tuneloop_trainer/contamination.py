"""Training rows that near-duplicate a row the model is judged on: the test split, and the regression
set (the previous champion's test rows, so a FineTuneSchedule cycle's new corrections cannot leak them).

What is compared: the prompt of a conversation (every turn before the final answer, system messages
left out), and the whole text of a `text` row. A training row asking a test question leaks that test
even with a different answer; two rows that only share an answer (a stock reply) do not. The system
prompt is the same in every row, so it would make all rows look alike.

Similarity is the MinHash estimate of the Jaccard similarity of word 3-grams (cleaning's shingles,
cleaning's seed). The test and regression rows go into an LSH index and each training row is looked
up in it; the index's bands are chosen so that a pair at the threshold is missed with a probability
under MAX_MISS (recall matters more here than in cleaning), and every candidate is then checked
against the threshold.

Rows that share a long fixed instruction and differ only in a short input can reach the threshold;
raise dataset.contamination.threshold for such data.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from tuneloop.api.finetunejob import ContaminationSpec, ContaminationStats
from tuneloop.workload_data.preferences import PreferenceRow
from tuneloop.workload_data.rows import Example
from tuneloop_trainer.cleaning import MINHASH_SEED, shingles

MAX_MISS = 1e-3
MAX_EXAMPLES = 10


@dataclass
class JudgedRow:
    set_name: str  # "test" or "regression"
    line: int
    signature: MinHash


@dataclass
class Finding:
    train_name: str
    train_line: int
    judged: JudgedRow
    similarity: float

    def describe(self) -> str:
        return (f"{self.train_name} line {self.train_line} ~ {self.judged.set_name} line {self.judged.line} "
                f"({self.similarity:.2f})")


def compared_part(example: Example) -> Example:
    """The prompt turns without system messages; the row itself when it has no prompt (a text row)."""
    if example.messages is None:
        return example
    prompt = [message for message in example.prompt_messages if message["role"] != "system"]
    return Example(line=example.line, messages=prompt) if prompt else example


def signatures(rows: list[Example], num_perm: int) -> list[MinHash]:
    shingled = ([shingle.encode("utf-8") for shingle in shingles(compared_part(row))] for row in rows)
    return MinHash.bulk(shingled, num_perm=num_perm, seed=MINHASH_SEED)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band (fewest false candidates) that still find a pair
    at the threshold with probability 1 - MAX_MISS; at least two bands (datasketch's minimum)."""
    for rows in range(num_perm // 2, 1, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= 1 - MAX_MISS:
            return bands, rows
    return num_perm, 1


def index_judged_rows(test: list[Example], regression: list[Example], spec: ContaminationSpec,
                      ) -> tuple[MinHashLSH, list[JudgedRow]]:
    lsh = MinHashLSH(num_perm=spec.num_perm, params=lsh_bands(spec.threshold, spec.num_perm))
    judged: list[JudgedRow] = []
    for set_name, rows in (("test", test), ("regression", regression)):
        for row, signature in zip(rows, signatures(rows, spec.num_perm)):
            lsh.insert(len(judged), signature, check_duplication=False)
            judged.append(JudgedRow(set_name, row.line, signature))
    return lsh, judged


def closest_match(signature: MinHash, lsh: MinHashLSH, judged: list[JudgedRow], threshold: float,
                  ) -> tuple[JudgedRow, float] | None:
    """The most similar judged row at or above the threshold; on a tie, the first indexed (test first)."""
    best: tuple[JudgedRow, float] | None = None
    for key in sorted(lsh.query(signature)):
        similarity = judged[key].signature.jaccard(signature)
        if similarity >= threshold and (best is None or similarity > best[1]):
            best = (judged[key], similarity)
    return best


def find_contamination(train: list[Example], test: list[Example], regression: list[Example],
                       spec: ContaminationSpec, *, train_name: str = "train",
                       ) -> tuple[list[Example], ContaminationStats]:
    """The training rows kept (all of them when spec.remove is false) and what was found: counts, and
    up to ten findings such as 'train line 12 ~ test line 40 (0.94)'. `train_name` names the rows'
    file in the findings: "replay" for rows from dataset.replay, whose line numbers are that file's."""
    stats = ContaminationStats(threshold=spec.threshold, test_rows=len(test), regression_rows=len(regression))
    if not train or not (test or regression):
        return list(train), stats
    lsh, judged = index_judged_rows(test, regression, spec)
    kept: list[Example] = []
    findings: list[Finding] = []
    for row, signature in zip(train, signatures(train, spec.num_perm)):
        match = closest_match(signature, lsh, judged, spec.threshold)
        if match is None:
            kept.append(row)
            continue
        findings.append(Finding(train_name, row.line, *match))
        if not spec.remove:
            kept.append(row)
    stats.contaminated = len(findings)
    stats.removed = len(train) - len(kept)
    stats.examples = [finding.describe() for finding in findings[:MAX_EXAMPLES]]
    return kept, stats


def find_preference_contamination(rows: list[PreferenceRow], test: list[Example], regression: list[Example],
                                  spec: ContaminationSpec) -> tuple[list[PreferenceRow], ContaminationStats]:
    """find_contamination for preference rows: their prompts against the test and regression rows' prompts
    (findings read 'preferences line 7 ~ test line 40 (0.91)')."""
    as_examples = [Example(line=row.line, messages=[*row.prompt_messages, {"role": "assistant", "content": ""}])
                   for row in rows]  # compared_part() reads the turns before the last: the prompt
    kept, stats = find_contamination(as_examples, test, regression, spec, train_name="preferences")
    kept_ids = {id(example) for example in kept}
    return [row for row, example in zip(rows, as_examples) if id(example) in kept_ids], stats


def describe(stats: ContaminationStats) -> str:
    """A line for the log and the data check's report: the summary and the findings."""
    return stats.summary() + (": " + "; ".join(stats.examples) if stats.examples else "")
