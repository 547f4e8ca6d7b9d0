"""The feedback service against a SQLite file and a real PostgreSQL: auth, validation, idempotency
(also under concurrent retries), stats, export pagination, migrations, OpenAPI, the command line."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from feedback_server import serving
from postgres import free_port, postgres_server  # noqa: F401  (postgres_server: a fixture)
from openai_server import closed_port
from tuneloop.feedback.app import create_app
from tuneloop.feedback.auth import TokenError, token_from_environment, tokens_from_environment, tokens_from_yaml
from tuneloop.feedback.database import (
    DatabaseUrlError,
    database_url_from_environment,
    exclusive_transaction,
    make_engine,
    parse_database_url,
    use_write_ahead_log,
)
from tuneloop.feedback.limits import MAX_BODY_BYTES, MAX_MESSAGES, MAX_NAME_CHARS, MAX_TEXT_BYTES
from tuneloop.feedback.migrate import (
    MIGRATION_LOCK_KEY,
    VERSION_TABLE,
    alembic_config,
    current_revision,
    head_revision,
    upgrade_database,
)
from tuneloop.feedback.models import feedback as feedback_table
from tuneloop.feedback.models import metadata
from tuneloop.feedback.schemas import FeedbackIn
from tuneloop.feedback.store import INSERT_LOCK_KEY, add_feedback, row_values

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def feedback(key: str = "key-1", **changes: object) -> dict[str, object]:
    body: dict[str, object] = {"prompt": "How do I reset my password?", "answer": "Call us.",
                               "correction": "Open Settings > Security and choose Reset password.",
                               "model": "acme-tickets", "idempotencyKey": key}
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def client(database_url):
    with TestClient(create_app(database_url, TOKEN), headers=AUTH) as test_client:
        yield test_client


def stats(client, **params) -> dict:
    response = client.get("/v1/feedback/stats", params=params)
    assert response.status_code == 200, response.text
    return response.json()


# --- auth -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [("post", "/v1/feedback"), ("get", "/v1/feedback"),
                                         ("get", "/v1/feedback/stats")])
def test_every_v1_route_wants_the_token(client, method, path):
    kwargs = {"json": feedback()} if method == "post" else {}
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": f"Basic {TOKEN}"}):
        response = getattr(client, method)(path, headers=headers, **kwargs)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in response.json()["error"]
    assert stats(client)["total"] == 0


def test_wrong_token_is_named_invalid_and_right_token_passes(client):
    wrong = client.post("/v1/feedback", json=feedback(), headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert client.post("/v1/feedback", json=feedback()).status_code == 201
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
    assert client.get("/readyz", headers={"Authorization": ""}).json() == {"status": "ready"}


def test_no_token_means_no_service_unless_asked_for(tmp_path):
    with pytest.raises(TokenError, match="TUNELOOP_FEEDBACK_TOKEN"):
        create_app(f"sqlite:///{tmp_path / 'f.db'}", None)
    with TestClient(create_app(f"sqlite:///{tmp_path / 'f.db'}", None, allow_no_auth=True)) as open_client:
        assert open_client.post("/v1/feedback", json=feedback()).status_code == 201


def test_token_comes_from_the_variable_or_a_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert token_from_environment({"TUNELOOP_FEEDBACK_TOKEN": TOKEN}) == TOKEN
    assert token_from_environment({"TUNELOOP_FEEDBACK_TOKEN_FILE": str(token_file)}) == TOKEN
    assert token_from_environment({}) is None
    with pytest.raises(TokenError, match="set one"):
        token_from_environment({"TUNELOOP_FEEDBACK_TOKEN": TOKEN, "TUNELOOP_FEEDBACK_TOKEN_FILE": str(token_file)})
    with pytest.raises(TokenError, match="shorter than 16") as refused:
        token_from_environment({"TUNELOOP_FEEDBACK_TOKEN": "short"})
    assert "short" not in str(refused.value).replace("shorter", "")
    with pytest.raises(TokenError, match="cannot read the token file"):
        token_from_environment({"TUNELOOP_FEEDBACK_TOKEN_FILE": str(tmp_path / "missing")})


# --- tokens scoped to namespaces and models ------------------------------------------------------

TEAM_A, TEAM_B = "team-a-token-0123456789abcdef", "team-b-token-0123456789abcdef"
TEAMS = f"""
- name: team-a
  token: {TEAM_A}
  namespace: team-a
- name: team-b (tickets only)
  token: {TEAM_B}
  namespace: team-b
  models: [acme-tickets]
"""


@pytest.fixture
def teams(database_url):
    tokens = tokens_from_yaml(TEAMS, "tokens.yaml").with_service_token(TOKEN)
    with TestClient(create_app(database_url, tokens)) as test_client:
        yield test_client


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_teams_token_never_reads_or_writes_another_teams_corrections(teams):
    assert teams.post("/v1/feedback", json=feedback("a-1"), headers=as_(TEAM_A)).status_code == 201
    assert teams.post("/v1/feedback", json=feedback("b-1", correction="B's fix"), headers=as_(TEAM_B)).status_code == 201
    # The same idempotency key in another namespace is another row, not a conflict that would reveal it.
    same_key = teams.post("/v1/feedback", json=feedback("a-1", correction="B's own"), headers=as_(TEAM_B))
    assert (same_key.status_code, same_key.json()["duplicate"]) == (201, False)

    a_rows = teams.get("/v1/feedback", headers=as_(TEAM_A)).json()["items"]
    b_rows = teams.get("/v1/feedback", params={"model": "acme-tickets"}, headers=as_(TEAM_B)).json()["items"]
    assert [row["idempotencyKey"] for row in a_rows] == ["a-1"]
    assert sorted(row["correction"] for row in b_rows) == ["B's fix", "B's own"]
    assert teams.get("/v1/feedback/stats", params={"model": "acme-tickets"}, headers=as_(TEAM_A)).json()["total"] == 1
    everything = teams.get("/v1/feedback", headers=as_(TOKEN)).json()["items"]  # the service-wide token
    assert len(everything) == 3


def test_a_token_limited_to_models_is_refused_any_other_by_name(teams):
    refused = teams.post("/v1/feedback", json=feedback("b-2", model="payroll"), headers=as_(TEAM_B))
    assert refused.status_code == 403
    assert refused.json()["error"] == "this token (team-b (tickets only)) may not use model 'payroll'"
    for path in ("/v1/feedback", "/v1/feedback/stats"):
        assert teams.get(path, params={"model": "payroll"}, headers=as_(TEAM_B)).status_code == 403
    assert teams.get("/v1/feedback/stats", headers=as_(TEAM_B)).json()["total"] == 0


@pytest.mark.parametrize("text,problem", [
    ("not: [a list", "not YAML"),
    ("{}", "a YAML list of 1 to 10,000 tokens"),
    (f"- {{name: a, token: {TEAM_A}, namespace: Team_A}}", "entry 1.namespace: string should match pattern"),
    ("- {name: a, token: short, namespace: a}", "entry 1.token: the token is shorter than 16 characters"),
    ("- {name: a, token: 12345678901234567890, namespace: a}", "entry 1.token: must be text (quote it)"),
    (f"- {{name: a, token: {TEAM_A}, namespace: a}}\n- {{name: b, token: {TEAM_A}, namespace: b}}",
     "entry 2 (b): the same token is listed twice"),
    (f"- {{name: a, token: {TEAM_A}, namespace: a, models: []}}", "entry 1.models: must have at least 1 item"),
    (f"- {{name: a, token: {TEAM_A}, namespace: a, admin: true}}", "entry 1.admin: is not a known field"),
    ("- {token: short}\n- {name: b}", "entry 1.name: is required; entry 1.token: the token is shorter"),
])
def test_a_bad_tokens_file_is_named_and_never_shows_a_token(text, problem):
    with pytest.raises(TokenError) as refused:
        tokens_from_yaml(text, "tokens.yaml")
    assert problem in str(refused.value)
    assert TEAM_A not in str(refused.value) and "12345678901234567890" not in str(refused.value)


def test_the_tokens_file_comes_from_a_mounted_secret(tmp_path):
    (tmp_path / "tokens.yaml").write_text(TEAMS)
    tokens = tokens_from_environment({"TUNELOOP_FEEDBACK_TOKENS_FILE": str(tmp_path / "tokens.yaml")})
    assert tokens.scope_for(TEAM_A).namespace == "team-a" and tokens.scope_for(TOKEN) is None
    both = tokens_from_environment({"TUNELOOP_FEEDBACK_TOKENS_FILE": str(tmp_path / "tokens.yaml"),
                                    "TUNELOOP_FEEDBACK_TOKEN": TOKEN})
    assert both.scope_for(TOKEN).namespace is None
    with pytest.raises(TokenError, match="cannot read the tokens file"):
        tokens_from_environment({"TUNELOOP_FEEDBACK_TOKENS_FILE": str(tmp_path / "missing.yaml")})


# --- validation -------------------------------------------------------------------------------

TOO_LONG = "x" * (MAX_TEXT_BYTES + 1)
TOO_MANY_BYTES = "€" * (MAX_TEXT_BYTES // 3 + 1)  # fewer characters than the limit, more bytes
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("body,field,words", [
    (feedback(correction=None), "body", "give at least one of correction, verdict or rating"),
    (feedback(verdict="accept"), "body.verdict", "verdict 'accept' contradicts the correction"),
    (feedback(correction="Call us.", verdict="maybe"), "body.verdict", "must be one of 'accept' or 'reject'"),
    (feedback(rating=0), "body.rating", "must be >= 1"),
    (feedback(rating=6), "body.rating", "must be <= 5"),
    (feedback(rating=4.5), "body.rating", "must be"),
    (feedback(rating=True), "body.rating", "must be"),
    (feedback(messages=CHAT), "body.messages", "not both"),
    (feedback(prompt=None), "body.messages", "one of prompt or messages"),
    (feedback(correction=5), "body.correction", "must be a string, not 5"),
    (feedback(answer=TOO_LONG), "body.answer", f"at most {MAX_TEXT_BYTES} bytes"),
    (feedback(prompt=TOO_MANY_BYTES), "body.prompt", f"at most {MAX_TEXT_BYTES} bytes"),
    (feedback(correction="fine\u0000"), "body.correction", "NUL"),
    (feedback(prompt="\ud800"), "body.prompt", "lone surrogate"),
    (feedback(correction=" \n "), "body.correction", "empty"),
    (feedback(prompt=None, messages=[{"role": "robot", "content": "Hi"}]), "body.messages[0].role", "must be one of"),
    (feedback(prompt=None, messages=[{"role": "user", "content": ""}]), "body.messages[0].content", "empty"),
    (feedback(prompt=None, messages=[*CHAT, {"role": "assistant", "content": "Hello"}]), "body.messages",
     "end with the user"),
    (feedback(prompt=None, messages=[CHAT[1], CHAT[1]]), "body.messages", "item 1 has role 'user'"),
    (feedback(prompt=None, messages=[CHAT[1]] * (MAX_MESSAGES + 1)), "body.messages", ""),
    (feedback(prompt=None, messages=[]), "body.messages", "at least 1"),
    (feedback(idempotencyKey=""), "body.idempotencyKey", "1 to"),
    (feedback(idempotencyKey="k" * (MAX_NAME_CHARS + 1)), "body.idempotencyKey", f"1 to {MAX_NAME_CHARS}"),
    (feedback(label="two\nlines"), "body.label", "control characters"),
    (feedback(model=" acme"), "body.model", "space"),
    (feedback(corection="typo"), "body.corection", "not a known field"),
])
def test_a_bad_field_is_named(client, body, field, words):
    # json.dumps escapes what a client library would refuse to send (a lone surrogate)
    response = client.post("/v1/feedback", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: ") and words in error["error"]
    assert stats(client)["total"] == 0


def test_bodies_that_are_not_utf8_json_or_too_large_are_refused(client):
    cases = [
        (b'{"prompt": "caf\xe9"}', 400, "not valid UTF-8 (byte 15)"),
        (b'{"prompt": ', 400, "not valid JSON"),
        (b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}', 413, f"larger than {MAX_BODY_BYTES} bytes"),
    ]
    for content, status, words in cases:
        response = client.post("/v1/feedback", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == status and words in response.json()["error"], response.text
        assert response.json()["field"] == "body"
    chunks = iter([b'{"prompt": "', *[b"x" * 65536] * 5, b'"}'])  # no Content-Length: counted as read
    response = client.post("/v1/feedback", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"
    assert client.post("/v1/feedback").json()["error"] == "body: a JSON request body is required"
    several = client.post("/v1/feedback", json={"prompt": "Hi", "model": "m", "idempotencyKey": "k",
                                                "rating": 9}).json()
    assert several["error"] == "body.answer: is required (and 1 more)"
    assert several["problems"] == [{"field": "body.answer", "error": "is required"},
                                   {"field": "body.rating", "error": "must be <= 5"}]
    assert stats(client)["total"] == 0


def test_valid_rows_round_trip_exactly(client):
    chat = feedback("chat", prompt=None, messages=[*CHAT, {"role": "assistant", "content": "Hello!"},
                                                   {"role": "user", "content": "Zürich → 東京 😀?"}],
                    adapterVersion="7", label="wrong-tone", correction="Ja. ✓")
    largest = feedback("large", prompt="ü" * (MAX_TEXT_BYTES // 2))
    for body in (chat, largest):
        assert client.post("/v1/feedback", json=body).status_code == 201
    items = client.get("/v1/feedback").json()["items"]
    assert [item["idempotencyKey"] for item in items] == ["chat", "large"]
    assert {key: items[0][key] for key in chat} == chat
    assert items[1]["prompt"] == largest["prompt"] and items[1]["messages"] is None
    assert items[0]["createdAt"].endswith("Z") or items[0]["createdAt"].endswith("+00:00")


# --- idempotency ------------------------------------------------------------------------------

def test_a_retry_stores_nothing_and_returns_the_first_id(client):
    first = client.post("/v1/feedback", json=feedback())
    again = client.post("/v1/feedback", json=feedback())
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == {"id": again.json()["id"], "duplicate": False}
    assert again.json()["duplicate"] is True
    assert stats(client)["total"] == 1


def test_the_same_key_with_other_content_is_a_conflict(client):
    original = client.post("/v1/feedback", json=feedback("ticket-42")).json()["id"]
    response = client.post("/v1/feedback", json=feedback("ticket-42", correction="Something else."))
    assert response.status_code == 409
    assert response.json()["field"] == "body.idempotencyKey"
    assert "'ticket-42'" in response.json()["error"] and f"id {original}" in response.json()["error"]
    assert client.post("/v1/feedback", json=feedback("ticket-42", label="new")).status_code == 409
    assert client.post("/v1/feedback", json=feedback("ticket-42", verdict="reject")).status_code == 409
    assert stats(client)["total"] == 1
    rated = client.post("/v1/feedback", json=feedback("rated", correction=None, verdict="reject", rating=2)).json()
    assert client.post("/v1/feedback", json=feedback("rated", correction=None, verdict="reject", rating=2)).json() \
        == {"id": rated["id"], "duplicate": True}
    for changed in ({"rating": 1}, {"rating": None}, {"verdict": "accept"}, {"correction": "Call us."}):
        body = feedback("rated", correction=None, verdict="reject", rating=2) | changed
        response = client.post("/v1/feedback", json={key: value for key, value in body.items() if value is not None})
        assert response.status_code == 409, (changed, response.text)
    assert stats(client)["total"] == 2


# --- verdicts and ratings ---------------------------------------------------------------------

def test_a_verdict_or_a_rating_is_a_review_of_its_own_stored_returned_and_counted(client):
    rows = [
        feedback("accepted", correction=None, verdict="accept"),
        feedback("rejected", correction=None, verdict="reject", rating=1),
        feedback("rated", correction=None, rating=4),
        feedback("confirmed", correction="Call us.", verdict="accept", rating=5),  # accepting the answer as is
        feedback("corrected", verdict="reject"),
        feedback("middling", correction=None, rating=3, model="other-model"),
    ]
    for row in rows:
        response = client.post("/v1/feedback", json=row)
        assert response.status_code == 201, response.text
    items = {item["idempotencyKey"]: item for item in client.get("/v1/feedback").json()["items"]}
    review = {key: (item["correction"], item["verdict"], item["rating"]) for key, item in items.items()}
    assert review == {"accepted": (None, "accept", None), "rejected": (None, "reject", 1), "rated": (None, None, 4),
                      "confirmed": ("Call us.", "accept", 5),
                      "corrected": ("Open Settings > Security and choose Reset password.", "reject", None),
                      "middling": (None, None, 3)}
    counted = stats(client, model="acme-tickets")
    assert {key: counted[key] for key in ("new", "corrections", "confirmations", "accepted", "rejected", "ratings")} \
        == {"new": 5, "corrections": 2, "confirmations": 1, "accepted": 2, "rejected": 2, "ratings": 3}
    later = stats(client, model="acme-tickets", afterId=items["confirmed"]["id"])
    assert (later["new"], later["corrections"], later["rejected"], later["ratings"]) == (1, 1, 1, 0)


def test_the_openapi_document_says_what_the_review_fields_mean(client):
    schemas = client.get("/openapi.json", headers={"Authorization": ""}).json()["components"]["schemas"]
    review = schemas["FeedbackIn"]["properties"]
    assert "preferred over the answer" in review["correction"]["description"]
    assert "accept" in review["verdict"]["description"] and "reject" in review["verdict"]["description"]
    assert "1 (worst) to 5 (best)" in review["rating"]["description"]
    rated = next(option for option in review["rating"]["anyOf"] if option.get("type") == "integer")
    assert (rated["minimum"], rated["maximum"]) == (1, 5)
    for field in ("corrections", "accepted", "rejected", "ratings"):
        assert schemas["FeedbackStats"]["properties"][field]["description"]


def run_together(actions: list, timeout: float = 60) -> None:
    """Runs each action in a thread of its own; a thread still waiting after `timeout` fails the test
    (a missing lock shows as a hang)."""
    threads = [threading.Thread(target=action, daemon=True) for action in actions]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), f"still running after {timeout}s"


def post_together(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """Each body from its own thread and connection, released at the same moment."""
    start = threading.Barrier(len(bodies))
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def post(index: int) -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            start.wait()
            responses[index] = http.post("/v1/feedback", json=bodies[index])

    run_together([lambda index=index: post(index) for index in range(len(bodies))])
    return [response for response in responses if response is not None]


def test_concurrent_retries_store_one_row(database_url):
    with serving(create_app(database_url, TOKEN)) as url:
        responses = post_together(url, [feedback("same")] * 12)
        assert sorted(response.status_code for response in responses) == [200] * 11 + [201]
        assert len({response.json()["id"] for response in responses}) == 1
        assert sum(not response.json()["duplicate"] for response in responses) == 1
        assert httpx.get(f"{url}/v1/feedback/stats", headers=AUTH).json()["total"] == 1


def test_concurrent_writers_each_get_their_own_id(database_url):
    with serving(create_app(database_url, TOKEN)) as url:
        responses = post_together(url, [feedback(f"key-{index}") for index in range(12)])
        ids = sorted(response.json()["id"] for response in responses)
        assert [response.status_code for response in responses] == [201] * 12
        assert len(set(ids)) == 12
        page = httpx.get(f"{url}/v1/feedback", params={"limit": 100}, headers=AUTH).json()
        assert [item["id"] for item in page["items"]] == ids


def test_a_writer_waits_until_the_one_before_it_has_committed(database_url):
    """Ids become visible in order, so the last id a snapshot sees has no uncommitted smaller id behind it."""
    engine = make_engine(database_url)
    upgrade_database(engine)
    second_ids: list[int] = []
    later = threading.Thread(target=lambda: second_ids.append(
        add_feedback(engine, FeedbackIn.model_validate(feedback("second"))).id), daemon=True)
    with exclusive_transaction(engine, INSERT_LOCK_KEY) as connection:
        first_id = connection.execute(
            insert(feedback_table).values(**row_values(FeedbackIn.model_validate(feedback("first"))))
        ).inserted_primary_key[0]
        later.start()
        time.sleep(0.5)
        assert later.is_alive(), "the second insert did not wait for the first to commit"
    later.join(10)
    assert second_ids and second_ids[0] > first_id
    engine.dispose()


# --- stats and export -------------------------------------------------------------------------

def test_stats_count_what_is_new_since_a_snapshot(client):
    rows = [
        feedback("a1", label="tone", adapterVersion="3"),
        feedback("a2", label="facts", adapterVersion="3"),
        feedback("b1", model="other-model", label="tone"),
        feedback("a3", label="tone", adapterVersion="4", correction="Call us."),  # equal to the answer
        feedback("a4", adapterVersion="4"),
    ]
    ids = [client.post("/v1/feedback", json=row).json()["id"] for row in rows]
    everything = stats(client)
    assert (everything["model"], everything["total"], everything["lastId"], everything["new"]) == (None, 5, ids[-1], 5)
    assert everything["byLabel"] == {"facts": 1, "tone": 3}
    model = stats(client, model="acme-tickets", afterId=ids[1])
    assert model == {"model": "acme-tickets", "total": 4, "lastId": ids[4], "afterId": ids[1], "new": 2,
                     "confirmations": 1, "corrections": 2, "accepted": 0, "rejected": 0, "ratings": 0,
                     "byLabel": {"tone": 1}, "byAdapterVersion": {"4": 2}}
    assert stats(client, model="nobody") | {"afterId": 0} == {
        "model": "nobody", "total": 0, "lastId": 0, "afterId": 0, "new": 0, "confirmations": 0, "corrections": 0,
        "accepted": 0, "rejected": 0, "ratings": 0, "byLabel": {}, "byAdapterVersion": {}}


def test_export_pages_through_a_fixed_range_in_id_order(client):
    ids = {}
    for index in range(9):
        model = "other-model" if index % 3 == 2 else "acme-tickets"
        ids[index] = client.post("/v1/feedback", json=feedback(f"k{index}", model=model)).json()["id"]
    wanted = [ids[index] for index in range(1, 8) if index % 3 != 2]  # (ids[0], ids[7]] of acme-tickets
    seen, after, pages = [], ids[0], 0
    while after is not None:
        page = client.get("/v1/feedback", params={"model": "acme-tickets", "afterId": after,
                                                  "upToId": ids[7], "limit": 2}).json()
        seen += [item["id"] for item in page["items"]]
        after, pages = page["nextAfterId"], pages + 1
    assert seen == wanted and pages == 3
    listed = client.get("/v1/feedback", params={"model": "acme-tickets"}).json()["items"]
    assert {item["model"] for item in listed} == {"acme-tickets"}
    for params, field in (({"limit": 0}, "query.limit"), ({"limit": 1001}, "query.limit"),
                          ({"afterId": -1}, "query.afterId"), ({"upToId": "x"}, "query.upToId")):
        response = client.get("/v1/feedback", params=params)
        assert response.status_code == 422 and response.json()["field"] == field


# --- migrations -------------------------------------------------------------------------------

def test_migrations_run_on_start_and_a_second_start_keeps_the_data(database_url):
    with TestClient(create_app(database_url, TOKEN), headers=AUTH) as first:
        first.post("/v1/feedback", json=feedback())
    engine = make_engine(database_url)
    assert current_revision(engine) == head_revision() != ""
    with TestClient(create_app(database_url, TOKEN), headers=AUTH) as second:
        assert stats(second)["total"] == 1
    upgrade_database(engine)
    assert current_revision(engine) == head_revision()


MIGRATE_AT = """
import sys, time
from tuneloop.feedback.database import (
    DatabaseUrlError,
    database_url_from_environment,
    exclusive_transaction,
    make_engine,
    parse_database_url,
)
from tuneloop.feedback.migrate import upgrade_database
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
upgrade_database(engine)
"""


def test_replicas_migrating_together_take_turns(database_url):
    """Four processes (replicas) upgrade an empty database at the same moment."""
    start_at = str(time.time() + 2.5)  # after every process has imported its modules
    replicas = [subprocess.Popen([sys.executable, "-c", MIGRATE_AT, database_url, start_at],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    try:
        outputs = [replica.communicate(timeout=60)[0] for replica in replicas]
    finally:
        for replica in replicas:
            replica.kill()  # only those still waiting after a minute: a missing lock shows as a hang
    assert [replica.returncode for replica in replicas] == [0] * 4, "\n".join(outputs)
    assert current_revision(make_engine(database_url)) == head_revision()


def test_switching_a_new_sqlite_file_to_wal_waits_for_the_replica_that_holds_it(tmp_path):
    """SQLite refuses the switch at once, without its busy timeout, while another connection holds
    the file: what two replicas starting together see."""
    path = tmp_path / "feedback.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    starting = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        starting.execute("PRAGMA journal_mode=WAL")
    threading.Timer(0.5, holder.rollback).start()
    use_write_ahead_log(starting)
    assert starting.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_database_with_corrections_from_before_reviews_upgrades_and_keeps_them(database_url):
    """A service that stored corrections at revision 0002 (correction required, no verdict or rating)
    starts the new version: its rows keep their corrections and read back without a verdict or rating."""
    engine = make_engine(database_url)
    with exclusive_transaction(engine, MIGRATION_LOCK_KEY) as connection:
        command.upgrade(alembic_config(connection), "0002")
    old_rows = [{"idempotency_key": f"old-{index}", "namespace": "", "model": "acme-tickets",
                 "prompt": f"Question {index}", "answer": "Call us.", "correction": f"Answer {index}",
                 "created_at": datetime(2026, 11, 1, tzinfo=timezone.utc)} for index in range(3)]
    with engine.begin() as connection:
        connection.execute(insert(feedback_table), old_rows)
    with TestClient(create_app(database_url, TOKEN), headers=AUTH) as client:
        assert current_revision(engine) == head_revision()
        items = client.get("/v1/feedback").json()["items"]
        assert [(item["idempotencyKey"], item["correction"], item["verdict"], item["rating"]) for item in items] == [
            (f"old-{index}", f"Answer {index}", None, None) for index in range(3)]
        assert client.post("/v1/feedback", json=feedback("new", correction=None, verdict="reject")).status_code == 201
        counted = stats(client)
        assert (counted["total"], counted["corrections"], counted["rejected"]) == (4, 3, 1)
    # the database itself refuses a row the API would: no review at all, an unknown verdict, rating 0, and
    # (kept through the table copy on SQLite) prompt and messages both missing
    base = {"namespace": "", "model": "acme-tickets", "prompt": "Q", "answer": "A",
            "created_at": datetime(2026, 11, 2, tzinfo=timezone.utc)}
    for index, refused in enumerate(({}, {"verdict": "maybe"}, {"rating": 0},
                                     {"prompt": None, "correction": "C"})):
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(insert(feedback_table).values(**(base | refused), idempotency_key=f"bad-{index}"))
    engine.dispose()


def test_the_migrations_create_what_the_models_declare(database_url):
    engine = make_engine(database_url)
    upgrade_database(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


# --- OpenAPI and the real server --------------------------------------------------------------

def test_openapi_lists_the_routes_and_the_bearer_scheme(client):
    document = client.get("/openapi.json", headers={"Authorization": ""}).json()
    assert set(document["paths"]) == {"/v1/feedback", "/v1/feedback/stats", "/healthz", "/readyz"}
    assert document["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]
        ["bearerToken"]["description"]}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert (operation.get("security") == [{"bearerToken": []}]) == path.startswith("/v1/")
    assert "idempotencyKey" in document["components"]["schemas"]["FeedbackIn"]["required"]
    assert "swagger-ui" in client.get("/docs", headers={"Authorization": ""}).text


def test_a_real_server_never_logs_the_token(database_url, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-0123456789"
    with serving(create_app(database_url, TOKEN)) as url:
        with httpx.Client(base_url=url) as http:
            assert http.post("/v1/feedback", json=feedback(), headers=AUTH).status_code == 201
            refused = http.post("/v1/feedback", json=feedback(), headers={"Authorization": f"Bearer {wrong}"})
            assert refused.status_code == 401 and wrong not in refused.text
            assert http.get("/v1/feedback", headers=AUTH).json()["items"][0]["idempotencyKey"] == "key-1"
    assert "POST /v1/feedback" in caplog.text  # the access log was captured
    assert TOKEN not in caplog.text and wrong not in caplog.text


def test_database_urls_are_checked():
    with pytest.raises(DatabaseUrlError, match="unsupported database 'mysql'"):
        create_app("mysql://user@host/db", TOKEN)
    assert parse_database_url("postgres://user@host/db").drivername == "postgresql+psycopg"
    assert database_url_from_environment({}) == "sqlite:///tuneloop-feedback.db"
    assert database_url_from_environment({"TUNELOOP_FEEDBACK_DATABASE_URL": "postgresql://db/x"}) == "postgresql://db/x"


def test_the_database_url_can_come_from_a_mounted_secret_file(tmp_path):
    url_file = tmp_path / "url"
    url_file.write_text("postgresql://feedback:s3cret@db/feedback\n")
    assert database_url_from_environment({"TUNELOOP_FEEDBACK_DATABASE_URL_FILE": str(url_file)}) == \
        "postgresql://feedback:s3cret@db/feedback"
    with pytest.raises(DatabaseUrlError, match="set one"):
        database_url_from_environment({"TUNELOOP_FEEDBACK_DATABASE_URL_FILE": str(url_file),
                                       "TUNELOOP_FEEDBACK_DATABASE_URL": "postgresql://db/x"})
    with pytest.raises(DatabaseUrlError, match=f"cannot read the database URL file {tmp_path / 'missing'}"):
        database_url_from_environment({"TUNELOOP_FEEDBACK_DATABASE_URL_FILE": str(tmp_path / "missing")})


def test_database_passwords_are_never_logged(postgres_server, caplog):
    caplog.set_level(logging.DEBUG)
    with_password = postgres_server.create_database().replace("postgres@", "postgres:hunter2-secret@")
    with TestClient(create_app(with_password, TOKEN), headers=AUTH) as client:
        assert client.post("/v1/feedback", json=feedback()).status_code == 201
    assert "feedback service on postgresql+psycopg://postgres:***@127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text


def test_the_command_line_serves_and_refuses_to_start_without_a_token(tmp_path):
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TUNELOOP_FEEDBACK_")}
    refused = subprocess.run([sys.executable, "-m", "tuneloop.feedback", "--database-url", database],
                             env=environment, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "TUNELOOP_FEEDBACK_TOKEN" in refused.stderr

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.feedback", "--port", str(port), "--database-url", database],
        env={**environment, "TUNELOOP_FEEDBACK_TOKEN_FILE": str(token_file)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        assert httpx.post(f"{url}/v1/feedback", json=feedback(), headers=AUTH).status_code == 201
        assert httpx.get(f"{url}/v1/feedback/stats", headers=AUTH).json()["total"] == 1
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "1 bearer token(s) accepted" in output and "POST /v1/feedback" in output
    assert TOKEN not in output
    assert Path(tmp_path / "cli.db").exists()


@pytest.mark.parametrize("database, said", [
    ("postgresql://nobody@127.0.0.1:{port}/feedback", "cannot reach database postgresql+psycopg://nobody@127.0.0.1"),
    ("sqlite:////no/such/folder/feedback.db", "cannot reach database sqlite:////no/such/folder/feedback.db: "
                                             "unable to open database file"),
    ("postgresql+nodriver://db/feedback", "cannot use database postgresql+nodriver://db/feedback: Can't load plugin"),
])
def test_a_database_the_service_cannot_use_is_one_line_at_start_up_not_a_traceback(database, said):
    environment = {**{key: value for key, value in os.environ.items() if not key.startswith("TUNELOOP_FEEDBACK_")},
                   "TUNELOOP_FEEDBACK_TOKEN": TOKEN}
    refused = subprocess.run([sys.executable, "-m", "tuneloop.feedback", "--port", str(free_port()),
                              "--database-url", database.format(port=closed_port())],
                             env=environment, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert refused.stderr.splitlines()[-1].startswith(f"tuneloop feedback serve: error: {said}"), refused.stderr


@pytest.mark.parametrize("params, field", [
    ({"afterId": 2**63}, "query.afterId"),
    ({"upToId": 10**30}, "query.upToId"),
    ({"model": "acme\x00tickets"}, "query.model"),
    ({"model": "acme\ntickets"}, "query.model"),
])
def test_ids_past_bigint_and_control_characters_are_422_on_every_database(client, params, field):
    """PostgreSQL answered these with a 500 (an integer out of range, a NUL in a text parameter)."""
    for path in ("/v1/feedback", "/v1/feedback/stats"):
        if path.endswith("stats") and "upToId" in params:
            continue
        response = client.get(path, params=params)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field


def test_a_database_that_goes_away_is_a_json_503_and_health_does_not_wait_for_it(postgres_server):
    """The session's PostgreSQL stopped under a running service: requests get a JSON 503 with
    Retry-After (they were a plain-text 500), /healthz still answers, /readyz says why; started
    again, the service serves again without a restart."""
    with TestClient(create_app(postgres_server.create_database(), TOKEN), headers=AUTH) as client:
        assert client.post("/v1/feedback", json=feedback()).status_code == 201
        postgres_server.stop(mode="fast")
        try:
            for response in (client.post("/v1/feedback", json=feedback("key-2")), client.get("/v1/feedback")):
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "5"
                assert response.json() == {"error": "the database is unavailable; try again"}
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["error"].startswith("the database does not answer")
        finally:
            postgres_server.resume()
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/feedback", json=feedback("key-2")).status_code == 201


def test_a_page_of_the_largest_rows_stops_at_its_byte_budget_and_the_next_page_goes_on(client):
    """1000 rows of the largest size would be 2 GB in one answer (250 took the process to 507 MiB):
    a page also ends at MAX_PAGE_BYTES of text, and paging still returns every row once."""
    from tuneloop.feedback.limits import MAX_PAGE_BYTES

    big = "x" * (MAX_TEXT_BYTES - 100)
    rows = MAX_PAGE_BYTES // (3 * len(big)) + 10  # more than one page's budget
    for index in range(rows):
        body = feedback(f"big-{index}", prompt=f"{index} {big}", answer=big, correction=f"{big} {index}")
        assert client.post("/v1/feedback", json=body).status_code == 201
    first = client.get("/v1/feedback", params={"limit": 1000}).json()
    assert 0 < len(first["items"]) < rows and first["nextAfterId"] == first["items"][-1]["id"]
    assert sum(len(item["prompt"]) + len(item["answer"]) + len(item["correction"]) for item in first["items"]) \
        <= MAX_PAGE_BYTES
    seen, after = [item["idempotencyKey"] for item in first["items"]], first["nextAfterId"]
    while after is not None:
        page = client.get("/v1/feedback", params={"limit": 1000, "afterId": after}).json()
        seen += [item["idempotencyKey"] for item in page["items"]]
        after = page["nextAfterId"]
    assert seen == [f"big-{index}" for index in range(rows)]
