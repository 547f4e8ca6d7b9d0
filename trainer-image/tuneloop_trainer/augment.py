"""python -m tuneloop_trainer.augment --spec SPEC.json --result RESULT.json [--termination-log PATH]

A FineTuneJob's augment stage (dataset.augment), after the data check and before training, on a CPU with the
base model's tokenizer and none of its weights: it splits the rows exactly as training will, shows the teacher
training rows only, and keeps the rows it writes back that a real row would pass as:

  unparseable     no row in the reply;
  invalid         fails the row checks of a real row (or has no answer token within maxSeqLength);
  lost-facts      a paraphrase that drops a number of its request or rambles (tuneloop_trainer.teacher);
  cleaned         dataset.cleaning removes it;
  near-test       near a test row or the champion's test rows (dataset.contamination's threshold);
  duplicate       equal to a real row of any split or an earlier synthetic row, or near one where
                  dataset.cleaning.nearDuplicates is enabled (what cleaning would drop were it in the file);
  failed-request  the teacher did not answer it.

It asks until `wanted` rows are kept or maxRequests are answered: wanted = targetRows minus the real training
rows, within maxShare. The rows go to output_dir/synthetic/synthetic-<sha256>.jsonl in the dataset's row shape,
tagged `"synthetic": true` with the `source_line` of the real row they came from; training reads them into its
training split only (tuneloop_trainer.prepare). A teacher that answers nothing fails the stage as
TeacherUnavailable. It prints a report, and writes the result file in every case. Exit status 0: done (even
with fewer rows than wanted); 1: not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasketch import MinHash

from tuneloop.api.augmentation import AugmentationStats, AugmentSpec
from tuneloop.api.workloads import AugmentResult, AugmentWorkload
from tuneloop.chat_endpoint import ChatEndpoint, RequestRejected
from tuneloop.retry import TEACHER, RetryPolicy
from tuneloop.workload_cli import workload_main
from tuneloop.workload_data.rows import Example
from tuneloop_trainer.cleaning import MINHASH_SEED, clean, make_lsh, row_key, shingles
from tuneloop_trainer.contamination import closest_match, index_judged_rows, signatures
from tuneloop_trainer.prepare import SplitDataset, split_dataset, synthetic_cap, token_count
from tuneloop_trainer.teacher import (
    Reading,
    TeacherUnavailable,
    as_row,
    generate_messages,
    paraphrase_messages,
    read_generated,
    read_paraphrase,
    teacher_key,
)
from tuneloop_trainer.tokens import tokenize

log = logging.getLogger("tuneloop_trainer.augment")

MAX_EXAMPLES = 10  # rejections kept in the status (AugmentationStats.examples)
SHOWN = 3  # accepted rows and rejections printed in the report


def synthetic_wanted(spec: AugmentSpec, real_rows: int) -> int:
    """targetRows minus the real training rows, within maxShare; never below 0."""
    return max(0, min(spec.target_rows - real_rows, synthetic_cap(real_rows, spec.max_share)))


class RowFilter:
    """Decides whether a candidate row is kept, as a real row in the file would be: cleaned the same way, and
    compared with every real row (all splits), the test and regression rows, and the rows kept before it."""

    def __init__(self, workload: AugmentWorkload, data: SplitDataset, tokenizer: Any):
        self.workload, self.tokenizer = workload, tokenizer
        self.cleaning, contamination = workload.dataset.cleaning, workload.dataset.contamination
        self.seen: dict[tuple, str] = {}  # row_key -> which row it is, for the rejection's detail
        self.near = make_lsh(self.cleaning.near_duplicates) if self.cleaning.near_duplicates.enabled else None
        self.near_signatures: dict[str, MinHash] = {}
        self.judged_lsh, self.judged = index_judged_rows(data.split.test, data.regression, contamination)
        self.threshold, self.num_perm = contamination.threshold, contamination.num_perm
        for row in data.rows:
            self.remember(row, f"dataset line {row.line}")

    def remember(self, row: Example, name: str) -> None:
        self.seen.setdefault(row_key(row), name)
        if self.near is not None:
            signature = self.near_signature(row)
            self.near.insert(name, signature, check_duplication=False)
            self.near_signatures[name] = signature

    def near_signature(self, row: Example) -> MinHash:
        signature = MinHash(num_perm=self.cleaning.near_duplicates.num_perm, seed=MINHASH_SEED)
        signature.update_batch([shingle.encode("utf-8") for shingle in shingles(row)])
        return signature

    def check(self, candidate: Example, name: str) -> Reading:
        """The cleaned row, kept and remembered; or why it is not kept."""
        cleaned, _ = clean([candidate], self.cleaning, token_count(self.tokenizer))
        if not cleaned:
            return Reading(None, "cleaned", "dataset.cleaning removes it (empty after normalising, or its length)")
        row = cleaned[0]
        max_length = self.workload.training.max_seq_length
        if tokenize(self.tokenizer, row, max_length).trained_tokens == 0:
            return Reading(None, "invalid", f"no answer tokens left within maxSeqLength {max_length}")
        if self.judged:
            match = closest_match(signatures([row], self.num_perm)[0], self.judged_lsh, self.judged, self.threshold)
            if match is not None:
                judged, similarity = match
                return Reading(None, "near-test", f"~ {judged.set_name} line {judged.line} ({similarity:.2f})")
        if row_key(row) in self.seen:
            return Reading(None, "duplicate", f"the same as {self.seen[row_key(row)]}")
        if self.near is not None:
            signature = self.near_signature(row)
            threshold = self.cleaning.near_duplicates.threshold
            for other in sorted(self.near.query(signature)):
                if self.near_signatures[other].jaccard(signature) >= threshold:
                    return Reading(None, "duplicate", f"near {other}")
        self.remember(row, name)
        return Reading(row)


@dataclass
class Tally:
    """What the teacher was asked and what was kept, as the requests come back."""

    wanted: int
    accepted: list[tuple[Example, int]] = field(default_factory=list)  # (row, source line)
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    last_failure: str = ""

    @property
    def answered(self) -> int:
        return len(self.accepted) + sum(count for reason, count in self.rejected.items() if reason != "failed-request")

    @property
    def requests(self) -> int:
        return len(self.accepted) + sum(self.rejected.values())

    def reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        if reason == "failed-request":
            self.last_failure = detail
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{reason}: {detail}"[:300])


class Augmenter:
    """Asks the teacher, `concurrency` requests at a time, until `wanted` rows are kept or maxRequests answered;
    never more requests in flight than rows still wanted."""

    def __init__(self, workload: AugmentWorkload, data: SplitDataset, tokenizer: Any, wanted: int):
        self.workload, self.spec = workload, workload.dataset.augment
        self.format, self.system_prompt = data.dataset.format, workload.dataset.system_prompt
        self.train = data.split.train
        self.order = random.Random(self.spec.seed).sample(self.train, len(self.train))  # paraphrase: each row in turn
        self.filter = RowFilter(workload, data, tokenizer)
        self.tally = Tally(wanted)
        self.max_requests = self.spec.max_requests or 3 * wanted

    def row(self, example: Example) -> dict[str, Any]:
        return as_row(example, self.format, self.system_prompt)

    def prompt(self, index: int) -> tuple[list[dict[str, str]], Example]:
        """Request `index`'s messages, and the real row it starts from (generate: the first of those shown)."""
        if self.spec.mode == "paraphrase":
            source = self.order[index % len(self.order)]
            return paraphrase_messages(self.row(source), self.spec), source
        count = min(self.spec.examples_per_request, len(self.train))
        shown = random.Random(f"{self.spec.seed}:{index}").sample(self.train, count)
        return generate_messages([self.row(example) for example in shown], self.spec), shown[0]

    async def ask(self, teacher: ChatEndpoint, index: int) -> tuple[Reading, int]:
        """Request `index`: the reply read as a row, and the line of the real row it came from."""
        messages, source = self.prompt(index)
        try:
            reply, _ = await teacher.chat(f"request {index + 1}", messages, temperature=self.spec.teacher.temperature,
                                          max_tokens=self.spec.teacher.max_tokens)
        except (RequestRejected, TeacherUnavailable) as error:
            return Reading(None, "failed-request", str(error)), source.line
        if self.spec.mode == "paraphrase":
            return read_paraphrase(reply, self.row(source), self.format, self.system_prompt), source.line
        return read_generated(reply, self.format, self.system_prompt), source.line

    def judge(self, reading: Reading, source_line: int) -> None:
        if reading.example is not None:
            reading = self.filter.check(reading.example, f"synthetic row {len(self.tally.accepted) + 1}")
        if reading.example is None:
            self.tally.reject(reading.reason or "invalid", reading.detail)
        else:
            self.tally.accepted.append((reading.example, source_line))

    async def run(self, key: str, retry: RetryPolicy) -> Tally:
        spec, tally = self.spec.teacher, self.tally
        async with ChatEndpoint("teacher", spec.url, spec.model, key, concurrency=spec.concurrency,
                                timeout_seconds=spec.timeout_seconds, max_retries=spec.max_retries, retry=retry,
                                unavailable=TeacherUnavailable) as teacher:
            await teacher.check_reachable()
            pending: set[asyncio.Task] = set()
            sent = 0
            while True:
                # Until the teacher has answered once, one round of `concurrency` requests at most: a teacher that
                # answers none of them is unavailable, and asking it maxRequests times would only take longer.
                while (len(pending) < spec.concurrency and sent < self.max_requests
                       and len(tally.accepted) + len(pending) < tally.wanted
                       and (tally.answered or sent < spec.concurrency)):
                    pending.add(asyncio.create_task(self.ask(teacher, sent)))
                    sent += 1
                if not pending:
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self.judge(*task.result())
        if tally.answered == 0:
            raise TeacherUnavailable(f"teacher {spec.url} (model {spec.model}) answered none of the "
                                     f"{tally.requests} request(s) sent; the last: {tally.last_failure}")
        return tally


def write_rows(workload: AugmentWorkload, data: SplitDataset, tally: Tally) -> Path:
    """output_dir/synthetic/synthetic-<sha256 prefix>.jsonl: the kept rows in the dataset's shape, tagged."""
    lines = [json.dumps({**as_row(row, data.dataset.format, workload.dataset.system_prompt), "synthetic": True,
                         "source_line": source_line}, ensure_ascii=False) + "\n" for row, source_line in tally.accepted]
    content = "".join(lines).encode("utf-8")
    path = Path(workload.output_dir) / "synthetic" / f"synthetic-{hashlib.sha256(content).hexdigest()[:12]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def report_lines(stats: AugmentationStats, workload: AugmentWorkload, data: SplitDataset,
                 tally: Tally | None) -> list[str]:
    """The report the stage prints: what was wanted and asked, what was kept and rejected, a few of each."""
    spec, real_rows = workload.dataset.augment, len(data.split.train)
    out = [f"teacher: {stats.teacher} ({spec.mode})",
           f"wanted: {stats.wanted:,} synthetic rows (targetRows {spec.target_rows:,}, {real_rows:,} real training "
           f"rows, maxShare {spec.max_share})"]
    if tally is None:
        return out + ["nothing to ask the teacher for"]
    rejected = ", ".join(f"{reason} {count:,}" for reason, count in sorted(tally.rejected.items())) or "none"
    out.append(f"requests: {stats.requests:,}; accepted {stats.accepted:,}; rejected {sum(tally.rejected.values()):,}"
               f" ({rejected})")
    out += [f"  accepted, e.g.: "
            f"{json.dumps(as_row(row, data.dataset.format, workload.dataset.system_prompt), ensure_ascii=False)[:300]}"
            for row, _ in tally.accepted[:SHOWN]]
    out += [f"  rejected, e.g.: {example}" for example in tally.examples[:SHOWN]]
    if stats.uri:
        out.append(f"written: {stats.uri}")
    return out


def augment(workload: AugmentWorkload, *, retry: RetryPolicy = TEACHER) -> AugmentResult:
    from tuneloop.workload_data.chat import load_tokenizer
    from tuneloop.workload_data.rows import DataError

    started = time.monotonic()
    spec = workload.dataset.augment
    if spec is None:
        return failure("InvalidWorkload", "dataset.augment is not set: there is nothing to augment")
    try:
        tokenizer = load_tokenizer(workload.model_path)
    except (OSError, ValueError) as error:
        return failure("InvalidModel", f"the base model's tokenizer cannot be loaded from {workload.model_path}: "
                                       f"{error}")
    try:
        data = split_dataset(workload, tokenizer)
    except DataError as error:
        return failure("InvalidData", str(error))
    if spec.mode == "paraphrase" and data.dataset.format == "text":
        return failure("InvalidWorkload", f"dataset.augment.mode paraphrase rewrites a row's request, and the text "
                                          f"rows of {data.dataset.path} have none: use mode generate")
    real_rows = len(data.split.train)
    stats = AugmentationStats(wanted=synthetic_wanted(spec, real_rows), teacher=f"{spec.teacher.model} @ "
                                                                                f"{spec.teacher.url}")
    tally = None
    if stats.wanted:
        try:
            tally = asyncio.run(Augmenter(workload, data, tokenizer, stats.wanted).run(
                teacher_key(spec.teacher, workload.teacher_key_env), retry))
        except TeacherUnavailable as error:
            return failure("TeacherUnavailable", str(error))
        stats.requests, stats.accepted = tally.requests, len(tally.accepted)
        stats.rejected, stats.examples = dict(sorted(tally.rejected.items())), tally.examples
    path = write_rows(workload, data, tally) if tally and tally.accepted else None
    stats.uri = str(path) if path else None
    stats.seconds = round(time.monotonic() - started, 1)
    stats.summary = stats.describe()
    for line in report_lines(stats, workload, data, tally):
        print(line, flush=True)
    return AugmentResult(succeeded=True, synthetic_path=stats.uri, stats=stats, message=stats.summary,
                         seconds=stats.seconds)


def failure(reason: str, message: str) -> AugmentResult:
    return AugmentResult(succeeded=False, reason=reason, message=message)


def main(argv: list[str] | None = None) -> int:
    return workload_main(argv, "python -m tuneloop_trainer.augment", __doc__, AugmentWorkload, AugmentResult,
                         augment, failure, "AugmentFailed", log)


if __name__ == "__main__":
    sys.exit(main())
