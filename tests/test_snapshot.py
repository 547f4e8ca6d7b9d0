"""The snapshot workload against a real feedback service (uvicorn in a thread): the range it takes,
a reproducible file and hash, the trainer's cleaning, exit codes, and a file the trainer loads."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from feedback_server import serving
from postgres import free_port, postgres_server  # noqa: F401  (postgres_server: a fixture)
from tuneloop.api.finetunejob import CleaningSpec, PiiSpec
from tuneloop.api.workloads import SnapshotFile, SnapshotResult, SnapshotWorkload
from tuneloop.feedback.app import create_app
from tuneloop.workload_data.preferences import load_preferences
from tuneloop.workload_data.rows import load_dataset
from tuneloop_trainer.snapshot import main

TOKEN = "snapshot-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "acme-tickets"


@pytest.fixture
def service(tmp_path):
    with serving(create_app(f"sqlite:///{tmp_path / 'feedback.db'}", TOKEN)) as url:
        yield url


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TOKEN", TOKEN)


def add(url: str, key: str, correction: str | None, prompt: str | None = "Where is my order?", **fields: object) -> int:
    body = {"prompt": prompt, "answer": "No idea.", "correction": correction, "model": MODEL,
            "idempotencyKey": key, **fields}
    response = httpx.post(f"{url}/v1/feedback", json={name: value for name, value in body.items() if value is not None},
                          headers=AUTH)
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def snapshot(tmp_path: Path, url: str, name: str = "run", **fields: object) -> tuple[int, SnapshotResult]:
    """Runs the workload's command line in this process; returns its exit status and result."""
    spec = {"feedbackUrl": url, "model": MODEL, "outputDir": str(tmp_path / "snapshots"), "retrySeconds": 0,
            **fields}
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    status = main(["--spec", str(tmp_path / f"{name}.json"), "--result", str(tmp_path / f"{name}-result.json")])
    return status, SnapshotResult.model_validate_json((tmp_path / f"{name}-result.json").read_text())


def rows_of(result: SnapshotResult) -> list[list[dict[str, str]]]:
    assert result.path is not None
    return [json.loads(line)["messages"] for line in Path(result.path).read_text().splitlines()]


def lines(file: SnapshotFile | None) -> list[dict]:
    return [] if file is None else [json.loads(line) for line in Path(file.path).read_text().splitlines()]


def test_only_the_rows_after_the_previous_snapshot_are_taken(tmp_path, service):
    for index in range(3):
        add(service, f"a{index}", f"Your order {index} ships on Monday.")
    add(service, "other", "Not this model's.", model="other-model")
    status, first = snapshot(tmp_path, service, "first", pageSize=2)
    assert status == 0 and first.succeeded
    assert (first.fetched, first.rows, first.after_id, first.up_to_id) == (3, 3, 0, 3)
    answers = [row[-1]["content"] for row in rows_of(first)]
    assert answers == [f"Your order {index} ships on Monday." for index in range(3)]

    later = [add(service, f"b{index}", f"Refunds take {index + 2} days.") for index in range(2)]
    status, second = snapshot(tmp_path, service, "second", afterId=first.up_to_id)
    assert status == 0 and (second.fetched, second.rows, second.up_to_id) == (2, 2, later[-1])
    assert [row[-1]["content"] for row in rows_of(second)] == ["Refunds take 2 days.", "Refunds take 3 days."]
    assert rows_of(second)[0] == [{"role": "user", "content": "Where is my order?"},
                                  {"role": "assistant", "content": "Refunds take 2 days."}]


def test_the_same_range_gives_the_same_file_and_hash(tmp_path, service):
    for index in range(4):
        add(service, f"k{index}", f"Answer number {index}: restart the router, then call back.")
    add(service, "rated", None, prompt="Can I pay by invoice?", rating=5)
    add(service, "rejected", None, prompt="Do you ship abroad?", verdict="reject")
    _, first = snapshot(tmp_path, service, "first", outputDir=str(tmp_path / "one"))
    add(service, "late", "A row that arrives after the first snapshot.")
    add(service, "late-verdict", None, prompt="Late?", verdict="accept")
    _, again = snapshot(tmp_path, service, "again", outputDir=str(tmp_path / "two"), upToId=first.up_to_id)
    assert first.sha256 == again.sha256 and first.rows == again.rows == 4
    assert (first.pairs, first.kto) == (again.pairs.model_copy(update={"path": first.pairs.path}),
                                        again.kto.model_copy(update={"path": first.kto.path}))
    assert (first.pairs.rows, first.kto.rows) == (4, 4 + 1 + 2)  # the four corrections' answers are one KTO row
    for one, two, prefix in ((first.path, again.path, "corrections"), (first.pairs.path, again.pairs.path, "pairs"),
                             (first.kto.path, again.kto.path, "kto")):
        assert Path(one).read_bytes() == Path(two).read_bytes()
        digest = hashlib.sha256(Path(one).read_bytes()).hexdigest()
        assert Path(one).name == f"{prefix}-{digest[:12]}.jsonl"
    assert hashlib.sha256(Path(first.path).read_bytes()).hexdigest() == first.sha256
    assert sorted(path.name for path in (tmp_path / "one").iterdir()) == sorted(  # no partial file left
        Path(path).name for path in (first.path, first.pairs.path, first.kto.path))
    assert "4 rows, 4 pairs, 7 KTO rows from feedback ids 1..6" in first.message


def test_duplicates_are_dropped_and_personal_data_redacted_by_the_training_cleaning(tmp_path, service):
    long = ("To change the delivery address open the order page, choose Edit address, enter the new street "
            "and house number, confirm with the code we text you, and wait for the confirmation email")
    add(service, "original", long)
    add(service, "exact-copy", long)
    add(service, "near-copy", long + ".")  # the same words: a near duplicate, not an exact one
    add(service, "pii", "Write to jane.doe@example.com or call +49 30 901820.", prompt="Who can help me?")
    add(service, "confirmed", "No idea.", prompt="Is anyone there?")  # a confirmation: the answer was right
    cleaning = CleaningSpec(pii=PiiSpec(redact=True)).to_wire()
    status, result = snapshot(tmp_path, service, cleaning=cleaning)
    assert status == 0
    assert (result.fetched, result.rows, result.dropped_duplicates) == (5, 3, 2)
    assert result.redactions == {"email": 1, "phone": 1}
    assert result.cleaning.exact_duplicates == 1 and result.cleaning.near_duplicates == 1
    text = Path(result.path).read_text()
    assert "Write to [EMAIL] or call [PHONE]." in text and "jane.doe" not in text


def test_each_correction_that_changes_the_answer_is_one_pair(tmp_path, service):
    """A retried POST, a confirmation, a verdict alone and an exact duplicate correction add no pair;
    every correction that changed the answer adds exactly one."""
    add(service, "fixed", "It ships on Monday.")
    add(service, "fixed", "It ships on Monday.")  # the client's retry: the same key and content
    add(service, "fixed-again", "It ships on Monday.")  # another reviewer, the same correction: an exact duplicate
    add(service, "confirmed", "No idea.", prompt="What is the meaning of this?")
    add(service, "only-a-verdict", None, prompt="Can I return it?", verdict="reject")
    add(service, "fixed-and-rejected", "Returns are free for 30 days.", prompt="Returns?", verdict="reject")
    add(service, "fixed-in-spaces-only", "No   idea.", prompt="Anyone?")  # the same answer once normalised
    status, result = snapshot(tmp_path, service)
    assert status == 0
    assert (result.fetched, result.rows) == (6, 4)
    pairs = lines(result.pairs)
    assert [(pair["messages"][-1]["content"], pair["chosen"], pair["rejected"]) for pair in pairs] == [
        ("Where is my order?", "It ships on Monday.", "No idea."),
        ("Returns?", "Returns are free for 30 days.", "No idea.")]
    assert all(pair["messages"] == [{"role": "user", "content": pair["messages"][-1]["content"]}] for pair in pairs)
    kto = {(row["messages"][-1]["content"], row["completion"]): row["label"] for row in lines(result.kto)}
    assert kto == {("Where is my order?", "It ships on Monday."): True, ("Where is my order?", "No idea."): False,
                   ("What is the meaning of this?", "No idea."): True, ("Can I return it?", "No idea."): False,
                   ("Returns?", "No idea."): False,  # the verdict and the correction agree: one row
                   ("Returns?", "Returns are free for 30 days."): True, ("Anyone?", "No idea."): True}
    assert result.kto.rows == len(kto) and "4 rows, 2 pairs, 7 KTO rows" in result.message


def test_verdicts_and_ratings_judge_the_served_answer_and_disagreeing_reviews_give_no_kto_row(tmp_path, service):
    add(service, "accepted", None, prompt="A?", verdict="accept")
    add(service, "rated-high", None, prompt="B?", rating=4)
    add(service, "rated-low", None, prompt="C?", rating=2)
    add(service, "rated-middle", None, prompt="D?", rating=3)
    add(service, "accepted-here", None, prompt="E?", verdict="accept")
    add(service, "rejected-here", None, prompt="E?", verdict="reject")
    status, result = snapshot(tmp_path, service)
    assert status == 0 and result.rows == 0 and result.path is None and result.pairs is None
    kto = [(row["messages"][-1]["content"], row["completion"], row["label"]) for row in lines(result.kto)]
    assert kto == [("A?", "No idea.", True), ("B?", "No idea.", True), ("C?", "No idea.", False)]
    assert "1 KTO rows left out: reviews disagreed" in result.message


def test_personal_data_never_reaches_the_pairs_or_kto_files(tmp_path, service):
    leaky = "Ask jane.doe@example.com, she knows."
    for key, fields in (("corrected", {"correction": "Our help desk answers within a day."}),
                        ("rejected", {"correction": None, "verdict": "reject", "prompt": "Who else?"}),
                        ("asked", {"correction": None, "rating": 5, "prompt": "Mail bob@example.org, please?"})):
        body = {"prompt": "Who can help me?", "answer": leaky, "model": MODEL, "idempotencyKey": key, **fields}
        response = httpx.post(f"{service}/v1/feedback", headers=AUTH,
                              json={name: value for name, value in body.items() if value is not None})
        assert response.status_code == 201, response.text
    cleaning = CleaningSpec(pii=PiiSpec(redact=True)).to_wire()
    status, result = snapshot(tmp_path, service, cleaning=cleaning)
    assert status == 0 and result.pairs.rows == 1 and result.kto.rows == 4
    for file in (result.pairs, result.kto):
        text = Path(file.path).read_text()
        assert "@example" not in text and "Ask [EMAIL], she knows." in text
    assert lines(result.pairs)[0]["rejected"] == "Ask [EMAIL], she knows."
    assert "Mail [EMAIL], please?" in Path(result.kto.path).read_text()
    assert result.redactions == {"email": 4}  # three served answers and one question, each once


def test_the_pairs_and_kto_files_load_as_the_trainers_preference_datasets(tmp_path, service):
    add(service, "chat", "Yes, until Friday.", prompt=None,
        messages=[{"role": "system", "content": "You answer for Acme."}, {"role": "user", "content": "Open?"},
                  {"role": "assistant", "content": "Which shop?"}, {"role": "user", "content": "Berlin."}])
    add(service, "single", "Track it under My orders.", verdict="reject")
    add(service, "liked", None, prompt="Thanks!", rating=5)
    status, result = snapshot(tmp_path, service, systemPrompt="Be brief.")
    assert status == 0
    pairs = load_preferences(Path(result.pairs.path), "pairs")
    assert pairs.format == "pairs" and pairs.sha256 == result.pairs.sha256
    chat, single = pairs.rows
    assert [message["role"] for message in chat.prompt_messages] == ["system", "user", "assistant", "user"]
    assert (chat.chosen, chat.rejected) == ("Yes, until Friday.", "No idea.")
    assert single.prompt_messages == [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Where is my order?"}]
    kto = load_preferences(Path(result.kto.path))
    assert kto.format == "kto" and kto.sha256 == result.kto.sha256
    assert [(row.prompt_messages[-1]["content"], row.completion, row.label) for row in kto.rows] == [
        ("Berlin.", "Yes, until Friday.", True), ("Berlin.", "No idea.", False),
        ("Where is my order?", "No idea.", False), ("Where is my order?", "Track it under My orders.", True),
        ("Thanks!", "No idea.", True)]


def test_no_new_rows_is_a_success_without_a_file(tmp_path, service):
    status, empty = snapshot(tmp_path, service)
    assert status == 0 and empty.succeeded
    assert (empty.rows, empty.fetched, empty.path, empty.sha256, empty.up_to_id) == (0, 0, None, None, 0)
    last = add(service, "only", "The one correction.")
    status, caught_up = snapshot(tmp_path, service, afterId=last)
    assert status == 0 and (caught_up.rows, caught_up.up_to_id) == (0, last)
    assert not (tmp_path / "snapshots").exists() or not any((tmp_path / "snapshots").iterdir())


def test_the_range_never_reaches_past_the_last_stored_id(tmp_path, service):
    last = add(service, "one", "First correction.")
    status, result = snapshot(tmp_path, service, upToId=last + 50)
    assert status == 0 and result.up_to_id == last
    status, ahead = snapshot(tmp_path, service, "ahead", afterId=last + 10)
    assert status == 1 and ahead.reason == "InvalidRange" and "start the schedule's snapshots again" in ahead.message


def test_the_written_file_loads_as_the_trainers_messages_dataset(tmp_path, service):
    add(service, "chat", "Yes, until Friday.", prompt=None,
        messages=[{"role": "system", "content": "You answer for Acme."}, {"role": "user", "content": "Open?"},
                  {"role": "assistant", "content": "Which shop?"}, {"role": "user", "content": "Berlin."}])
    add(service, "single", "Track it under My orders.")
    status, result = snapshot(tmp_path, service, systemPrompt="Be brief.")
    assert status == 0
    dataset = load_dataset(Path(result.path))
    assert dataset.format == "messages" and dataset.sha256 == result.sha256
    chat, single = dataset.examples
    assert [message["role"] for message in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[0]["content"] == "You answer for Acme." and chat.reference == "Yes, until Friday."
    assert single.messages[0] == {"role": "system", "content": "Be brief."}
    assert single.reference == "Track it under My orders."


def test_a_wrong_or_missing_token_fails_at_once(tmp_path, service, monkeypatch):
    add(service, "one", "A correction.")
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TOKEN", "not-the-token-0123456789")
    status, refused = snapshot(tmp_path, service, retrySeconds=60)
    assert status == 1 and refused.reason == "Unauthorized"
    assert "refused the token (HTTP 401" in refused.message and "TUNELOOP_FEEDBACK_TOKEN" in refused.message
    assert "not-the-token" not in refused.message
    monkeypatch.delenv("TUNELOOP_FEEDBACK_TOKEN")
    status, missing = snapshot(tmp_path, service, tokenEnv="MY_FEEDBACK_TOKEN")
    assert status == 1 and missing.reason == "TokenMissing" and "MY_FEEDBACK_TOKEN" in missing.message


class Outage:
    """How many more requests the service answers with 503, as one restarting would."""

    def __init__(self) -> None:
        self.remaining = 0


class AnswerUnavailable:
    def __init__(self, app, outage: Outage):
        self.app, self.outage = app, outage

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.outage.remaining > 0:
            self.outage.remaining -= 1
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"restarting"})
            return
        await self.app(scope, receive, send)


def test_server_errors_are_retried(tmp_path):
    app, outage = create_app(f"sqlite:///{tmp_path / 'feedback.db'}", TOKEN), Outage()
    app.add_middleware(AnswerUnavailable, outage=outage)
    with serving(app) as url:
        add(url, "one", "A correction.")
        outage.remaining = 2
        status, result = snapshot(tmp_path, url, retrySeconds=30)
    assert outage.remaining == 0
    assert status == 0 and result.rows == 1


def test_an_unreachable_service_exits_3_so_the_job_retries(tmp_path):
    spec = SnapshotWorkload(feedback_url=f"http://127.0.0.1:{free_port()}", model=MODEL,
                            output_dir=str(tmp_path / "out"), retry_seconds=1, timeout_seconds=2)
    (tmp_path / "spec.json").write_text(spec.model_dump_json(by_alias=True))
    completed = subprocess.run(
        [sys.executable, "-m", "tuneloop_trainer.snapshot", "--spec", str(tmp_path / "spec.json"),
         "--result", str(tmp_path / "result.json"), "--termination-log", str(tmp_path / "termination-log")],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 3, completed.stderr
    result = SnapshotResult.model_validate_json((tmp_path / "result.json").read_text())
    assert result.reason == "FeedbackUnavailable" and "cannot reach the feedback service" in result.message
    assert json.loads((tmp_path / "termination-log").read_text())["reason"] == "FeedbackUnavailable"
    assert TOKEN not in completed.stderr


def test_a_bad_spec_exits_1(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"feedbackUrl": "ftp://x", "model": MODEL, "outputDir": "o"}))
    assert main(["--spec", str(tmp_path / "spec.json"), "--result", str(tmp_path / "result.json")]) == 1
    result = SnapshotResult.model_validate_json((tmp_path / "result.json").read_text())
    assert result.reason == "InvalidWorkload" and "is not an http(s) base URL" in result.message


def test_a_snapshot_from_postgresql(tmp_path, postgres_server):
    with serving(create_app(postgres_server.create_database(), TOKEN)) as url:
        ids = [add(url, f"k{index}", f"Correction {index}.") for index in range(3)]
        status, result = snapshot(tmp_path, url, afterId=ids[0])
    assert status == 0 and (result.rows, result.up_to_id) == (2, ids[-1])
    assert [row[-1]["content"] for row in rows_of(result)] == ["Correction 1.", "Correction 2."]
