"""The LLM judge against a real, scripted OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from judge_server import Reply, ScriptedJudge, closed_port_url, judgment, reference_judge
from tuneloop.api.evaluation import JudgeSpec, SecretKeyRef
from tuneloop.api.workloads import JUDGE_API_KEY_ENV
from tuneloop.retry import RetryPolicy
from tuneloop_evaluator.judge import (
    SYSTEM_PROMPT, JudgeItem, JudgeNotConfigured, JudgeUnavailable, check_judge, judge_answers, parse_score,
    parse_winner, resolve_api_key,
)

FAST = {"retry": RetryPolicy(backoff_seconds=0.01, max_backoff_seconds=0.05)}
RIGHT = '{"acct":"NL-1","pri":"P1"}'
ITEMS = [
    JudgeItem(question="Ticket for: Maria, account 1, urgent", reference=RIGHT, candidate=RIGHT, baseline="no idea"),
    JudgeItem(question="Ticket for: Tom, account 2", reference='{"acct":"TO-2","pri":"P3"}',
              candidate="wrong", baseline="also wrong"),
]


def spec_for(url: str, **fields) -> JudgeSpec:
    return JudgeSpec(url=url, model="judge-model", **{"timeout_seconds": 5, "max_retries": 2, **fields})


def requests_per_prompt(server: ScriptedJudge) -> Counter[str]:
    return Counter(seen.prompt for seen in server.chat_requests)


def test_judgments_follow_the_openai_protocol_with_bearer_key():
    with ScriptedJudge() as server:
        spec = spec_for(server.url, api_key_env="MY_JUDGE_KEY")
        key = resolve_api_key(spec, {"MY_JUDGE_KEY": "sk-test-123"})
        check_judge(spec, key, **FAST)
        run = judge_answers(spec, key, ITEMS, [], **FAST)

    assert server.requests[0].path == "/v1/models"
    assert len(server.chat_requests) == 2 * 4  # per item: 2 pointwise + pairwise in both orders
    for seen in server.requests:
        assert seen.headers["Authorization"] == "Bearer sk-test-123"
    for seen in server.chat_requests:
        assert seen.body["model"] == "judge-model"
        assert seen.body["temperature"] == 0
        assert [message["role"] for message in seen.body["messages"]] == ["system", "user"]
        assert seen.body["messages"][0]["content"] == SYSTEM_PROMPT
        assert "<criteria>" in seen.prompt and "correct and faithful to the reference" in seen.prompt
    first, second = run.hold_out
    assert (first.candidate.score, first.baseline.score) == (9, 2)
    assert first.pair.verdict == "win" and first.pair.win_value == 1.0
    assert (second.candidate.score, second.baseline.score) == (2, 2)
    assert second.pair.verdict == "tie" and not second.pair.inconsistent
    stats = run.stats
    assert (stats.configured, stats.model, stats.judged, stats.unparseable) == (True, "judge-model", 8, 0)
    assert (stats.wins, stats.ties, stats.losses, stats.inconsistent) == (1, 1, 0, 0)


def test_spec_rubric_replaces_the_default():
    with ScriptedJudge() as server:
        judge_answers(spec_for(server.url, rubric="Only the priority field matters."), "EMPTY", ITEMS[:1], [],
                      **FAST)
    assert all("<criteria>Only the priority field matters.</criteria>" in seen.prompt
               for seen in server.chat_requests)


def test_malformed_judgments_are_unparseable_never_passes():
    replies = iter(["I would say it is quite good.", '{"score": 0}', '{"score": 7.5}', '{"rationale": "fine"}'])

    def malformed(seen, repeat):
        return Reply(next(replies)) if not seen.pairwise else Reply("Both have merit.")

    with ScriptedJudge(malformed) as server:
        run = judge_answers(spec_for(server.url, concurrency=1), "EMPTY", ITEMS, [], **FAST)

    assert all(j.candidate.score is None and j.baseline.score is None for j in run.hold_out)
    assert all(j.pair.verdict is None and j.pair.win_value is None for j in run.hold_out)
    assert run.stats.judged == 8 and run.stats.unparseable == 8
    assert run.stats.wins == run.stats.ties == run.stats.losses == 0


@pytest.mark.parametrize("reply, score", [
    ('{"rationale": "right", "score": 8}', 8),
    ('```json\n{"rationale": "right", "score": 8}\n```', 8),
    ('Here is my judgment:\n```\n{"score": "6", "rationale": "ok"}\n```', 6),
    ('Sure! {"rationale": "close", "score": 10} Hope that helps.', 10),
    ("The answer is close.\nScore: 7", 7),
    ("**Rating:** 3/10", 3),
    ('{"score": 11}', None),
    ('{"score": 0}', None),
    ('{"score": 6.5}', None),
    ('{"score": true}', None),
    ('{"rationale": "no score"}', None),
    ("I like it.", None),
    ("", None),
])
def test_pointwise_parsing(reply, score):
    assert parse_score(reply).score == score


@pytest.mark.parametrize("reply, winner", [
    ('{"rationale": "A is right", "winner": "A"}', "A"),
    ('```json\n{"winner": "b"}\n```', "B"),
    ('{"winner": "tie"}', "tie"),
    ("Winner: Answer B", "B"),
    ("My verdict: [[C]]", "tie"),
    ('{"winner": "both are bad"}', None),
    ("They differ.", None),
])
def test_pairwise_parsing(reply, winner):
    assert parse_winner(reply)[0] == winner


def test_a_judge_that_always_prefers_position_a_gives_ties_not_wins():
    with ScriptedJudge(lambda seen, repeat: judgment(winner="A") if seen.pairwise else judgment(score=5)) as server:
        run = judge_answers(spec_for(server.url), "EMPTY", ITEMS, [], **FAST)

    assert [j.pair.verdict for j in run.hold_out] == ["tie", "tie"]
    assert all(j.pair.inconsistent and j.pair.win_value == 0.5 for j in run.hold_out)
    stats = run.stats
    assert (stats.wins, stats.ties, stats.losses, stats.inconsistent) == (0, 2, 0, 2)
    # Both orders were asked: the candidate was answer A once and answer B once.
    candidate_positions = Counter("A" if seen.tag("answer_a") == ITEMS[0].candidate else "B"
                                  for seen in server.chat_requests
                                  if seen.pairwise and seen.tag("question") == ITEMS[0].question)
    assert candidate_positions == {"A": 1, "B": 1}


def test_a_slow_reply_times_out_and_the_retry_succeeds():
    def slow_first(seen, repeat):
        return Reply(delay=3.0) if repeat == 0 else reference_judge(seen, repeat)

    with ScriptedJudge(slow_first) as server:
        started = time.monotonic()
        run = judge_answers(spec_for(server.url, timeout_seconds=0.5, pairwise=False), "EMPTY", ITEMS, [], **FAST)
        elapsed = time.monotonic() - started

    assert [(j.candidate.score, j.baseline.score) for j in run.hold_out] == [(9, 2), (2, 2)]
    assert set(requests_per_prompt(server).values()) == {2}
    assert elapsed < 2.5


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_rate_limits_are_retried(status):
    def fail_first(seen, repeat):
        return Reply(status=status, headers={"Retry-After": "0"}) if repeat == 0 else reference_judge(seen, repeat)

    with ScriptedJudge(fail_first) as server:
        run = judge_answers(spec_for(server.url), "EMPTY", ITEMS, [], **FAST)

    assert set(requests_per_prompt(server).values()) == {2}  # one failure, one retry, per judgment
    assert run.stats.unparseable == 0 and run.stats.wins == 1


def test_a_judge_that_keeps_failing_is_unavailable_after_its_retries():
    with ScriptedJudge(lambda seen, repeat: Reply(status=503)) as server:
        with pytest.raises(JudgeUnavailable, match=r"after 3 attempt\(s\): HTTP 503"):
            judge_answers(spec_for(server.url, max_retries=2, concurrency=1), "EMPTY", ITEMS[:1], [], **FAST)
    assert max(requests_per_prompt(server).values()) == 3


def test_an_unreachable_judge_is_unavailable():
    spec = spec_for(closed_port_url(), max_retries=1)
    with pytest.raises(JudgeUnavailable, match="did not answer GET /models after 2 attempt"):
        check_judge(spec, "EMPTY", **FAST)
    with pytest.raises(JudgeUnavailable, match="Connection"):
        judge_answers(spec, "EMPTY", ITEMS, [], **FAST)


def test_a_rejected_key_is_unavailable_at_once():
    with ScriptedJudge(lambda seen, repeat: Reply(status=401)) as server:
        with pytest.raises(JudgeUnavailable, match="rejected the API key"):
            judge_answers(spec_for(server.url), "wrong-key", ITEMS, [], **FAST)
    assert max(requests_per_prompt(server).values()) == 1


def test_mostly_rejected_requests_make_the_judge_unavailable():
    def reject_pointwise(seen, repeat):
        return Reply(status=400) if not seen.pairwise else judgment(winner="tie")

    with ScriptedJudge(reject_pointwise) as server:
        # Half rejected (pointwise) is tolerated: those judgments are unparseable.
        run = judge_answers(spec_for(server.url), "EMPTY", ITEMS, [], **FAST)
        assert run.stats.unparseable == 4 and run.stats.ties == 2
    with ScriptedJudge(lambda seen, repeat: Reply(status=400)) as server:
        with pytest.raises(JudgeUnavailable, match="rejected 8 of 8 requests"):
            judge_answers(spec_for(server.url), "EMPTY", ITEMS, [], **FAST)


def test_concurrency_is_bounded():
    items = ITEMS * 4
    with ScriptedJudge(lambda seen, repeat: Reply(delay=0.05, content=reference_judge(seen, repeat).content)) as server:
        judge_answers(spec_for(server.url, concurrency=3), "EMPTY", items, [], **FAST)
    assert len(server.chat_requests) == len(items) * 4
    assert server.max_in_flight == 3


def test_general_set_items_are_judged_pointwise_only():
    with ScriptedJudge() as server:
        run = judge_answers(spec_for(server.url), "EMPTY", ITEMS[:1], ITEMS[1:], **FAST)
    assert run.general[0].pair is None and run.general[0].candidate.score == 2
    assert run.stats.judged == 4 + 2


def test_api_key_resolution():
    assert resolve_api_key(spec_for("http://judge:8000/v1"), {}) == "EMPTY"
    assert resolve_api_key(spec_for("http://judge:8000/v1"), {JUDGE_API_KEY_ENV: "sk-from-secret"}) == "sk-from-secret"
    with_secret = spec_for("http://judge:8000/v1", api_key_secret=SecretKeyRef(name="judge", key="token"))
    with pytest.raises(JudgeNotConfigured, match=rf"apiKeySecret \(judge, key token\).*{JUDGE_API_KEY_ENV}"):
        resolve_api_key(with_secret, {})
    with pytest.raises(JudgeNotConfigured, match="apiKeyEnv: environment variable LOCAL_KEY is not set"):
        resolve_api_key(spec_for("http://judge:8000/v1", api_key_env="LOCAL_KEY"), {"LOCAL_KEY": " "})
