"""A ModelDeployment's analysis against a scripted vLLM OpenAI API and judge (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from openai_server import Backend, OpenAIServer, closed_port, judge_backend
from tuneloop.api.modeldeployment import AnalysisSpec
from tuneloop.runtime.analysis import analyse

MODEL = "support-bot"
SMOKE = [
    {"prompt": "Reset my password", "expect": {"contains": "link"}, "reference": "I have sent you a reset link."},
    {"prompt": "Ticket as JSON: printer broken", "expect": {"json": True}},
    {"prompt": "Priority of an outage?", "expect": {"regex": r"\bP[12]\b"}},
]
GOOD_ANSWERS = {
    "Reset my password": "I have sent you a reset link.",
    "Ticket as JSON": '\n{"topic": "printer", "priority": "P3"}\n',
    "Priority of an outage": "P1: it is an outage.",
}


def analysis(**fields) -> AnalysisSpec:
    return AnalysisSpec.model_validate({"smokePrompts": SMOKE, "requests": 12, **fields})


def judged(server: OpenAIServer, **fields) -> dict:
    judge = {"url": server.url_for("llm", "judge") + "/v1", "model": "judge-model", "maxRetries": 0,
             "timeoutSeconds": 5, **fields}
    return {"minJudgeScore": 7, "judge": judge}


def served(preview: Backend, judge: Backend | None = None) -> OpenAIServer:
    """One server playing the preview Service team/support-bot-preview and the judge Service llm/judge."""
    services = {("team", "support-bot-preview"): preview, ("llm", "judge"): judge}
    return OpenAIServer(backend_for=lambda namespace, service: services.get((namespace, service)))


def preview_url(server: OpenAIServer) -> str:
    return server.url_for("team", "support-bot-preview")


@pytest.mark.asyncio
async def test_a_good_preview_passes_with_a_one_line_summary():
    preview = Backend(GOOD_ANSWERS, latency=0.01)
    judge = judge_backend(lambda prompt: 9 if "reset link" in prompt else 8)
    with served(preview, judge) as server:
        spec = analysis(maxP95LatencyMs=5000, **judged(server))
        result = await analyse(spec, preview_url(server), MODEL, "pre-abc-1", judge_api_key="sk-judge")

    assert result.passed, result.reason
    assert result.run_id == "pre-abc-1"
    assert re.fullmatch(r"12 requests, p95 \d+ ms, 0% errors, judge 8\.33", result.reason)
    assert result.score == pytest.approx(25 / 3)
    assert result.error_rate == 0.0 and 10 <= result.p95_latency_ms < 5000
    assert len(preview.requests) == 12
    assert all(body["model"] == MODEL and body["temperature"] == 0 and body["max_tokens"] == 64
               for body in preview.requests)
    judge_prompts = sorted(body["messages"][-1]["content"] for body in judge.requests)
    assert len(judge_prompts) == 3  # each smoke prompt's answer, once
    assert sum("<reference>I have sent you a reset link.</reference>" in prompt for prompt in judge_prompts) == 1
    assert sum("<reference>(none given)</reference>" in prompt for prompt in judge_prompts) == 2


@pytest.mark.asyncio
async def test_an_answer_that_is_not_json_fails_and_names_the_prompt():
    preview = Backend({**GOOD_ANSWERS, "Ticket as JSON": 'Sure! ```json\n{"topic": "printer"}\n```'})
    with OpenAIServer(preview) as server:
        result = await analyse(analysis(), server.url, MODEL, "pre-abc-1")

    assert not result.passed
    assert result.reason == ('smoke prompt 2 ("Ticket as JSON: printer broken"): answer '
                             '"Sure! ```json\\n{\\"topic\\": \\"printer\\"}\\n```" is not JSON')
    assert result.error_rate == 0.0


@pytest.mark.asyncio
async def test_every_missed_expectation_is_in_the_reason():
    long_answer = "Please call the help desk. " * 10
    preview = Backend({**GOOD_ANSWERS, "Reset my password": long_answer, "Priority of an outage": "Low priority."})
    with OpenAIServer(preview) as server:
        result = await analyse(analysis(), server.url, MODEL, "pre-abc-1")

    assert not result.passed
    first, second = result.reason.split("; ")
    assert first.startswith('smoke prompt 1 ("Reset my password"): answer "Please call the help desk.')
    assert first.endswith('…" does not contain "link"') and len(first) < 200
    assert second == r'smoke prompt 3 ("Priority of an outage?"): answer "Low priority." does not match /\bP[12]\b/'


@pytest.mark.asyncio
async def test_latency_over_the_threshold_fails():
    with OpenAIServer(Backend(GOOD_ANSWERS, latency=0.3)) as server:
        result = await analyse(analysis(requests=4, concurrency=4, maxP95LatencyMs=100), server.url, MODEL, "r")

    assert not result.passed
    assert re.fullmatch(r"p95 latency \d+ ms > 100 ms", result.reason)
    assert result.p95_latency_ms >= 300


@pytest.mark.parametrize("max_error_rate, passed", [(0.2, False), (0.3, True)])
@pytest.mark.asyncio
async def test_error_rate_against_the_threshold(max_error_rate, passed):
    preview = Backend(GOOD_ANSWERS, error_rate=0.25)
    with OpenAIServer(preview) as server:
        result = await analyse(analysis(requests=20, maxErrorRate=max_error_rate), server.url, MODEL, "r")

    assert result.passed is passed
    assert result.error_rate == 0.25 and len(preview.requests) == 20
    if passed:
        assert "20 requests" in result.reason and "25% errors" in result.reason
    else:
        assert result.reason == "error rate 0.25 > 0.2 (5 of 20 requests failed: 5× HTTP 500: scripted 500)"


@pytest.mark.asyncio
async def test_requests_over_the_deadline_count_as_errors():
    with OpenAIServer(Backend(GOOD_ANSWERS, latency=2)) as server:
        result = await analyse(analysis(requests=3, timeoutSeconds=0.1), server.url, MODEL, "r")

    assert not result.passed and result.error_rate == 1.0
    assert "3 of 3 requests failed: 3× timed out after 0.1 s" in result.reason


@pytest.mark.asyncio
async def test_an_unreachable_preview_fails_and_says_so():
    url = f"http://127.0.0.1:{closed_port()}"
    result = await analyse(analysis(), url, MODEL, "pre-abc-1")

    assert not result.passed
    assert result.reason.startswith(f"preview {url} unreachable or failing: 12 of 12 requests failed: "
                                    "12× connection failed")
    assert (result.error_rate, result.p95_latency_ms, result.score) == (1.0, None, None)


@pytest.mark.asyncio
async def test_a_preview_service_without_endpoints_fails():
    with served(Backend(GOOD_ANSWERS)) as server:
        result = await analyse(analysis(requests=2), server.url_for("team", "elsewhere"), MODEL, "r")

    assert not result.passed and "3 of 3 requests failed: 3× HTTP 503" in result.reason


@pytest.mark.asyncio
async def test_a_preview_that_does_not_serve_the_model_fails():
    with OpenAIServer(Backend(GOOD_ANSWERS, models=("base-model",))) as server:
        result = await analyse(analysis(requests=3), server.url, MODEL, "r")

    assert not result.passed
    assert result.reason.endswith(f"3 of 3 requests failed: 3× HTTP 404: The model `{MODEL}` does not exist.")


@pytest.mark.asyncio
async def test_a_judge_score_below_the_minimum_fails():
    with served(Backend(GOOD_ANSWERS), judge_backend(4)) as server:
        result = await analyse(analysis(**judged(server)), preview_url(server), MODEL, "r")

    assert not result.passed
    assert result.reason == "judge score 4 < 7" and result.score == 4.0


@pytest.mark.asyncio
async def test_unreadable_judgments_are_no_pass():
    with served(Backend(GOOD_ANSWERS), Backend(default_answer="I like these answers.")) as server:
        result = await analyse(analysis(**judged(server)), preview_url(server), MODEL, "r")

    assert not result.passed and result.score is None
    assert result.reason == (f"judge {server.url_for('llm', 'judge')}/v1 (model judge-model) gave no readable score "
                             "for any of 3 answers")


@pytest.mark.parametrize("judge, problem", [
    (None, "did not answer smoke prompt"),  # the judge Service has no endpoints: 503, retries run out
    (Backend(error_status=401, error_rate=1.0), "rejected the API key"),
])
@pytest.mark.asyncio
async def test_a_judge_that_is_down_or_refusing_fails_the_analysis(judge, problem):
    with served(Backend(GOOD_ANSWERS), judge) as server:
        result = await analyse(analysis(**judged(server)), preview_url(server), MODEL, "r", judge_api_key="sk-bad")

    assert not result.passed and result.score is None
    assert result.reason.startswith(f"judge {server.url_for('llm', 'judge')}/v1 (model judge-model) ")
    assert problem in result.reason


@pytest.mark.asyncio
async def test_an_unreachable_judge_fails_the_analysis():
    with OpenAIServer(Backend(GOOD_ANSWERS)) as server:
        judge_url = f"http://127.0.0.1:{closed_port()}/v1"
        spec = analysis(minJudgeScore=7, judge={"url": judge_url, "model": "judge-model", "maxRetries": 0})
        result = await analyse(spec, server.url, MODEL, "r")

    assert not result.passed
    assert result.reason.startswith(f"judge {judge_url} (model judge-model) did not answer")
    assert "Connection" in result.reason


@pytest.mark.parametrize("requests, sent", [(7, {"Reset": 3, "Ticket": 2, "Priority": 2}),
                                            (1, {"Reset": 1, "Ticket": 1, "Priority": 1})])
@pytest.mark.asyncio
async def test_requests_cycle_through_the_smoke_prompts_each_at_least_once(requests, sent):
    preview = Backend(GOOD_ANSWERS)
    with OpenAIServer(preview) as server:
        result = await analyse(analysis(requests=requests), server.url, MODEL, "r")

    assert result.passed, result.reason
    assert Counter(body["messages"][-1]["content"].split()[0] for body in preview.requests) == sent


@pytest.mark.asyncio
async def test_without_smoke_prompts_a_default_prompt_measures_latency_and_errors():
    preview = Backend(default_answer="OK")
    with OpenAIServer(preview) as server:
        result = await analyse(AnalysisSpec(requests=5), server.url, MODEL, "r")

    assert result.passed and result.reason.startswith("5 requests, p95 ")
    assert len(preview.requests) == 5 and len({body["messages"][-1]["content"] for body in preview.requests}) == 1


@pytest.mark.asyncio
async def test_no_more_than_the_configured_requests_are_in_flight():
    preview = Backend(GOOD_ANSWERS, latency=0.05)
    with OpenAIServer(preview) as server:
        result = await analyse(analysis(requests=12, concurrency=3), server.url, MODEL, "r")

    assert result.passed, result.reason
    assert preview.max_in_flight == 3


@pytest.mark.asyncio
async def test_a_catastrophic_pattern_cannot_stall_the_event_loop():
    """`^(a+)+$` backtracks exponentially in Python's re (2.4 s at 28 characters, x1.8 a character):
    a tenant's smoke check would freeze every namespace's reconciles. RE2 matches in linear time, so
    the analysis ends at once; a loop ticker measures the longest stall. (32 characters: were the
    pattern ever matched by backtracking again, this test would fail after ~25 s, not hang.)"""
    import asyncio
    import time

    attack = [{"prompt": "Say a lot", "expect": {"regex": "^(a+)+$"}}]
    preview = Backend({"Say a lot": "a" * 32 + "!"})
    stalls: list[float] = []

    async def ticker():
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            stalls.append(time.monotonic() - before - 0.01)

    with OpenAIServer(preview) as server:
        watching = asyncio.create_task(ticker())
        result = await asyncio.wait_for(analyse(AnalysisSpec.model_validate({"smokePrompts": attack, "requests": 3}),
                                                server.url, MODEL, "pre-abc-1"), timeout=30)
        watching.cancel()

    assert not result.passed and "does not match /^(a+)+$/" in result.reason
    assert max(stalls, default=0) < 0.5, f"the event loop stalled {max(stalls):.2f} s"


def test_a_pattern_re2_cannot_match_in_linear_time_is_refused_by_name():
    from tuneloop.api.common import SpecError
    from tuneloop.api.modeldeployment import parse_spec

    spec = {"baseModel": {"name": "m"}, "adapter": {"name": "a", "version": "1"}, "strategy": {"blueGreen": {
        "prePromotionAnalysis": {"smokePrompts": [{"prompt": "p", "expect": {"regex": r"(P\d)\1"}}]}}}}
    with pytest.raises(SpecError) as refused:
        parse_spec(spec)
    assert refused.value.problems == [
        "spec.strategy.blueGreen.prePromotionAnalysis.smokePrompts[0].expect.regex: not a regular expression RE2 "
        "accepts (invalid escape sequence: \\1); RE2 matches in linear time and has no backreferences or look-arounds"]
