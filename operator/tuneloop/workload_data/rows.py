"""Read a JSONL or Parquet dataset, check every row and turn it into a chat conversation; write
conversations back as JSONL (the hold-out split the trainer hands the evaluator).

Row shapes:
  alpaca    {"instruction": ..., "input": ... (optional), "output": ...}
  messages  {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
  text      {"text": ...}                (plain text, loss on every token)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_SHOWN = 10  # bad rows named in a message; the count says how many there are in all


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the problem."""


class BadRows(DataError):
    """Every bad row of a file: `problems` has each as `file:line: problem`."""

    def __init__(self, path: Path, problems: list[str], rows: int):
        self.problems, self.rows = problems, rows
        if len(problems) == 1:
            super().__init__(problems[0])
            return
        shown = "; ".join(problems[:MAX_SHOWN])
        more = f"; and {len(problems) - MAX_SHOWN:,} more" if len(problems) > MAX_SHOWN else ""
        super().__init__(f"{path}: {len(problems):,} bad rows of {rows:,}: {shown}{more}")


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where a string holds half a UTF-16 surrogate pair (JSON's "\\ud800" escape): no tokenizer and
    no UTF-8 file can take it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return f"{where or 'the row'} holds a lone UTF-16 surrogate (\\u{ord(value[error.start]):04x}) at " \
                   f"character {error.start}"
    elif isinstance(value, dict):
        for key, item in value.items():
            if found := lone_surrogate(item, f"{where}.{key}" if where else f"field {key!r}"):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := lone_surrogate(item, f"{where}[{index}]"):
                return found
    return None


def parse_json_line(line: str) -> Any:
    """One JSONL line; ValueError with a plain message for anything that is not a usable JSON value."""
    try:
        row = json.loads(line)
        found = lone_surrogate(row)
    except json.JSONDecodeError as error:
        raise ValueError(f"broken JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:
        raise ValueError("broken JSON: nested deeper than a dataset row can be") from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"broken JSON: {error}") from None
    if found:
        raise ValueError(found)
    return row


@dataclass
class Example:
    """One row as a conversation (or plain text), remembering where it came from."""

    line: int
    messages: list[dict[str, str]] | None = None
    text: str | None = None

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        return (self.messages or [])[:-1]

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"] if self.messages else (self.text or "")


@dataclass
class Dataset:
    path: Path
    format: str
    sha256: str
    examples: list[Example] = field(default_factory=list)


def detect_format(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    raise ValueError("row has none of the fields messages, instruction/output or text")


def _required_string(row: dict[str, Any], key: str, *, optional: bool = False) -> str:
    if key not in row or row[key] is None:
        if optional:
            return ""
        raise ValueError(f"missing required field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    if not optional and not value.strip():
        raise ValueError(f"field {key!r} is empty")
    return value


def _alpaca(row: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    instruction = _required_string(row, "instruction")
    extra = _required_string(row, "input", optional=True)
    output = _required_string(row, "output")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + messages


LAST_TURN = {  # a conversation's last role -> (when only a system message is given, when the last turn is another's)
    "assistant": ("a user message and the assistant's answer must follow",
                  "the last message must be from the assistant (the answer to learn)"),
    "user": ("the user's turn must follow",
             "messages must end with the user's turn (the answer being judged follows it)"),
}


def checked_conversation(raw: Any, ends_with: str) -> list[dict[str, str]]:
    """A `messages` field as {role, content} dicts: an optional system message, then user and assistant turns
    alternating, the last one `ends_with`'s (assistant: a training row; user: a prompt whose answer is judged)."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("field 'messages' must be a non-empty list")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role must be one of {list(ROLES)}, got {role!r}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"messages[{index}].content must be a non-empty string")
        messages.append({"role": role, "content": content})
    offset = 1 if messages[0]["role"] == "system" else 0
    turns = messages[offset:]
    only_system, wrong_last = LAST_TURN[ends_with]
    if not turns:
        raise ValueError(f"messages has only a system message; {only_system}")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                f"messages[{index + offset}] has role {message['role']!r} where {expected!r} was expected "
                "(after an optional system message, turns alternate user, assistant, ...)")
    if turns[-1]["role"] != ends_with:
        raise ValueError(wrong_last)
    return messages


def _messages(row: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    messages = checked_conversation(row.get("messages"), "assistant")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def parse_row(row: Any, dataset: Dataset, line: int, system_prompt: str | None) -> Example:
    """One row -> Example; the first row fixes the format when it is auto."""
    if not isinstance(row, dict):
        raise ValueError(f"each row must be a JSON object, got {type(row).__name__}")
    if dataset.format == "auto":
        dataset.format = detect_format(row)
    if dataset.format == "alpaca":
        return Example(line=line, messages=_alpaca(row, system_prompt))
    if dataset.format == "messages":
        return Example(line=line, messages=_messages(row, system_prompt))
    return Example(line=line, text=_required_string(row, "text"))


def load_dataset(path: Path, declared_format: str = "auto", system_prompt: str | None = None) -> Dataset:
    """Read and check every row of a JSONL or Parquet file; BadRows names every bad one."""
    if path.suffix in (".parquet", ".pq"):
        return load_parquet(path, declared_format, system_prompt)
    return load_jsonl(path, declared_format, system_prompt)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    return raw


def load_jsonl(path: Path, declared_format: str = "auto", system_prompt: str | None = None) -> Dataset:
    raw = _read_bytes(path)
    dataset = Dataset(path=path, format=declared_format, sha256=hashlib.sha256(raw).hexdigest())
    problems, rows = [], 0
    for number, line_bytes in enumerate(raw.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        rows += 1
        try:
            try:
                line = line_bytes.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"not valid UTF-8 (byte {error.start})") from None
            dataset.examples.append(parse_row(parse_json_line(line), dataset, number, system_prompt))
        except ValueError as error:
            problems.append(f"{path}:{number}: {error}")
    if problems:
        raise BadRows(path, problems, rows)
    return dataset


def load_parquet(path: Path, declared_format: str = "auto", system_prompt: str | None = None) -> Dataset:
    """Parquet rows are numbered from 1 in messages (`file.parquet row 3`)."""
    import pyarrow.parquet as parquet

    raw = _read_bytes(path)
    try:
        table = parquet.read_table(path)
    except Exception as error:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None
    dataset = Dataset(path=path, format=declared_format, sha256=hashlib.sha256(raw).hexdigest())
    problems = []
    for number, row in enumerate(table.to_pylist(), start=1):
        try:
            dataset.examples.append(parse_row(row, dataset, number, system_prompt))
        except ValueError as error:
            problems.append(f"{path} row {number}: {error}")
    if problems:
        raise BadRows(path, problems, table.num_rows)
    if not dataset.examples:
        raise DataError(f"{path}: no rows")
    return dataset


def write_jsonl(path: Path, examples: list[Example]) -> None:
    """Write examples as chat `messages` rows (the evaluator's input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            row = {"messages": example.messages} if example.messages else {"text": example.text}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
