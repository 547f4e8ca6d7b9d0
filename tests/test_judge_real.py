"""The LLM judge on a real model: SmolLM2-135M-Instruct served by `transformers serve` (tests/local_judge.py).

A 135M model is a poor judge: it rambles and rarely writes the JSON asked for. That is the point here:
whatever it writes, the evaluation does not crash, every reply is accounted for, and the judge is measured
(self-agreement, position flips) rather than believed. Replies are capped at REPLY_TOKENS to keep the run
short on a CPU; a reply cut there without a verdict counts as a ramble.
"""

from __future__ import annotations

import pytest

from judge_server import closed_port_url
from local_judge import JUDGE_MODEL, local_judge
from openai_server import closed_port
from tuneloop import catalog
from tuneloop.api.evaluation import JudgeSpec
from tuneloop.runtime.local_judge import LocalJudgeError, check_port_free, serving_local_judge, transformers_server
from tuneloop_evaluator.judge import JudgeItem, judge_answers

REPLY_TOKENS = 48
TICKET = '{"team": "network", "priority": "P1"}'
TEST = [
    JudgeItem("Subject: VPN down\nThe VPN drops every five minutes; the whole sales team is affected.", TICKET,
              candidate=TICKET, baseline='{"team": "billing", "priority": "P3"}'),
    JudgeItem("What is the capital of France?", "Paris", candidate="Paris", baseline="London"),
    JudgeItem("What is 2 + 2?", "4", candidate="4", baseline="5"),
]
GENERAL = [JudgeItem("Name a primary colour.", "Red", candidate="Red", baseline="Purple")]


@pytest.fixture(scope="module")
def smollm2_judge(tmp_path_factory):
    with local_judge(tmp_path_factory.mktemp("judge") / "judge.log", agreement_sample=2, concurrency=1,
                     timeout_seconds=300, max_retries=1) as spec:
        yield spec


def readable(judgments) -> int:
    return sum(judgment.score is not None for judgment in judgments)


def test_smollm2_as_judge_is_measured_and_every_reply_is_accounted_for(smollm2_judge):
    run = judge_answers(smollm2_judge.model_copy(update={"max_tokens": REPLY_TOKENS}), "EMPTY", TEST, GENERAL)

    stats = run.stats
    # Test items: 2 pointwise + 2 pairwise orders; general: 2 pointwise; 2 test items asked again (score + order).
    assert stats.judged == len(TEST) * 4 + len(GENERAL) * 2 + 2 * 2
    points = [point for item in run.test + run.general for point in (item.candidate, item.baseline)]
    orders_read = sum(2 - item.pair.unparseable for item in run.test)
    repeats_read = sum((repeat.candidate.score is not None) + (repeat.first.winner is not None)
                       for repeat in run.repeats)
    read = readable(points) + orders_read + repeats_read
    assert stats.judged == read + stats.malformed + stats.refusals + stats.rambles + stats.rejected
    assert stats.unparseable == stats.judged - read
    assert stats.rejected == 0  # the server answers to the model name the local judge resolved
    assert all(1 <= point.score <= 10 for point in points if point.score is not None)

    assert stats.repeated == 4 and stats.self_agreement is not None
    pairs_read = [item.pair for item in run.test if item.pair.verdict is not None]
    assert stats.position_flips == (sum(pair.inconsistent for pair in pairs_read) / len(pairs_read)
                                    if pairs_read else None)
    assert stats.trusted == (stats.self_agreement >= smollm2_judge.min_agreement and (
        stats.position_flips is None or stats.position_flips <= smollm2_judge.max_position_flips))
    assert (stats.note is None) == stats.trusted
    print(f"SmolLM2 judge: {read} of {stats.judged} replies readable; {stats.model_dump_json(exclude={'model'})}")


def test_the_local_judge_stops_and_frees_its_port(tmp_path):
    port = closed_port()
    spec = JudgeSpec(url=f"http://localhost:{port}/v1", model=JUDGE_MODEL, local=True)
    with serving_local_judge(spec, tmp_path / "judge.log") as served:
        assert served.url == f"http://127.0.0.1:{port}/v1"
        assert served.model == str(catalog.materialize(catalog.lookup(JUDGE_MODEL)))
        with pytest.raises(LocalJudgeError, match=rf"evaluation.judge.url: port {port} on 127.0.0.1 is already in use"):
            with serving_local_judge(spec, tmp_path / "second.log"):
                pass
    check_port_free(port, "after the judge stopped")


@pytest.mark.parametrize("fields, message", [
    ({"model": "gpt-4o"}, r"evaluation.judge.model: model 'gpt-4o' is not in the catalog \(known: "
                          r"smollm2-135m-instruct\); a local model is one of the catalog"),
    ({"url": "http://judge.llm.svc:8000/v1"}, r"evaluation.judge.url: a local model listens on 127.0.0.1 or "
                                              r"localhost, not 'judge.llm.svc'"),
    ({"url": "http://127.0.0.1/v1"}, r"evaluation.judge.url: http://127.0.0.1/v1 needs a port"),
])
def test_a_local_judge_that_cannot_be_served_is_refused_with_the_field_at_fault(tmp_path, fields, message):
    spec = JudgeSpec(**{"url": closed_port_url(), "model": JUDGE_MODEL, "local": True, **fields})
    with pytest.raises(LocalJudgeError, match=message):
        with serving_local_judge(spec, tmp_path / "judge.log"):
            pass
    assert not (tmp_path / "judge.log").exists()  # refused before anything started


def test_a_server_that_exits_at_start_says_why_and_where_its_log_is(tmp_path):
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    port = closed_port()
    log = tmp_path / "judge.log"
    with pytest.raises(LocalJudgeError, match=rf"exited with code \d+ before it answered on http://127.0.0.1:{port}/v1: "
                                              rf"ValueError: Unrecognized [a-z ]+ in {not_a_model}\. .* "
                                              rf"\(whole log: {log}\)$") as raised:
        with transformers_server(not_a_model, port, log):
            pass
    assert "Traceback" not in str(raised.value) and "Traceback" in log.read_text()


def test_a_local_run_whose_judge_cannot_start_fails_its_evaluation_naming_the_field(tmp_path):
    import socket

    from tuneloop.api.finetunejob import parse_manifest
    from tuneloop.reconcile.finetunejob import LaunchWorkload
    from tuneloop.runtime.local import LocalRuntime

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        job = parse_manifest({
            "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "judged"},
            "spec": {"baseModel": {"name": JUDGE_MODEL}, "dataset": {"uri": "data.jsonl"},
                     "evaluation": {"judge": {"local": True, "url": f"http://127.0.0.1:{port}/v1",
                                              "model": JUDGE_MODEL}}}})
        runtime = LocalRuntime(workdir=tmp_path / "work", manifest_dir=tmp_path, on_note=lambda line: None)
        runtime.launch(job, LaunchWorkload("evaluate", "judged-evaluate", {
            "adapter_uri": (tmp_path / "adapter").as_uri(), "test_uri": (tmp_path / "test.jsonl").as_uri()}))

        state = runtime.observe(job).workloads["judged-evaluate"]
    assert state.phase == "Failed" and state.result["reason"] == "JudgeUnavailable"
    assert state.result["message"].startswith(f"evaluation.judge.url: port {port} on 127.0.0.1 is already in use")
    assert runtime.processes == {}  # no evaluator was started without its judge
