"""Read a JSONL or Parquet file of preference rows (dataset.preferences) and check every row, as `rows` does for
SFT rows: every bad row is named `file:line: problem` (BadRows), so a bad file fails before any GPU is asked for.

Row shapes (the prompt is a string or a conversation ending with the user's turn: the answer judged follows it):
  pairs  {"prompt": ... | "messages": [...], "chosen": ..., "rejected": ...}   (dpo, sft-then-dpo, kto)
  kto    {"prompt": ... | "messages": [...], "completion": ..., "label": true | false}   (kto)

A null value counts as a missing field: a Parquet file has every column in every row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from tuneloop.workload_data.rows import (
    BadRows,
    DataError,
    _read_bytes,
    _required_string,
    checked_conversation,
    parse_json_line,
)

PreferenceFormat = Literal["pairs", "kto"]
FORMAT_FIELDS = {"pairs": ("chosen", "rejected"), "kto": ("completion", "label")}


@dataclass
class PreferenceRow:
    """One preference row: the prompt as a conversation, and either two answers (pairs) or one answer with a
    verdict (kto). `line` is the file's line (the Parquet row number)."""

    line: int
    prompt_messages: list[dict[str, str]]
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    label: bool | None = None

    @property
    def prompt_text(self) -> str:
        """The user's side of the prompt, as compared with test rows' prompts (system messages left out: they are
        the same on every row)."""
        return "\n".join(message["content"] for message in self.prompt_messages if message["role"] != "system")

    def key(self) -> tuple:
        """Identity of the row's content, for dropping exact duplicates."""
        prompt = tuple((message["role"], message["content"]) for message in self.prompt_messages)
        return prompt, self.chosen, self.rejected, self.completion, self.label

    def trl_row(self) -> dict[str, Any]:
        """The row in TRL's conversational preference format (DPOTrainer: prompt/chosen/rejected; KTOTrainer:
        prompt/completion/label)."""
        if self.chosen is not None:
            return {"prompt": self.prompt_messages,
                    "chosen": [{"role": "assistant", "content": self.chosen}],
                    "rejected": [{"role": "assistant", "content": self.rejected}]}
        return {"prompt": self.prompt_messages,
                "completion": [{"role": "assistant", "content": self.completion}],
                "label": self.label}


@dataclass
class PreferenceDataset:
    path: Path
    format: PreferenceFormat
    sha256: str
    rows: list[PreferenceRow] = field(default_factory=list)


def _present(row: dict[str, Any], key: str) -> bool:
    return row.get(key) is not None


def _shape(row: dict[str, Any]) -> str:
    """pairs or kto, from the fields the row has."""
    pairs = any(_present(row, key) for key in FORMAT_FIELDS["pairs"])
    kto = any(_present(row, key) for key in FORMAT_FIELDS["kto"])
    if pairs and kto:
        raise ValueError("give either chosen and rejected (pairs) or completion and label (kto), not both")
    if pairs:
        return "pairs"
    if kto:
        return "kto"
    raise ValueError("row has neither chosen/rejected (a pairs row) nor completion/label (a kto row)")


def _describe(shape: str) -> str:
    return f"a {shape} row ({', '.join(FORMAT_FIELDS[shape])})"


def _prompt(row: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    if _present(row, "prompt") and _present(row, "messages"):
        raise ValueError("give either prompt or messages, not both")
    if _present(row, "messages"):
        messages = checked_conversation(row["messages"], "user")
    elif _present(row, "prompt"):
        messages = [{"role": "user", "content": _required_string(row, "prompt")}]
    else:
        raise ValueError("missing the prompt: give prompt (a string) or messages (ending with the user's turn)")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _label(row: dict[str, Any]) -> bool:
    if not _present(row, "label"):
        raise ValueError("missing required field 'label' (true: a desirable answer, false: an undesirable one)")
    value = row["label"]
    if not isinstance(value, bool):
        raise ValueError(f"label must be true or false, got {json.dumps(value, ensure_ascii=False, default=str)}")
    return value


def parse_preference_row(row: Any, dataset: PreferenceDataset, line: int, system_prompt: str | None,
                         declared: bool) -> PreferenceRow:
    """One row -> PreferenceRow; with format auto the first row of a recognisable shape fixes the file's format."""
    if not isinstance(row, dict):
        raise ValueError(f"each row must be a JSON object, got {type(row).__name__}")
    shape = _shape(row)
    if dataset.format not in FORMAT_FIELDS:
        dataset.format = shape
    elif shape != dataset.format:
        why = f"dataset.preferences.format is {dataset.format}" if declared else \
            f"the file's first row is a {dataset.format} row"
        raise ValueError(f"{_describe(shape)} in a {dataset.format} file ({why})")
    prompt = _prompt(row, system_prompt)
    if shape == "kto":
        return PreferenceRow(line=line, prompt_messages=prompt, completion=_required_string(row, "completion"),
                             label=_label(row))
    chosen, rejected = _required_string(row, "chosen"), _required_string(row, "rejected")
    if chosen.strip() == rejected.strip():
        raise ValueError("chosen and rejected are the same answer: nothing to prefer")
    return PreferenceRow(line=line, prompt_messages=prompt, chosen=chosen, rejected=rejected)


def load_preferences(path: Path, declared_format: str = "auto",
                     system_prompt: str | None = None) -> PreferenceDataset:
    """Read and check every row of a JSONL or Parquet preference file; BadRows names every bad one."""
    path = Path(path)
    if declared_format not in ("auto", *FORMAT_FIELDS):
        raise DataError(f"{path}: unknown preference format {declared_format!r} (auto, pairs or kto)")
    raw = _read_bytes(path)
    dataset = PreferenceDataset(path=path, format=declared_format, sha256=hashlib.sha256(raw).hexdigest())
    declared = declared_format != "auto"
    problems, rows = [], 0
    for where, number, row in _raw_rows(path, raw):
        rows += 1
        try:
            if isinstance(row, ValueError):
                raise row
            dataset.rows.append(parse_preference_row(row, dataset, number, system_prompt, declared))
        except ValueError as error:
            problems.append(f"{where}: {error}")
    if problems:
        raise BadRows(path, problems, rows)
    if not dataset.rows:
        raise DataError(f"{path}: no rows")
    return dataset


def _raw_rows(path: Path, raw: bytes) -> Iterator[tuple[str, int, Any]]:
    """("file:line" or "file row N" for Parquet, that number, the row or the ValueError reading it raised)."""
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as parquet

        try:
            table = parquet.read_table(path)
        except Exception as error:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: not a readable Parquet file: {error}") from None
        for number, row in enumerate(table.to_pylist(), start=1):
            yield f"{path} row {number}", number, row
        return
    for number, line_bytes in enumerate(raw.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            try:
                line = line_bytes.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"not valid UTF-8 (byte {error.start})") from None
            row: Any = parse_json_line(line)
        except ValueError as error:
            row = error
        yield f"{path}:{number}", number, row
