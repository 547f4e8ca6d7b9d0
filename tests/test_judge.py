"""The LLM judge against a real, scripted OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from judge_server import Reply, ScriptedJudge, closed_port_url, judgment, reference_judge
from tuneloop.api.evaluation import BootstrapSpec, GateSpec, JudgeSpec, SecretKeyRef
from tuneloop.api.workloads import JUDGE_API_KEY_ENV
from tuneloop.judge_client import Judge
from tuneloop.retry import RetryPolicy
from tuneloop_evaluator.gate_tests import SetScores, gate_tests
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
    # Per item: 2 pointwise + pairwise in both orders; and both items (agreementSample 8) asked again:
    # the candidate's score and the candidate-first order.
    assert len(server.chat_requests) == 2 * 4 + 2 * 2
    for seen in server.requests:
        assert seen.headers["Authorization"] == "Bearer sk-test-123"
    # The first asks are at temperature 0; the repeats at agreementTemperature, free to disagree.
    assert Counter(seen.body["temperature"] for seen in server.chat_requests) == {0: 8, 0.7: 4}
    for seen in server.chat_requests:
        assert seen.body["model"] == "judge-model"
        assert [message["role"] for message in seen.body["messages"]] == ["system", "user"]
        assert seen.body["messages"][0]["content"] == SYSTEM_PROMPT
        assert "<criteria>" in seen.prompt and "correct and faithful to the reference" in seen.prompt
    first, second = run.test
    assert (first.candidate.score, first.baseline.score) == (9, 2)
    assert first.pair.verdict == "win" and first.pair.win_value == 1.0
    assert (second.candidate.score, second.baseline.score) == (2, 2)
    assert second.pair.verdict == "tie" and not second.pair.inconsistent
    stats = run.stats
    assert (stats.configured, stats.model, stats.judged, stats.unparseable) == (True, "judge-model", 12, 0)
    assert (stats.wins, stats.ties, stats.losses, stats.inconsistent) == (1, 1, 0, 0)
    # This scripted judge answers the same at any temperature: its noise floor is zero.
    assert (stats.repeated, stats.self_agreement, stats.position_flips) == (4, 1.0, 0.0)
    assert stats.trusted and stats.note is None


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
        run = judge_answers(spec_for(server.url, concurrency=1, agreement_sample=0), "EMPTY", ITEMS, [], **FAST)

    assert all(j.candidate.score is None and j.baseline.score is None for j in run.test)
    assert all(j.pair.verdict is None and j.pair.win_value is None for j in run.test)
    stats = run.stats
    assert (stats.judged, stats.unparseable, stats.malformed) == (8, 8, 8)
    assert stats.wins == stats.ties == stats.losses == 0
    assert stats.position_flips is None  # no pair was read in both orders
    assert (stats.repeated, stats.self_agreement, stats.trusted) == (0, None, False)
    assert stats.note == "self-agreement not measured (judge.agreementSample is 0): judge metrics cannot be relied on"


@pytest.mark.parametrize("reply, score", [
    ('{"rationale": "right", "score": 8}', 8),
    ('```json\n{"rationale": "right", "score": 8}\n```', 8),
    ('Here is my judgment:\n```\n{"score": "6", "rationale": "ok"}\n```', 6),
    ('Sure! {"rationale": "close", "score": 10} Hope that helps.', 10),
    ("The answer is close.\nScore: 7", 7),
    ("The answer is 10. The score is 9. The answer meets the crit", 9),
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
    ("B", "B"),
    ("A\n\nA\n\nB", None),
    ('{"winner": "both are bad"}', None),
    ("They differ.", None),
])
def test_pairwise_parsing(reply, winner):
    assert parse_winner(reply).winner == winner


@pytest.mark.parametrize("reply, finish_reason, why", [
    ("I can't evaluate answers about medical topics.", "stop", "refusal"),
    ("As an AI language model, I do not rate people's work.", "stop", "refusal"),
    ("I\u2019m sorry, but I cannot help with that.", "length", "refusal"),
    ("Let me think about the answer step by step. First, the question asks", "length", "ramble"),
    ("The answer mentions the account. " * 100, "stop", "ramble"),  # over RAMBLE_CHARS without a verdict
    ('{"rationale": "good", "score": ', "stop", "malformed"),
    ("I like it.", "stop", "malformed"),
    ('{"rationale": "cut here, but the score came first", "score": 8, "more": "and on and', "length", None),
])
def test_unreadable_replies_say_why(reply, finish_reason, why):
    assert parse_score(reply, finish_reason).unreadable == why
    if why is not None:
        assert parse_winner(reply, finish_reason).unreadable == why


def test_a_judge_that_always_prefers_position_a_gives_ties_not_wins():
    with ScriptedJudge(lambda seen, repeat: judgment(winner="A") if seen.pairwise else judgment(score=5)) as server:
        run = judge_answers(spec_for(server.url, agreement_sample=0), "EMPTY", ITEMS, [], **FAST)

    assert [j.pair.verdict for j in run.test] == ["tie", "tie"]
    assert all(j.pair.inconsistent and j.pair.win_value == 0.5 for j in run.test)
    stats = run.stats
    assert (stats.wins, stats.ties, stats.losses, stats.inconsistent, stats.position_flips) == (0, 2, 0, 2, 1.0)
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
        run = judge_answers(spec_for(server.url, timeout_seconds=0.5, pairwise=False, agreement_sample=0), "EMPTY",
                            ITEMS, [], **FAST)
        elapsed = time.monotonic() - started

    assert [(j.candidate.score, j.baseline.score) for j in run.test] == [(9, 2), (2, 2)]
    assert set(requests_per_prompt(server).values()) == {2}
    assert elapsed < 2.5


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_rate_limits_are_retried(status):
    def fail_first(seen, repeat):
        return Reply(status=status, headers={"Retry-After": "0"}) if repeat == 0 else reference_judge(seen, repeat)

    with ScriptedJudge(fail_first) as server:
        run = judge_answers(spec_for(server.url, agreement_sample=0), "EMPTY", ITEMS, [], **FAST)

    assert set(requests_per_prompt(server).values()) == {2}  # one failure, one retry, per judgment
    assert run.stats.unparseable == 0 and run.stats.wins == 1


def test_a_judge_that_keeps_failing_is_unavailable_after_its_retries():
    with ScriptedJudge(lambda seen, repeat: Reply(status=503)) as server:
        with pytest.raises(JudgeUnavailable, match=r"after 3 attempt\(s\): HTTP 503"):
            judge_answers(spec_for(server.url, max_retries=2, concurrency=1, agreement_sample=0), "EMPTY",
                          ITEMS[:1], [], **FAST)
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
            judge_answers(spec_for(server.url, agreement_sample=0), "wrong-key", ITEMS, [], **FAST)
    assert max(requests_per_prompt(server).values()) == 1


def test_mostly_rejected_requests_make_the_judge_unavailable():
    def reject_pointwise(seen, repeat):
        return Reply(status=400) if not seen.pairwise else judgment(winner="tie")

    with ScriptedJudge(reject_pointwise) as server:
        # Half rejected (pointwise, repeats included) is tolerated: those judgments are unparseable.
        run = judge_answers(spec_for(server.url), "EMPTY", ITEMS, [], **FAST)
        assert (run.stats.judged, run.stats.unparseable, run.stats.rejected, run.stats.ties) == (12, 6, 6, 2)
    with ScriptedJudge(lambda seen, repeat: Reply(status=400)) as server:
        with pytest.raises(JudgeUnavailable, match="rejected 12 of 12 requests"):
            judge_answers(spec_for(server.url), "EMPTY", ITEMS, [], **FAST)


def test_concurrency_is_bounded():
    items = ITEMS * 4
    with ScriptedJudge(lambda seen, repeat: Reply(delay=0.05, content=reference_judge(seen, repeat).content)) as server:
        judge_answers(spec_for(server.url, concurrency=3), "EMPTY", items, [], **FAST)
    assert len(server.chat_requests) == len(items) * 4 + len(items) * 2  # every item asked again (8 <= sample)
    assert server.max_in_flight == 3


def test_general_set_items_are_judged_pointwise_only():
    with ScriptedJudge() as server:
        run = judge_answers(spec_for(server.url), "EMPTY", ITEMS[:1], ITEMS[1:], **FAST)
    assert run.general[0].pair is None and run.general[0].candidate.score == 2
    assert run.stats.judged == 4 + 2 + 2  # the test item asked again; general items never are


def test_api_key_resolution():
    assert resolve_api_key(spec_for("http://judge:8000/v1"), {}) == "EMPTY"
    assert resolve_api_key(spec_for("http://judge:8000/v1"), {JUDGE_API_KEY_ENV: "sk-from-secret"}) == "sk-from-secret"
    with_secret = spec_for("http://judge:8000/v1", api_key_secret=SecretKeyRef(name="judge", key="token"))
    with pytest.raises(JudgeNotConfigured, match=rf"apiKeySecret \(judge, key token\).*{JUDGE_API_KEY_ENV}"):
        resolve_api_key(with_secret, {})
    with pytest.raises(JudgeNotConfigured, match="apiKeyEnv: environment variable LOCAL_KEY is not set"):
        resolve_api_key(spec_for("http://judge:8000/v1", api_key_env="LOCAL_KEY"), {"LOCAL_KEY": " "})


KINDS = [JudgeItem(question=f"{kind} case", reference=RIGHT, candidate=RIGHT, baseline="no idea")
         for kind in ("refuse", "ramble", "broken", "reject", "long but readable")]


def judge_by_question(seen, repeat):
    """Each item's question picks how every reply about it goes, first asks and repeats alike."""
    case = seen.tag("question")
    if case == "refuse case":
        return Reply("I'm sorry, but I cannot judge answers about customer accounts.")
    if case == "ramble case":
        return Reply("Let me compare the answers with the reference one field at a time. The first field",
                     finish_reason="length")
    if case == "broken case":
        return Reply('{"rationale": "looks right", "winner": ' if seen.pairwise else '{"rationale": "ok", "score": ')
    if case == "reject case":
        return Reply(status=400)
    return Reply(reference_judge(seen, repeat).content[:-1] + ', "more": "cut off he', finish_reason="length")


def test_each_kind_of_unreadable_reply_is_counted_and_an_unreliable_judge_is_not_trusted():
    with ScriptedJudge(judge_by_question) as server:
        run = judge_answers(spec_for(server.url), "EMPTY", KINDS, [], **FAST)

    # Per item: 2 pointwise + 2 pairwise orders, and (agreementSample 8 >= 5 items) 2 asked again.
    assert len(server.chat_requests) == 5 * 6
    stats = run.stats
    assert (stats.judged, stats.unparseable) == (30, 24)
    assert (stats.refusals, stats.rambles, stats.malformed, stats.rejected) == (6, 6, 6, 6)
    assert stats.judged == 6 + stats.refusals + stats.rambles + stats.malformed + stats.rejected
    readable = run.test[4]
    assert (readable.candidate.score, readable.baseline.score, readable.pair.verdict) == (9, 2, "win")
    assert [j.candidate.unreadable for j in run.test] == ["refusal", "ramble", "malformed", "rejected", None]
    assert [j.pair.unreadable for j in run.test][:4] == [[why] * 2 for why in ("refusal", "ramble", "malformed",
                                                                                "rejected")]
    # Only the readable item's repeats agree: 2 of 10.
    assert (stats.repeated, stats.self_agreement, stats.position_flips, stats.trusted) == (10, 0.2, 0.0, False)
    assert stats.note == ("self-agreement 0.20 (2 of 10 repeated judgments) is below judge.minAgreement 0.6; "
                          "24 of 30 replies unreadable (80%: 6 malformed, 6 refusals, 6 rambles, 6 rejected)")


@pytest.mark.parametrize("drift, flip, agreement, trusted", [
    (1, False, 1.0, True),   # one point apart still agrees
    (2, False, 0.5, False),  # the score moved two points; the verdict held
    (0, True, 0.5, False),   # the verdict changed
])
def test_a_repeat_that_disagrees_lowers_self_agreement(drift, flip, agreement, trusted):
    def unsteady(seen, repeat):
        if seen.pairwise:
            first = reference_judge(seen, repeat)
            return judgment(winner="tie") if flip and repeat == 1 else first
        score = 9 if seen.tag("answer") == seen.tag("reference") else 2
        return judgment(score=score - drift if repeat == 1 else score)

    with ScriptedJudge(unsteady) as server:
        run = judge_answers(spec_for(server.url, agreement_sample=1), "EMPTY", ITEMS, [], **FAST)

    stats = run.stats
    assert (stats.judged, stats.unparseable, stats.repeated) == (8 + 2, 0, 2)
    assert (stats.self_agreement, stats.trusted) == (agreement, trusted)
    assert (stats.note is None) == trusted
    assert len(run.repeats) == 1 and run.repeats[0].index == 0


def test_the_judge_counts_why_replies_were_unreadable():
    async def ask(url):
        async with Judge(spec_for(url), "EMPTY", **FAST) as judge:
            for case in KINDS:
                await judge.score(case.question, case.reference, case.candidate, case.question)
            return dict(judge.unreadable), judge.rejected

    with ScriptedJudge(judge_by_question) as server:
        counts, rejected = asyncio.run(ask(server.url))
    assert counts == {"refusal": 1, "ramble": 1, "malformed": 1, "rejected": 1} and rejected == 1


def test_a_judge_deterministic_only_at_temperature_zero_is_caught_by_its_repeats():
    """A server that is steady at 0 and noisy above it: the repeats, sent at agreementTemperature, disagree."""
    def steady_only_when_cold(seen, repeat):
        if seen.body["temperature"] == 0:
            return reference_judge(seen, repeat)
        return judgment(winner="tie") if seen.pairwise else judgment(score=5)

    with ScriptedJudge(steady_only_when_cold) as server:
        run = judge_answers(spec_for(server.url), "EMPTY", ITEMS, [], **FAST)
    stats = run.stats
    # The first judgments stand as they were asked: at 0.
    assert [(j.candidate.score, j.pair.verdict) for j in run.test] == [(9, "win"), (2, "tie")]
    # Item 1: score 9 -> 5 and win -> tie disagree; item 2: score 2 -> 5 disagrees, tie -> tie agrees.
    assert (stats.repeated, stats.self_agreement, stats.trusted) == (4, 0.25, False)
    assert stats.note.startswith("self-agreement 0.25 (1 of 4 repeated judgments) is below judge.minAgreement 0.6")

    with ScriptedJudge(steady_only_when_cold) as server:
        cold = judge_answers(spec_for(server.url, agreement_temperature=0), "EMPTY", ITEMS, [], **FAST)
    assert {seen.body["temperature"] for seen in server.chat_requests} == {0}
    assert (cold.stats.self_agreement, cold.stats.trusted) == (1.0, True)  # what temperature 0 would have hidden


def position_biased(share_of_items: int):
    """Prefers answer A on the first `share_of_items` questions (a flip with the order), judges fairly after."""
    def script(seen, repeat):
        biased = int(seen.tag("question").rsplit(" ", 1)[1]) < share_of_items
        if seen.pairwise and biased:
            return judgment(winner="A")
        return reference_judge(seen, repeat)
    return script


@pytest.mark.parametrize("biased, max_flips, trusted", [(3, 0.5, True), (3, 0.25, False), (6, 0.5, False)])
def test_a_judge_whose_verdicts_flip_with_the_order_is_not_trusted(biased, max_flips, trusted):
    items = [JudgeItem(question=f"Ticket number {index}", reference=RIGHT, candidate=RIGHT, baseline="no idea")
             for index in range(10)]
    with ScriptedJudge(position_biased(biased)) as server:
        run = judge_answers(spec_for(server.url, max_position_flips=max_flips, agreement_sample=2), "EMPTY", items,
                            [], **FAST)
    stats = run.stats
    assert stats.self_agreement == 1.0  # steady: only the order sways it
    assert (stats.inconsistent, stats.position_flips, stats.trusted) == (biased, biased / 10, trusted)
    if trusted:
        assert stats.note is None
    else:
        assert stats.note == (f"position flips {biased / 10:.2f} ({biased} of 10 pairwise verdicts changed when the "
                              f"answers swapped places) are above judge.maxPositionFlips {max_flips:g}")
    # The gate's judge requirement follows, and says why.
    scores = SetScores("test", [{"exactMatch": 1.0, "judgeWinRate": 1.0}] * 10, [{"exactMatch": 0.0}] * 10)
    requirement, _, win_rate = gate_tests(GateSpec(min_score={"judgeWinRate": 0.5}), BootstrapSpec(), scores, None,
                                          None, stats)[0]
    assert (requirement.kind, requirement.passed, win_rate.metric) == ("judgeAgreement", trusted, "judgeWinRate")
    assert win_rate.passed == trusted
    if not trusted:
        assert requirement.detail == stats.note and win_rate.detail.startswith("judge not trusted: position flips")
