"""python -m tuneloop_trainer.snapshot --spec SPEC.json --result RESULT.json [--termination-log PATH]

Turns reviewers' feedback into training sets: the feedback rows of one model with
afterId < id <= upToId (upToId: the service's last id when the snapshot starts) that have a
correction become `messages` rows (the conversation, then the correction as the assistant's answer),
go through the trainer's own cleaning (normalisation, personal-data redaction, exact and near
duplicates, as configured) and are written to `<outputDir>/corrections-<sha12>.jsonl`. Beside it,
from the same rows (feedback_preferences): `pairs-<sha12>.jsonl` (messages, chosen = the correction,
rejected = the served answer) and `kto-<sha12>.jsonl` (messages, completion, label) from corrections,
verdicts and ratings. <sha12>: the first 12 hex digits of the file's sha256. The same range gives the
same bytes and hashes: rows in id order, keys sorted, compact JSON, one row a line.

An empty set writes no file (no new rows: success, rows 0, no file at all). The result file is
written in every case.
Exit status 0: done. 1: a bad spec, a refused token, a range the service does not have; retrying
cannot help. 3: the service could not be reached or kept failing; a retry (the Job's) may succeed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tuneloop.api.finetunejob import PII_KINDS
from tuneloop.api.workloads import SnapshotFile, SnapshotResult, SnapshotWorkload
from tuneloop.workload_cli import report, run_workload, workload_parser
from tuneloop.workload_data.rows import Example
from tuneloop_trainer.cleaning import clean
from tuneloop_trainer.feedback_preferences import Messages, preference_rows
from tuneloop_trainer.feedback_client import FeedbackClient, FeedbackError, FeedbackUnavailable, Unauthorized

log = logging.getLogger("tuneloop_trainer.snapshot")
PERMANENT_FAILURE_EXIT = 1
SERVICE_UNREACHABLE_EXIT = 3


class InvalidRange(Exception):
    pass


def failure(reason: str, message: str, **fields: Any) -> SnapshotResult:
    return SnapshotResult(succeeded=False, reason=reason, message=message, **fields)


def snapshot_end(client: FeedbackClient, workload: SnapshotWorkload) -> int:
    """upToId as asked, but never past the last id stored now: rows past it may still be written."""
    last_id = client.get("/v1/feedback/stats", {"model": workload.model, "afterId": workload.after_id})["lastId"]
    if last_id < workload.after_id:
        raise InvalidRange(f"the feedback service's last id for model {workload.model!r} is {last_id}, below "
                           f"afterId {workload.after_id}: its database was replaced or the model renamed; "
                           "start the schedule's snapshots again from 0")
    return last_id if workload.up_to_id is None else min(workload.up_to_id, last_id)


def fetch_records(client: FeedbackClient, workload: SnapshotWorkload, up_to_id: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    after: int | None = workload.after_id
    while after is not None and after < up_to_id:
        page = client.get("/v1/feedback", {"model": workload.model, "afterId": after, "upToId": up_to_id,
                                           "limit": workload.page_size})
        records += page["items"]
        after = page["nextAfterId"]
    return records


def conversation(record: dict[str, Any], system_prompt: str | None) -> Messages:
    """The conversation the reviewer saw, up to the user's last turn."""
    if record.get("messages"):
        messages = [{"role": message["role"], "content": message["content"]} for message in record["messages"]]
    else:
        messages = [{"role": "user", "content": record["prompt"]}]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def training_row(record: dict[str, Any], system_prompt: str | None) -> Example:
    """The conversation the reviewer saw, answered by the correction."""
    return Example(line=record["id"], messages=[*conversation(record, system_prompt),
                                                {"role": "assistant", "content": record["correction"]}])


def serialised(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
                   for row in rows).encode("utf-8")


def write_atomically(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def write_rows(folder: Path, prefix: str, rows: list[dict[str, Any]]) -> SnapshotFile | None:
    """`<prefix>-<sha12>.jsonl`, or nothing for no rows."""
    if not rows:
        return None
    data = serialised(rows)
    sha256 = hashlib.sha256(data).hexdigest()
    path = write_atomically(folder, f"{prefix}-{sha256[:12]}.jsonl", data)
    return SnapshotFile(path=str(path), sha256=sha256, rows=len(rows))


def take_snapshot(workload: SnapshotWorkload, client: FeedbackClient) -> SnapshotResult:
    up_to_id = snapshot_end(client, workload)
    records = fetch_records(client, workload, up_to_id)
    conversations = {record["id"]: conversation(record, workload.system_prompt) for record in records}
    corrected = [record for record in records if record.get("correction") is not None]
    # The length filter needs the model's tokenizer; the training run applies it.
    cleaning = workload.cleaning.model_copy(update={"min_tokens": 0, "max_tokens": None})
    rows, stats = clean([training_row(record, workload.system_prompt) for record in corrected], cleaning,
                        count_tokens=lambda row: 0)
    preferences = preference_rows(records, conversations, rows, cleaning)
    redactions = Counter(stats.pii_redacted) + preferences.redactions
    counts = {"fetched": len(records), "rows": len(rows), "cleaning": stats,
              "redactions": {kind: redactions[kind] for kind in PII_KINDS if redactions[kind]},
              "dropped_duplicates": stats.exact_duplicates + stats.near_duplicates,
              "after_id": workload.after_id, "up_to_id": up_to_id}
    span = f"feedback ids {workload.after_id + 1}..{up_to_id} of model {workload.model!r}"
    folder = Path(workload.output_dir)
    sft = write_rows(folder, "corrections", [{"messages": row.messages} for row in rows])
    pairs, kto = write_rows(folder, "pairs", preferences.pairs), write_rows(folder, "kto", preferences.kto)
    written = ", ".join(f"{file.rows} {what}" for what, file in (("rows", sft), ("pairs", pairs), ("KTO rows", kto))
                        if file is not None)
    if not written:
        return SnapshotResult(succeeded=True, message=f"nothing to train on in {span} "
                                                      f"({len(records)} fetched)", **counts)
    contradicted = (f", {preferences.contradicted} KTO rows left out: reviews disagreed"
                    if preferences.contradicted else "")
    return SnapshotResult(succeeded=True, sha256=sft.sha256 if sft else None, path=sft.path if sft else None,
                          pairs=pairs, kto=kto, **counts,
                          message=f"{written} from {span} ({len(records)} fetched, {len(corrected)} with a "
                                  f"correction, {counts['dropped_duplicates']} duplicates dropped"
                                  f"{contradicted}) -> {folder}")


def run(workload: SnapshotWorkload) -> SnapshotResult:
    token = os.environ.get(workload.token_env, "").strip()
    if not token:
        return failure("TokenMissing", f"no token for the feedback service: set {workload.token_env} "
                                       "(in a cluster, from the schedule's Secret)")
    client = FeedbackClient(workload.feedback_url, token, workload.timeout_seconds, workload.retry_seconds)
    fields = {"after_id": workload.after_id}
    try:
        return take_snapshot(workload, client)
    except Unauthorized as error:
        return failure("Unauthorized", f"{error}; check the token in {workload.token_env}", **fields)
    except FeedbackUnavailable as error:
        return failure("FeedbackUnavailable", str(error), **fields)
    except InvalidRange as error:
        return failure("InvalidRange", str(error), **fields)
    except (FeedbackError, OSError, KeyError, TypeError) as error:
        return failure("SnapshotFailed", f"{type(error).__name__}: {error}", **fields)


def main(argv: list[str] | None = None) -> int:
    parser = workload_parser("python -m tuneloop_trainer.snapshot", __doc__, SnapshotWorkload, SnapshotResult)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_workload(args.spec, SnapshotWorkload, run, failure, "SnapshotFailed")
    report(result, log, args.result, args.termination_log)
    if result.succeeded:
        return 0
    return SERVICE_UNREACHABLE_EXIT if result.reason == "FeedbackUnavailable" else PERMANENT_FAILURE_EXIT


if __name__ == "__main__":
    sys.exit(main())
