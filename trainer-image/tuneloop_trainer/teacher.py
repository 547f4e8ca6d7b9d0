"""The augment stage's conversation with its teacher (dataset.augment.teacher): what each request shows and
asks, and how a reply becomes a candidate row.

Prompts are short and explicit, the task first and the expected reply last, because the teacher may be a
small model. The rows shown are cleaned training rows in the dataset's own shape (alpaca, messages or text),
so the teacher sees no personal data that dataset.cleaning redacts and no validation or test row.

  generate    a few real rows, then "write ONE new row as a JSON object with the same keys";
  paraphrase  one real row's request (alpaca: its input, or its instruction when it has none; messages: the
              last user turn), then "rewrite it"; the real answer is kept. Because the answer is kept, a rewrite
              must keep what the answer depends on: one that drops a number of the request (an account, an
              amount, a date) or runs to more than MAX_PARAPHRASE_GROWTH times its length is rejected as
              lost-facts. Names and meaning cannot be checked this way; the teacher's quality decides them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.api.augmentation import AugmentSpec, TeacherSpec
from tuneloop.chat_endpoint import fenced_text, json_object
from tuneloop.workload_data.rows import Dataset, Example, parse_row

SYSTEM_PROMPT = "You write training examples for a dataset. You follow the instructions exactly."

GENERATE_PROMPT = """\
Here are {count} examples from a dataset, one JSON object per line:

{rows}

Write ONE new example that is different from all of them. {instructions}
Use exactly the same JSON keys ({keys}). Reply with the JSON object only, on one line."""

PARAPHRASE_PROMPT = """\
Rewrite the following request in other words. Keep its meaning and every fact, name and number in it. \
{instructions}

<request>{request}</request>

Reply with the rewritten request only."""

NUMBER = re.compile(r"\d{2,}")
MAX_PARAPHRASE_GROWTH = 3.0

DEFAULT_INSTRUCTIONS = {
    "generate": "Keep the task and the style of the examples, and vary the content.",
    "paraphrase": "",
}


class TeacherUnavailable(RuntimeError):
    """The teacher cannot be asked: no key, refused, or it answered nothing."""


def teacher_key(spec: TeacherSpec, env_name: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The API key, under the judge's rules: from `env_name` (teacher.apiKeyEnv locally, the Secret's variable in
    a cluster); no variable named: an endpoint without auth, and "EMPTY" is what vLLM's documentation passes."""
    if env_name is None:
        return "EMPTY"
    key = environ.get(env_name, "").strip()
    if key:
        return key
    if spec.api_key_secret is not None:
        where = (f"dataset.augment.teacher.apiKeySecret ({spec.api_key_secret.name}, key {spec.api_key_secret.key}) "
                 "should be in")
    else:
        where = "dataset.augment.teacher.apiKeyEnv:"
    raise TeacherUnavailable(f"{where} environment variable {env_name}, which is not set or empty")


def as_row(example: Example, row_format: str, system_prompt: str | None) -> dict[str, Any]:
    """A (cleaned) example as a row of the dataset's format. A system message the spec's systemPrompt added is left
    out (loading adds it again); an alpaca request is split back at its first blank line into instruction and input,
    which loading joins the same way."""
    if example.messages is None:
        return {"text": example.text or ""}
    messages = example.messages
    if system_prompt and messages[0] == {"role": "system", "content": system_prompt}:
        messages = messages[1:]
    if row_format == "messages":
        return {"messages": [dict(message) for message in messages]}
    instruction, _, extra = messages[0]["content"].partition("\n\n")
    output = messages[-1]["content"]
    if extra.strip():
        return {"instruction": instruction, "input": extra, "output": output}
    return {"instruction": instruction, "output": output}


def request_key(row: dict[str, Any]) -> tuple[str, int | None]:
    """Where a row's request is: ("input" | "instruction", None) for alpaca, ("messages", index) for messages."""
    if "messages" in row:
        return "messages", max(index for index, message in enumerate(row["messages"]) if message["role"] == "user")
    return ("input", None) if row.get("input") else ("instruction", None)


def request_text(row: dict[str, Any]) -> str:
    field, index = request_key(row)
    return row[field][index]["content"] if index is not None else row[field]


def with_request(row: dict[str, Any], request: str) -> dict[str, Any]:
    field, index = request_key(row)
    if index is None:
        return {**row, field: request}
    messages = [dict(message) for message in row[field]]
    messages[index]["content"] = request
    return {**row, field: messages}


def generate_messages(rows: list[dict[str, Any]], spec: AugmentSpec) -> list[dict[str, str]]:
    prompt = GENERATE_PROMPT.format(
        count=len(rows), rows="\n".join(json.dumps(row, ensure_ascii=False) for row in rows),
        instructions=spec.instructions or DEFAULT_INSTRUCTIONS["generate"], keys=", ".join(rows[0]))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def paraphrase_messages(row: dict[str, Any], spec: AugmentSpec) -> list[dict[str, str]]:
    prompt = PARAPHRASE_PROMPT.format(request=request_text(row),
                                      instructions=spec.instructions or DEFAULT_INSTRUCTIONS["paraphrase"])
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt.replace(" \n", "\n")}]


@dataclass
class Reading:
    """A reply read as a row: `example` when it is one; else why not (unparseable or invalid) and what was wrong."""

    example: Example | None
    reason: str | None = None
    detail: str = ""


def read_generated(reply: str, dataset_format: str, system_prompt: str | None) -> Reading:
    """The reply's JSON object, checked as a row of the dataset's format exactly as a real row is."""
    obj = json_object(reply)
    if obj is None:
        return Reading(None, "unparseable", f"no JSON object in {reply.strip()[:120]!r}")
    return checked(obj, dataset_format, system_prompt)


def read_paraphrase(reply: str, source: dict[str, Any], dataset_format: str, system_prompt: str | None) -> Reading:
    """The source row with its request replaced by the reply's text (a lone JSON string value or a <request> tag
    around it is unwrapped)."""
    text = fenced_text(reply)
    obj = json_object(text)
    if obj is not None and len(obj) == 1 and isinstance(next(iter(obj.values())), str):
        text = next(iter(obj.values())).strip()
    text = text.removeprefix("<request>").removesuffix("</request>").strip().strip('"').strip()
    if not text:
        return Reading(None, "unparseable", "an empty reply")
    if problem := lost_facts(request_text(source), text):
        return Reading(None, "lost-facts", f"{problem}: {text[:120]!r}")
    return checked(with_request(source, text), dataset_format, system_prompt)


def lost_facts(request: str, rewrite: str) -> str | None:
    """Why a rewrite can no longer carry the request's answer, or None."""
    missing = [number for number in dict.fromkeys(NUMBER.findall(request)) if number not in NUMBER.findall(rewrite)]
    if missing:
        return f"the rewrite drops {', '.join(missing)}"
    if len(rewrite) > MAX_PARAPHRASE_GROWTH * max(len(request), 1):
        return f"the rewrite is {len(rewrite) / max(len(request), 1):.1f} times as long as the request"
    return None


def checked(row: dict[str, Any], dataset_format: str, system_prompt: str | None) -> Reading:
    try:
        return Reading(parse_row(row, Dataset(Path("teacher"), dataset_format, ""), 0, system_prompt))
    except ValueError as error:
        return Reading(None, "invalid", str(error))
