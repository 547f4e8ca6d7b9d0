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
from tuneloop.api.workloads import SnapshotResult, SnapshotWorkload
from tuneloop.feedback.app import create_app
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


def add(url: str, key: str, correction: str, prompt: str = "Where is my order?", **fields: object) -> int:
    body = {"prompt": prompt, "answer": "No idea.", "correction": correction, "model": MODEL,
            "idempotencyKey": key, **fields}
    response = httpx.post(f"{url}/v1/feedback", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
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
    _, first = snapshot(tmp_path, service, "first", outputDir=str(tmp_path / "one"))
    add(service, "late", "A row that arrives after the first snapshot.")
    _, again = snapshot(tmp_path, service, "again", outputDir=str(tmp_path / "two"), upToId=first.up_to_id)
    assert first.sha256 == again.sha256 and first.rows == again.rows == 4
    assert Path(first.path).read_bytes() == Path(again.path).read_bytes()
    assert Path(first.path).name == f"corrections-{first.sha256[:12]}.jsonl"
    assert hashlib.sha256(Path(first.path).read_bytes()).hexdigest() == first.sha256
    assert [path.name for path in (tmp_path / "one").iterdir()] == [Path(first.path).name]  # no partial file left


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
