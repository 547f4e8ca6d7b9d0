"""Reading JSONL datasets: row shapes, errors that say file:line and what is wrong, the split, and labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.workload_data.chat import render_prompt
from tuneloop.workload_data.rows import BadRows, DataError, Example, load_jsonl
from tuneloop_trainer.prepare import split_rows
from tuneloop_trainer.tokens import IGNORE_INDEX, tokenize


def write(tmp_path: Path, content: str | bytes, name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


ALPACA = {"instruction": "Route this ticket.", "input": "We were charged twice.", "output": "BIL/REFUND"}
MESSAGES = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


# --- row shapes -----------------------------------------------------------------------------------


def test_alpaca_rows_become_user_and_assistant_turns(tmp_path):
    path = write(tmp_path, jsonl(ALPACA, {"instruction": "Say hi.", "output": "hi"}))

    dataset = load_jsonl(path, "alpaca")

    assert dataset.format == "alpaca"
    assert [example.messages for example in dataset.examples] == [
        [{"role": "user", "content": "Route this ticket.\n\nWe were charged twice."},
         {"role": "assistant", "content": "BIL/REFUND"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}],
    ]
    assert [example.line for example in dataset.examples] == [1, 2]
    assert dataset.examples[0].reference == "BIL/REFUND"
    assert dataset.examples[0].prompt_messages == dataset.examples[0].messages[:1]


def test_messages_rows_are_kept_as_they_are(tmp_path):
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                        {"role": "assistant", "content": "Bye!"}]}

    dataset = load_jsonl(write(tmp_path, jsonl(row)), "messages")

    assert dataset.examples[0].messages == row["messages"]
    assert dataset.examples[0].reference == "Bye!"


def test_text_rows_keep_their_text(tmp_path):
    dataset = load_jsonl(write(tmp_path, jsonl({"text": "The quick brown fox."}, {"text": "Jumps."})), "text")

    assert [example.text for example in dataset.examples] == ["The quick brown fox.", "Jumps."]
    assert dataset.examples[0].messages is None


@pytest.mark.parametrize(("row", "expected"), [
    pytest.param(ALPACA, "alpaca", id="alpaca"),
    pytest.param({"output": "only an output", "instruction": "x"}, "alpaca", id="alpaca-output-first"),
    pytest.param(MESSAGES, "messages", id="messages"),
    pytest.param({"text": "plain"}, "text", id="text"),
])
def test_auto_detects_the_format_from_the_first_row(tmp_path, row, expected):
    dataset = load_jsonl(write(tmp_path, jsonl(row, row)))

    assert dataset.format == expected
    assert len(dataset.examples) == 2


def test_blank_lines_and_windows_line_ends_are_fine_and_lines_count_from_one(tmp_path):
    path = write(tmp_path, "\n" + json.dumps(ALPACA) + "\r\n\n   \n" + json.dumps(ALPACA) + "\r\n")

    dataset = load_jsonl(path)

    assert [example.line for example in dataset.examples] == [2, 5]


def test_the_sha256_is_of_the_file_bytes(tmp_path):
    import hashlib

    path = write(tmp_path, jsonl(ALPACA))

    assert load_jsonl(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_system_prompt_comes_first_in_alpaca_rows(tmp_path):
    dataset = load_jsonl(write(tmp_path, jsonl(ALPACA)), system_prompt="You are Acme's ticket router.")

    assert dataset.examples[0].messages[0] == {"role": "system", "content": "You are Acme's ticket router."}
    assert [m["role"] for m in dataset.examples[0].messages] == ["system", "user", "assistant"]


def test_a_system_prompt_is_added_to_messages_rows_without_one(tmp_path):
    dataset = load_jsonl(write(tmp_path, jsonl(MESSAGES)), system_prompt="Be kind.")

    assert dataset.examples[0].messages == [{"role": "system", "content": "Be kind."}] + MESSAGES["messages"]


def test_a_row_s_own_system_message_wins_over_the_system_prompt(tmp_path):
    row = {"messages": [{"role": "system", "content": "Row system."}] + MESSAGES["messages"]}

    dataset = load_jsonl(write(tmp_path, jsonl(row)), system_prompt="Spec system.")

    assert dataset.examples[0].messages == row["messages"]


# --- bad input: every error names the file, the line and the problem --------------------------------

GOOD = json.dumps(ALPACA) + "\n"

BAD_ROWS = [
    pytest.param(GOOD + '{"instruction": "a", "output": "b",}\n', 2,
                 "broken JSON: Expecting property name enclosed in double quotes at column 36", id="broken-json"),
    pytest.param(GOOD + '{"instruction": "Route this."}\n', 2, "missing required field 'output'", id="missing-output"),
    pytest.param(GOOD + '{"instruction": "Route this.", "output": "   "}\n', 2, "field 'output' is empty",
                 id="empty-output"),
    pytest.param(GOOD + '{"instruction": "", "output": "x"}\n', 2, "field 'instruction' is empty",
                 id="empty-instruction"),
    pytest.param('{"instruction": "Route this.", "output": 42}\n', 1, "field 'output' must be a string, got int",
                 id="output-is-a-number"),
    pytest.param(GOOD + GOOD + '{"instruction": "a", "input": ["x"], "output": "b"}\n', 3,
                 "field 'input' must be a string, got list", id="input-is-a-list"),
    pytest.param(jsonl({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}), 1,
                 "messages[0] has role 'assistant' where 'user' was expected", id="assistant-first"),
    pytest.param(jsonl({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                                     {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}), 1,
                 "messages[2] has role 'user' where 'assistant' was expected", id="two-user-turns"),
    pytest.param(jsonl(MESSAGES, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                               {"role": "user", "content": "c"}]}), 2,
                 "the last message must be from the assistant (the answer to learn)", id="last-not-assistant"),
    pytest.param(jsonl({"messages": [{"role": "human", "content": "a"}]}), 1,
                 "messages[0].role must be one of ['system', 'user', 'assistant'], got 'human'", id="unknown-role"),
    pytest.param(jsonl({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}), 1,
                 "messages[1].content must be a non-empty string", id="empty-content"),
    pytest.param(jsonl({"messages": []}), 1, "field 'messages' must be a non-empty list", id="no-messages"),
    pytest.param(GOOD.encode() + b'{"text": "caf\xe9"}\n', 2, "not valid UTF-8 (byte 13)", id="latin-1-byte"),
    pytest.param(GOOD + "[1, 2, 3]\n", 2, "each row must be a JSON object, got list", id="row-is-a-list"),
    pytest.param('"just a string"\n', 1, "each row must be a JSON object, got str", id="row-is-a-string"),
    pytest.param('{"prompt": "a", "completion": "b"}\n', 1,
                 "row has none of the fields messages, instruction/output or text", id="unknown-shape"),
]


@pytest.mark.parametrize(("content", "line", "problem"), BAD_ROWS)
def test_a_bad_row_is_named_by_file_and_line(tmp_path, content, line, problem):
    path = write(tmp_path, content)

    with pytest.raises(DataError) as caught:
        load_jsonl(path)

    assert str(caught.value).startswith(f"{path}:{line}: {problem}")


@pytest.mark.parametrize(("line", "problem"), [
    pytest.param("[" * 100_000 + "]" * 100_000, "broken JSON: nested deeper than a dataset row can be",
                 id="100000-nested-brackets"),
    pytest.param('{"text": ' + "9" * 5000 + "}", "broken JSON: Exceeds the limit (4300 digits)", id="5000-digits"),
    pytest.param('{"instruction": "a\\ud800b", "output": "x"}',
                 "field 'instruction' holds a lone UTF-16 surrogate (\\ud800) at character 1", id="lone-surrogate"),
    pytest.param('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\\udfff"}]}',
                 "field 'messages'[1].content holds a lone UTF-16 surrogate", id="surrogate-in-a-message"),
])
def test_rows_that_break_json_parsers_are_named_not_a_traceback(tmp_path, line, problem):
    path = write(tmp_path, jsonl(ALPACA) + line + "\n")

    with pytest.raises(DataError) as caught:
        load_jsonl(path)

    assert str(caught.value).startswith(f"{path}:2: {problem}")


def test_every_bad_row_is_reported_with_the_count_and_the_message_is_capped(tmp_path):
    rows = [ALPACA if index % 3 else {"instruction": "x"} for index in range(1, 61)]  # every third is bad
    path = write(tmp_path, jsonl(*rows) + "{broken\n")

    with pytest.raises(BadRows) as caught:
        load_jsonl(path)

    assert len(caught.value.problems) == 21 and caught.value.rows == 61
    assert caught.value.problems[0] == f"{path}:3: missing required field 'output'"
    assert caught.value.problems[-1].startswith(f"{path}:61: broken JSON")
    message = str(caught.value)
    assert message.startswith(f"{path}: 21 bad rows of 61: {path}:3: ") and message.endswith("; and 11 more")


def test_a_row_of_another_shape_after_the_first_is_an_error(tmp_path):
    path = write(tmp_path, jsonl(ALPACA, MESSAGES))

    with pytest.raises(DataError, match=r":2: missing required field 'instruction'"):
        load_jsonl(path)


def test_the_declared_format_wins_over_detection(tmp_path):
    path = write(tmp_path, jsonl(ALPACA))

    with pytest.raises(DataError, match=r":1: missing required field 'text'"):
        load_jsonl(path, "text")


def test_a_row_with_only_a_system_message_is_a_data_error(tmp_path):
    path = write(tmp_path, jsonl({"messages": [{"role": "system", "content": "Be brief."}]}))

    with pytest.raises(DataError, match=r":1: "):
        load_jsonl(path)


@pytest.mark.parametrize(("content", "problem"), [
    pytest.param(b"", "the file is empty", id="empty-file"),
    pytest.param(b"\n\n   \n\t\n", "the file is empty", id="only-blank-lines"),
])
def test_a_file_without_rows_is_an_error_naming_the_file(tmp_path, content, problem):
    path = write(tmp_path, content)

    with pytest.raises(DataError) as caught:
        load_jsonl(path)

    assert str(caught.value) == f"{path}: {problem}"


def test_a_missing_file_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(DataError) as caught:
        load_jsonl(tmp_path / "nope.jsonl")

    assert str(caught.value) == f"{tmp_path / 'nope.jsonl'}: dataset file not found"


# --- split_rows -----------------------------------------------------------------------------------


def examples(count: int) -> list[Example]:
    return [Example(line=number, text=f"row {number}") for number in range(1, count + 1)]


def lines(rows: list[Example]) -> list[int]:
    return [row.line for row in rows]


@pytest.mark.parametrize(("count", "validation", "test", "expected"), [
    (300, 0.1, 0.1, (240, 30, 30)), (10, 0.1, 0.1, (8, 1, 1)), (10, 0.25, 0.25, (4, 3, 3)), (3, 0.1, 0.1, (1, 1, 1)),
    (4, 0.49, 0.49, (1, 1, 2)), (1000, 0.05, 0.2, (750, 50, 200)),
])
def test_split_is_disjoint_covers_every_row_and_keeps_each_fraction(count, validation, test, expected):
    rows = examples(count)

    split = split_rows(rows, validation, test, seed=7)

    assert (len(split.train), len(split.validation), len(split.test)) == expected
    parts = [set(lines(part)) for part in (split.train, split.validation, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(lines(split.train) + lines(split.validation) + lines(split.test)) == lines(rows)


def test_split_is_the_same_for_the_same_seed_and_differs_for_another():
    rows = examples(100)

    first, second = split_rows(rows, 0.1, 0.1, seed=42), split_rows(rows, 0.1, 0.1, seed=42)
    other = split_rows(rows, 0.1, 0.1, seed=43)

    assert first == second
    assert lines(first.test) != lines(other.test)


def test_the_test_rows_stay_the_same_when_only_the_validation_share_changes():
    rows = examples(100)

    assert lines(split_rows(rows, 0.1, 0.2, seed=5).test) == lines(split_rows(rows, 0.3, 0.2, seed=5).test)


def test_split_keeps_the_file_order_within_each_part():
    split = split_rows(examples(50), 0.2, 0.2, seed=1)

    for part in (split.train, split.validation, split.test):
        assert lines(part) == sorted(lines(part))


def test_fewer_than_three_rows_cannot_be_split():
    with pytest.raises(ValueError, match="2 rows cannot be split into train, validation and test"):
        split_rows(examples(2), 0.1, 0.1, seed=1)


# --- tokenize -------------------------------------------------------------------------------------


def labelled(tokenized) -> list[int]:
    return [token for token, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE_INDEX]


def chat(*turns: str, system: str | None = None) -> Example:
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": role, "content": content} for role, content in zip(roles, turns)]
    return Example(line=1, messages=([{"role": "system", "content": system}] if system else []) + messages)


def test_only_the_answer_is_labelled(tiny_tokenizer):
    answer = '{"acct":"NL-48213","cat":"BIL","act":"REFUND","pri":"P1"}'
    example = chat("Hi, this is Maria from Norwind Logistics. We were charged twice.", answer,
                   system="You are Acme's ticket router.")

    tokenized = tokenize(tiny_tokenizer, example, max_length=1024)

    assert len(tokenized.input_ids) == len(tokenized.labels)
    assert tiny_tokenizer.decode(tokenized.input_ids) == tiny_tokenizer.apply_chat_template(
        example.messages, tokenize=False)
    prompt_length = len(tiny_tokenizer(render_prompt(tiny_tokenizer, example), add_special_tokens=False)["input_ids"])
    assert prompt_length > 0
    assert tokenized.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert tokenized.labels[prompt_length:] == tokenized.input_ids[prompt_length:]
    # The model learns the answer and to stop after it; the template's newline after <|im_end|> rides along.
    assert tiny_tokenizer.decode(labelled(tokenized)).removesuffix("\n") == answer + "<|im_end|>"
    assert tokenized.trained_tokens == len(tokenized.input_ids) - prompt_length
    assert not tokenized.truncated


def test_every_assistant_turn_is_labelled_and_no_user_turn(tiny_tokenizer):
    example = chat("Hi", "Hello there", "Again please", "The quick fox")

    tokenized = tokenize(tiny_tokenizer, example, max_length=1024)

    text = tiny_tokenizer.decode(labelled(tokenized))
    assert "Hello there<|im_end|>" in text
    assert "The quick fox<|im_end|>" in text
    assert "Hi" not in text and "Again" not in text and "user" not in text and "<|im_start|>" not in text
    # Two separate labelled runs: the second user turn between them is masked.
    runs, inside = 0, False
    for label in tokenized.labels:
        if label != IGNORE_INDEX and not inside:
            runs += 1
        inside = label != IGNORE_INDEX
    assert runs == 2


def test_text_rows_are_labelled_everywhere_and_end_with_eos(tiny_tokenizer):
    tokenized = tokenize(tiny_tokenizer, Example(line=1, text="The quick brown fox"), max_length=1024)

    assert tokenized.labels == tokenized.input_ids
    assert tiny_tokenizer.decode(tokenized.input_ids) == "The quick brown fox<|im_end|>"
    assert tokenized.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_truncation_to_max_length_is_reported(tiny_tokenizer):
    example = chat("Hi, this is Maria from Norwind Logistics. We were charged twice.", "BIL REFUND P1")
    full = tokenize(tiny_tokenizer, example, max_length=1024)

    cut = tokenize(tiny_tokenizer, example, max_length=8)
    exact = tokenize(tiny_tokenizer, example, max_length=len(full.input_ids))

    assert cut.truncated
    assert cut.input_ids == full.input_ids[:8] and cut.labels == full.labels[:8]
    # Cut inside the prompt: no answer token is left to learn from.
    assert cut.trained_tokens == 0
    assert not exact.truncated and exact.input_ids == full.input_ids


def test_truncation_of_text_rows_is_reported(tiny_tokenizer):
    tokenized = tokenize(tiny_tokenizer, Example(line=1, text="The quick brown fox jumps over the lazy dog"),
                         max_length=3)

    assert tokenized.truncated
    assert len(tokenized.input_ids) == len(tokenized.labels) == 3


def test_the_tiny_tokenizer_can_be_saved_like_a_model_s(tmp_path):
    from tiny_model import build_tiny_tokenizer
    from transformers import AutoTokenizer

    build_tiny_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")

    assert loaded.eos_token == "<|im_end|>"
    assert loaded.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                      add_generation_prompt=True) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
