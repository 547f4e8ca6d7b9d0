"""Training rows near a test or regression row (the champion's test rows): found, reported, removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuneloop.api.finetunejob import ContaminationSpec
from tuneloop.api.workloads import Tracking
from tuneloop.registry.test_rows import champion_test_rows, log_test_rows
from tuneloop.workload_data.rows import Example, load_dataset, write_jsonl
from tuneloop_trainer.contamination import describe, find_contamination
from tuneloop_trainer.snapshot import training_row

QUESTION = ("my order number 4471 arrived with a cracked screen and the box was open when the courier "
            "handed it over so i would like a replacement sent to the same address")  # 30 words


def chat(line: int, user: str, assistant: str = "Thanks, we will look into it.", system: str | None = None) -> Example:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Example(line=line, messages=([{"role": "system", "content": system}] if system else []) + messages)


def words(count: int, prefix: str) -> str:
    return " ".join(f"{prefix}{index}" for index in range(count))


def lines(rows: list[Example]) -> list[int]:
    return [row.line for row in rows]


def test_an_exact_copy_of_a_test_prompt_is_found_at_threshold_one_and_a_changed_word_is_not():
    test = [chat(40, QUESTION, "We are sorry, a replacement is on its way.")]
    changed = QUESTION.replace("cracked", "scratched")
    train = [chat(12, QUESTION.upper(), "Please send a photo first."), chat(13, changed)]

    kept, stats = find_contamination(train, test, [], ContaminationSpec(threshold=1.0))

    assert lines(kept) == [13]
    assert (stats.contaminated, stats.removed, stats.test_rows) == (1, 1, 1)
    assert stats.examples == ["train line 12 ~ test line 40 (1.00)"]


def test_a_pair_is_found_at_or_below_its_similarity_and_not_above_it():
    # word 3-grams: 18 shared of 20 in all, a Jaccard similarity of 0.90
    test = [chat(1, words(20, "w"))]
    train = [chat(1, words(20, "w") + " extra1 extra2")]
    precise = {"num_perm": 1024}

    _, found = find_contamination(train, test, [], ContaminationSpec(threshold=0.85, **precise))
    _, missed = find_contamination(train, test, [], ContaminationSpec(threshold=0.95, **precise))

    assert found.contaminated == 1 and missed.contaminated == 0
    similarity = float(found.examples[0].rsplit("(", 1)[1].rstrip(")"))
    assert similarity == pytest.approx(0.90, abs=0.03)


def test_rows_well_below_the_threshold_are_kept():
    test = [chat(1, words(20, "w"))]
    half = chat(2, words(10, "w") + " " + words(10, "other"))  # 8 of 26 word 3-grams shared
    kept, stats = find_contamination([half], test, [], ContaminationSpec())
    assert lines(kept) == [2] and stats.contaminated == 0


def test_the_prompt_is_compared_not_the_answer_nor_the_system_prompt():
    system = "You are the support assistant of ACME. Answer politely, briefly and in the customer's language."
    test = [chat(5, QUESTION, "A replacement is on its way.", system=system)]
    same_prompt_new_answer = chat(1, QUESTION, "Please return the broken one first; the label is attached.")
    same_answer_other_prompt = chat(2, "Where can I see the status of my refund?", "A replacement is on its way.",
                                    system=system)

    kept, stats = find_contamination([same_prompt_new_answer, same_answer_other_prompt], test, [],
                                     ContaminationSpec())

    assert lines(kept) == [2]
    assert stats.examples == ["train line 1 ~ test line 5 (1.00)"]


def test_with_remove_false_every_row_is_kept_and_the_findings_reported():
    test = [chat(40, QUESTION)]
    train = [chat(1, "How do I reset my password?"), chat(2, QUESTION)]

    kept, stats = find_contamination(train, test, [], ContaminationSpec(remove=False))

    assert lines(kept) == [1, 2]
    assert (stats.contaminated, stats.removed) == (1, 0)
    assert stats.examples == ["train line 2 ~ test line 40 (1.00)"]
    assert describe(stats) == ("1 training row near the 1 test rows (similarity >= 0.80); kept in training "
                               "(dataset.contamination.remove is false): train line 2 ~ test line 40 (1.00)")


def test_findings_name_both_lines_and_the_set_and_at_most_ten_are_listed():
    test = [chat(100 + index, f"{QUESTION} about parcel {index}") for index in range(6)]
    regression = [chat(200 + index, f"{QUESTION} regarding delivery {index}") for index in range(6)]
    train = [chat(line, row.messages[0]["content"]) for line, row in enumerate(test + regression, start=1)]

    kept, stats = find_contamination(train, test, regression, ContaminationSpec())

    assert kept == []
    assert (stats.contaminated, stats.removed, stats.test_rows, stats.regression_rows) == (12, 12, 6, 6)
    assert len(stats.examples) == 10
    assert stats.examples[0] == "train line 1 ~ test line 100 (1.00)"
    assert stats.examples[6] == "train line 7 ~ regression line 200 (1.00)"


def test_without_test_or_regression_rows_nothing_is_compared_or_removed():
    train = [chat(1, QUESTION), chat(2, "How do I reset my password?")]
    kept, stats = find_contamination(train, [], [], ContaminationSpec())
    assert kept == train
    assert stats.model_dump() == {"threshold": 0.8, "test_rows": 0, "regression_rows": 0, "contaminated": 0,
                                  "removed": 0, "examples": []}
    assert describe(stats) == "none: no training row near the 0 test rows (similarity >= 0.80)"
    assert find_contamination([], [chat(1, QUESTION)], [], ContaminationSpec())[0] == []


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_rows_of_every_format_are_compared_as_loaded(tmp_path):
    """alpaca (instruction + input is the prompt), messages (the turns before the answer) and text (all of it)."""
    alpaca = load_dataset(write_rows(tmp_path / "alpaca.jsonl", [
        {"instruction": "Summarise the ticket below.", "input": QUESTION, "output": "Cracked screen, wants a new one."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    ]), system_prompt="You are ACME's assistant.").examples
    messages = load_dataset(write_rows(tmp_path / "messages.jsonl", [
        {"messages": [{"role": "user", "content": "Summarise the ticket below.\n\n" + QUESTION},
                      {"role": "assistant", "content": "Replacement wanted."}]},
        {"messages": [{"role": "user", "content": "What are your opening hours?"},
                      {"role": "assistant", "content": "9 to 5."}]},
    ])).examples
    text = load_dataset(write_rows(tmp_path / "text.jsonl", [
        {"text": "Returns are accepted within 30 days of delivery with the receipt and the original box."},
        {"text": "Our shop in Lyon is closed on Sundays."},
    ])).examples
    text_test = [Example(line=9, text="returns are accepted within 30 days of delivery, with the receipt and "
                                      "the original box!")]

    kept_alpaca, alpaca_stats = find_contamination(alpaca, messages, [], ContaminationSpec())
    kept_messages, messages_stats = find_contamination(messages, alpaca, [], ContaminationSpec())
    kept_text, text_stats = find_contamination(text, text_test, [], ContaminationSpec())

    assert lines(kept_alpaca) == [2] and alpaca_stats.examples == ["train line 1 ~ test line 1 (1.00)"]
    assert lines(kept_messages) == [2] and messages_stats.examples == ["train line 1 ~ test line 1 (1.00)"]
    assert lines(kept_text) == [2] and text_stats.examples == ["train line 1 ~ test line 9 (1.00)"]


def test_a_schedule_cycles_corrections_that_copy_a_champion_test_row_are_dropped(tmp_path):
    """The cycle's chain at the function level: the champion's training run logged its test rows; the next
    cycle fetches them as the regression set, and a reviewer's correction whose conversation is (nearly) a
    champion test prompt does not reach the new candidate's training."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = MlflowClient(tracking_uri=uri)
    experiment = mlflow.create_experiment("tuneloop", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = mlflow.create_run(experiment).info.run_id
    outage = ("What is the priority of: since this morning the payment page shows error 500 for every customer "
              "who tries to pay by card, orders stay in the basket, the support line is overloaded and the shop "
              "has taken no money for three hours now")  # 50 words
    champion_test = [chat(1, outage, "P1"),
                     chat(2, "What is the priority of: please change the font colour of the footer", "P4")]
    write_jsonl(tmp_path / "test.jsonl", champion_test)
    log_test_rows(Tracking(tracking_uri=uri), run_id, tmp_path / "test.jsonl")
    mlflow.create_registered_model("acme-tickets")
    mlflow.create_model_version("acme-tickets", f"runs:/{run_id}/adapter", run_id=run_id)
    mlflow.set_registered_model_alias("acme-tickets", "champion", "1")

    system = "You triage support tickets."
    corrections = [training_row(record, system) for record in [
        {"id": 31, "prompt": outage.replace("overloaded", "jammed"), "correction": "P0"},  # near champion line 1
        {"id": 32, "prompt": "What is the priority of: the invoice PDF has a typo in the address", "correction": "P3"},
        {"id": 33, "prompt": "What is the priority of: the login page is slow for some users in Asia",
         "correction": "P2"},
    ]]
    new_test = [corrections.pop(2)]  # the new job's own test split

    fetched = champion_test_rows(uri, "acme-tickets", tmp_path / "regression")
    regression = load_dataset(fetched.path).examples
    kept, stats = find_contamination(corrections, new_test, regression, ContaminationSpec())

    assert lines(kept) == [32]
    assert (stats.contaminated, stats.removed, stats.test_rows, stats.regression_rows) == (1, 1, 1, 2)
    assert stats.examples[0].startswith("train line 31 ~ regression line 1 (")

    # The cycle's job replays the template's whole dataset, and the champion's test rows came from it.
    replayed = load_dataset(write_rows(tmp_path / "base.jsonl", [
        {"instruction": "What is the priority of: the nightly export to the warehouse failed once", "output": "P3"},
        {"instruction": "What is the priority of: please change the font colour of the footer", "output": "P4"},
    ]), system_prompt=system).examples
    kept_replay, replay_stats = find_contamination(replayed, new_test, regression, ContaminationSpec(),
                                                   train_name="replay")
    assert lines(kept_replay) == [1]
    assert replay_stats.examples == ["replay line 2 ~ regression line 2 (1.00)"]
