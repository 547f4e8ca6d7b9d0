"""The evaluator as a program (spec file in, result file out) on a tiny random Llama and a tiny trained adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from judge_server import ScriptedJudge, closed_port_url
from tiny_model import write_tickets
from tuneloop.api.evaluation import EvaluationSpec
from tuneloop.api.finetunejob import parse_manifest
from tuneloop.api.workloads import EvaluatorResult, EvaluatorWorkload, TrainerResult, TrainerWorkload, Tracking
from tuneloop_evaluator.__main__ import main as evaluator_main

TEST_ROWS = 6


def job_spec(model: Path, dataset: Path):
    return parse_manifest({
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny"},
        "spec": {
            "baseModel": {"uri": f"file://{model}"},
            "dataset": {"uri": str(dataset), "format": "alpaca", "validationFraction": 0.04, "testFraction": 0.25,
                        "seed": 3,
                        "systemPrompt": "Answer with the ticket record only."},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "training": {"epochs": 6, "learningRate": 2e-2, "microBatchSize": 6, "precision": "fp32"},
        },
    }).spec


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> tuple[Path, TrainerResult]:
    """A LoRA adapter trained for a few steps by the real trainer, with its test split."""
    folder = tmp_path_factory.mktemp("trained")
    tickets = write_tickets(folder / "tickets.jsonl", rows=4 * TEST_ROWS, seed=5)
    spec = job_spec(tiny_model_dir, tickets)
    workload = TrainerWorkload(job="default/tiny", model_path=str(tiny_model_dir), dataset_path=str(tickets),
                               dataset=spec.dataset, method=spec.method, training=spec.training,
                               output_dir=str(folder / "out"), preview_examples=0)
    (folder / "trainer.json").write_text(workload.model_dump_json(by_alias=True), encoding="utf-8")
    process = subprocess.run([sys.executable, "-m", "tuneloop_trainer", "--spec", str(folder / "trainer.json"),
                              "--result", str(folder / "trainer-result.json")],
                             capture_output=True, text=True, timeout=300)
    result = TrainerResult.model_validate_json((folder / "trainer-result.json").read_text())
    assert process.returncode == 0, process.stderr[-3000:]
    return tickets, result


def evaluator_workload(tiny_model_dir: Path, trained, output: Path, **evaluation) -> EvaluatorWorkload:
    tickets, result = trained
    spec = job_spec(tiny_model_dir, tickets)
    return EvaluatorWorkload(
        job="default/tiny", model_path=str(tiny_model_dir), adapter_path=result.adapter_path,
        test_path=result.test_path, dataset=spec.dataset, output_dir=str(output),
        evaluation=EvaluationSpec.model_validate({
            "maxNewTokens": 16, "batchSize": 4, "bootstrap": {"samples": 200},
            "structured": {"labelFields": ["cat", "pri"]}, **evaluation}),
    )


def run_evaluator(workload: EvaluatorWorkload | str, folder: Path) -> tuple[int, EvaluatorResult, str]:
    spec = folder / "evaluator.json"
    spec.write_text(workload if isinstance(workload, str) else workload.model_dump_json(by_alias=True),
                    encoding="utf-8")
    result = folder / "result.json"
    process = subprocess.run(
        [sys.executable, "-m", "tuneloop_evaluator", "--spec", str(spec), "--result", str(result),
         "--termination-log", str(folder / "termination-log")],
        capture_output=True, text=True, timeout=300,
    )
    return process.returncode, EvaluatorResult.model_validate_json(result.read_text()), process.stderr


def test_candidate_and_base_are_scored_judged_and_recorded(tiny_model_dir, trained, tmp_path):
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"instruction": f"Say the number {n}.", "output": str(n)}) + "\n"
                               for n in range(3)), encoding="utf-8")
    with ScriptedJudge() as judge:
        workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out", judge={"url": judge.url,
                                      "model": "judge-model"}, generalSet={"uri": str(general)})
        workload.general_set_path = str(general)
        code, result, stderr = run_evaluator(workload, tmp_path)

    assert code == 0, stderr[-3000:]
    assert result.succeeded and result.baseline == "base" and result.baseline_version is None
    test = result.test
    assert test.examples == TEST_ROWS
    measured = {"exactMatch", "rougeL", "jsonValid", "fieldAccuracy", "labelAccuracy", "judgeScore"}
    assert set(test.candidate) == measured | {"judgeWinRate"}
    assert set(test.baseline) == set(test.difference) == measured
    for scores in (test.candidate, test.baseline, test.difference):
        assert all(score.low <= score.value <= score.high for score in scores.values())
    # A few steps teach the random model to open a ticket record ('{"acct":...'); the base model says nothing.
    assert test.baseline["rougeL"].value == 0 and test.difference["rougeL"].low > 0
    assert set(result.general.candidate) == set(result.general.difference) == {"rougeL", "judgeScore"}
    assert result.general.examples == 3

    judged = result.judge
    assert judged.configured and judged.model == "judge-model"
    repeated = min(8, TEST_ROWS)  # judge.agreementSample: score and one pairwise order asked again
    assert judged.judged == TEST_ROWS * 4 + 3 * 2 + repeated * 2 and judged.unparseable == 0
    assert judged.wins + judged.ties + judged.losses == TEST_ROWS
    assert len(judge.chat_requests) == judged.judged
    # The scripted judge answers the same prompt the same way: it agrees with itself, so it is trusted.
    assert judged.repeated == repeated * 2 and judged.self_agreement == 1.0 and judged.trusted
    assert [test.check for test in result.tests] == ["exactMatch improvement on test", "rougeL non-inferiority on general"]

    records = [json.loads(line) for line in Path(result.records_path).read_text().splitlines()]
    assert Path(result.records_path) == tmp_path / "out" / "evaluation-records.jsonl"
    assert [row["set"] for row in records] == ["test"] * TEST_ROWS + ["general"] * 3
    first = records[0]
    assert first["prompt"][0] == {"role": "system", "content": "Answer with the ticket record only."}
    assert json.loads(first["reference"])["acct"]
    assert set(first["candidate"]["scores"]) >= {"exactMatch", "rougeL", "jsonValid", "fieldAccuracy"}
    assert first["candidate"]["judge"]["score"] in (2, 9) and first["pairwise"]["verdict"] in ("win", "tie", "loss")
    # The judge saw the same prompts and answers the records hold.
    assert first["candidate"]["answer"].startswith('{"acct"')
    assert any(f"<answer>{first['candidate']['answer']}</answer>" in seen.prompt for seen in judge.chat_requests)
    termination = (tmp_path / "termination-log").read_text()
    assert len(termination) <= 4096 and json.loads(termination)["succeeded"] is True


def test_the_judge_sees_only_max_examples_rows_and_the_rest_keep_their_scores(tiny_model_dir, trained, tmp_path):
    with ScriptedJudge() as judge:
        workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out", judge={
            "url": judge.url, "model": "judge-model", "maxExamples": 2, "agreementSample": 1, "pairwise": False,
            "maxTokens": 64}, gate={"primaryMetric": "exactMatch", "minScore": {"judgeScore": 2}})
        code, result, stderr = run_evaluator(workload, tmp_path)

    assert code == 0, stderr[-3000:]
    assert result.judge.judged == 2 * 2 + 1 and len(judge.chat_requests) == 5
    assert all(seen.body["max_tokens"] == 64 for seen in judge.chat_requests)
    assert result.test.examples == TEST_ROWS and result.test.candidate["exactMatch"]
    records = [json.loads(line) for line in Path(result.records_path).read_text().splitlines()]
    assert ["judge" in row["candidate"] for row in records] == [True, True] + [False] * (TEST_ROWS - 2)
    minimum = next(test for test in result.tests if test.check == "judgeScore minimum on test")
    assert minimum.n == 2  # the gate's judge check rests on the judged rows only


def test_an_unreachable_judge_fails_the_evaluation(tiny_model_dir, trained, tmp_path):
    workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out",
                                  judge={"url": closed_port_url(), "model": "judge-model", "maxRetries": 1})
    code, result, _ = run_evaluator(workload, tmp_path)

    assert code == 1 and not result.succeeded
    assert result.reason == "JudgeUnavailable" and "did not answer" in result.message
    assert json.loads((tmp_path / "termination-log").read_text())["reason"] == "JudgeUnavailable"


def test_a_bad_spec_is_an_invalid_workload(tmp_path):
    code, result, _ = run_evaluator('{"job": "default/tiny", "modelPath": 3}', tmp_path)
    assert code == 1 and result.reason == "InvalidWorkload" and "adapterPath" in result.message


def run_in_process(workload: EvaluatorWorkload, folder: Path) -> tuple[int, EvaluatorResult]:
    spec, result = folder / "evaluator.json", folder / "result.json"
    spec.write_text(workload.model_dump_json(by_alias=True), encoding="utf-8")
    saved = dict(os.environ)  # main() sets defaults (offline mode, MLflow retries) for its process
    try:
        code = evaluator_main(["--spec", str(spec), "--result", str(result)])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, EvaluatorResult.model_validate_json(result.read_text())


def test_a_required_judge_without_its_key_is_not_configured(tiny_model_dir, trained, tmp_path, monkeypatch):
    monkeypatch.delenv("EVAL_TEST_JUDGE_KEY", raising=False)
    judge = {"url": "http://judge:8000/v1", "model": "m", "apiKeyEnv": "EVAL_TEST_JUDGE_KEY"}
    code, result = run_in_process(
        evaluator_workload(tiny_model_dir, trained, tmp_path / "out", judge={**judge, "required": True}), tmp_path)
    assert code == 1 and result.reason == "JudgeNotConfigured" and "EVAL_TEST_JUDGE_KEY" in result.message


def test_text_rows_cannot_be_evaluated(tiny_model_dir, trained, tmp_path):
    hold_out = tmp_path / "text.jsonl"
    hold_out.write_text('{"text": "no prompt here"}\n', encoding="utf-8")
    workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out")
    workload.test_path = str(hold_out)
    code, result = run_in_process(workload, tmp_path)
    assert code == 1 and result.reason == "InvalidData" and f"{hold_out}:1: a text row" in result.message


def test_a_whole_model_candidate_is_loaded_on_its_own(tiny_model_dir, trained, tmp_path, monkeypatch):
    # A full fine-tune hands over a model folder, not an adapter; here, the base model itself.
    monkeypatch.delenv("EVAL_TEST_JUDGE_KEY", raising=False)
    judge = {"url": "http://judge:8000/v1", "model": "m", "apiKeyEnv": "EVAL_TEST_JUDGE_KEY"}
    workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out", maxExamples=2, judge=judge)
    workload.adapter_path = str(tiny_model_dir)
    code, result = run_in_process(workload, tmp_path)
    assert code == 0, result.message
    assert result.test.examples == 2
    # The judge is not required, so a missing key skips it, and the result says so.
    assert result.judge.configured is False and "judge skipped" in result.message
    assert all(score.model_dump() == {"value": 0, "low": 0, "high": 0} for score in result.test.difference.values())


def test_answers_do_not_depend_on_batching(tiny_model_dir, trained):
    from tuneloop_evaluator.generation import AnswerModels
    from tuneloop.workload_data.chat import render_prompt
    from tuneloop.workload_data.rows import load_dataset

    models = AnswerModels(str(tiny_model_dir))
    models.add("candidate", Path(trained[1].adapter_path))
    prompts = [render_prompt(models.tokenizer, example)
               for example in load_dataset(Path(trained[1].test_path)).examples]
    batched = models.answers("candidate", prompts, max_new_tokens=16, batch_size=4)
    assert batched == models.answers("candidate", prompts, max_new_tokens=16, batch_size=1)
    assert batched != models.answers(None, prompts, max_new_tokens=16, batch_size=4)  # the adapter is on


@pytest.fixture
def registry(tmp_path) -> Tracking:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment("tuneloop", artifact_location=(tmp_path / "artifacts").as_uri())
    return Tracking(tracking_uri=uri)


def test_the_champion_is_the_baseline_and_the_evaluation_joins_the_training_run(
        tiny_model_dir, trained, tmp_path, registry):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    run_id = client.create_run(client.get_experiment_by_name("tuneloop").experiment_id).info.run_id
    # The registry step's layout: the adapter folder is artifact path `adapter` of the training run.
    client.log_artifacts(run_id, trained[1].adapter_path, "adapter")
    client.create_registered_model("tickets")
    client.create_model_version("tickets", source=f"runs:/{run_id}/adapter", run_id=run_id)
    client.set_registered_model_alias("tickets", "champion", "1")

    workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out", baseline="champion")
    workload.tracking, workload.registered_model, workload.training_run_id = registry, "tickets", run_id
    code, result, stderr = run_evaluator(workload, tmp_path)

    assert code == 0, stderr[-3000:]
    assert result.baseline == "champion" and result.baseline_version == "1"
    assert (tmp_path / "out" / "champion" / "adapter" / "adapter_config.json").is_file()
    # The champion is the candidate's own adapter: greedy decoding must give the very same answers.
    for metric, difference in result.test.difference.items():
        assert (difference.value, difference.low, difference.high) == (0, 0, 0), metric
    logged = client.get_run(run_id).data
    assert logged.metrics["score/exactMatch"] == result.test.candidate["exactMatch"].value
    assert logged.metrics["score/rougeL_baseline"] == result.test.baseline["rougeL"].value
    assert not [key for key in logged.metrics if key.endswith(("_low", "_high"))]  # intervals: the description
    assert logged.tags["tuneloop.evaluation.baseline"] == "champion version 1"
    assert {a.path for a in client.list_artifacts(run_id, "evaluation")} == {
        "evaluation/evaluation-records.jsonl", "evaluation/examples.json"}


def no_op_adapter(model_path: Path, folder: Path) -> Path:
    """A LoRA adapter whose update is zero (peft's default init): it answers as the base model does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("baseline, metric", [("champion", "exactMatch"), ("base", "rougeL")])
def test_a_candidate_that_forgets_the_champions_rows_fails_the_regression_set_row_by_row(
        tiny_model_dir, trained, tmp_path, registry, baseline, metric):
    """The regression set meets the champion whatever evaluation.baseline says, and lists the rows lost on the
    guardrail's metric: exactMatch pass -> fail, or rougeL down by more than nonInferiorityMargin."""
    from mlflow.tracking import MlflowClient

    from tuneloop.registry.test_rows import log_test_rows
    from tuneloop.workload_data.chat import render_prompt
    from tuneloop.workload_data.rows import load_dataset
    from tuneloop_evaluator.generation import AnswerModels

    # The champion's test rows, with the champion's own answers as references: it got every one right.
    test_rows = load_dataset(Path(trained[1].test_path)).examples
    models = AnswerModels(str(tiny_model_dir))
    models.add("champion", Path(trained[1].adapter_path))
    answers = models.answers("champion", [render_prompt(models.tokenizer, row) for row in test_rows], 16, 4)
    champion_rows = tmp_path / "champion-test.jsonl"
    champion_rows.write_text("".join(json.dumps({"messages": row.prompt_messages + [
        {"role": "assistant", "content": answer}]}) + "\n" for row, answer in zip(test_rows, answers)))

    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    run_id = client.create_run(client.get_experiment_by_name("tuneloop").experiment_id).info.run_id
    client.log_artifacts(run_id, trained[1].adapter_path, "adapter")
    log_test_rows(registry, run_id, champion_rows)
    client.create_registered_model("tickets")
    client.create_model_version("tickets", source=f"runs:/{run_id}/adapter", run_id=run_id)
    client.set_registered_model_alias("tickets", "champion", "1")

    workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out", baseline=baseline,
                                  gate={"primaryMetric": metric})
    workload.adapter_path = str(no_op_adapter(tiny_model_dir, tmp_path / "forgetful"))
    workload.tracking, workload.registered_model = registry, "tickets"
    code, result, stderr = run_evaluator(workload, tmp_path)

    assert code == 0, stderr[-3000:]
    assert (result.baseline, result.baseline_version) == ((baseline, "1") if baseline == "champion" else ("base", None))
    assert result.regression.examples == TEST_ROWS
    assert result.regression.baseline["exactMatch"].value == 1.0  # the champion answers its rows, even vs base
    guardrail = next(test for test in result.tests if test.set == "regression")
    assert (guardrail.check, guardrail.kind, guardrail.threshold) == (
        f"{metric} non-inferiority on regression", "nonInferiority", -0.05)
    assert not guardrail.passed and guardrail.estimate.value < -0.05
    records = [json.loads(line) for line in Path(result.records_path).read_text().splitlines()]
    rows = [row for row in records if row["set"] == "regression"]
    regressed = [row for row in records if row.get("regressed")]
    assert regressed and len(regressed) == result.regressed_rows and {row["set"] for row in regressed} == {"regression"}
    drops = [row["baseline"]["scores"][metric] - row["candidate"]["scores"][metric] for row in rows]
    threshold = 0.5 if metric == "exactMatch" else 0.05  # pass -> fail, or more than the margin
    assert [row.get("regressed", False) for row in rows] == [drop > threshold for drop in drops]
    assert all(row["regressedOn"]["metric"] == metric for row in regressed)
    assert all(row["baseline"]["answer"] == row["reference"] != row["candidate"]["answer"] for row in regressed)


def test_regression_rows_are_regressed_by_the_guardrails_metric_a_small_rouge_drop_is_not():
    from tuneloop_evaluator.evaluate import EvalSet, regressed

    rows = EvalSet("regression", [], candidate_scores=[
        {"exactMatch": 0.0, "rougeL": 0.97}, {"exactMatch": 0.0, "rougeL": 0.40}, {"exactMatch": 1.0, "rougeL": 1.0},
        {"exactMatch": 0.0}], baseline_scores=[
        {"exactMatch": 1.0, "rougeL": 1.0}, {"exactMatch": 0.0, "rougeL": 0.60}, {"exactMatch": 1.0, "rougeL": 1.0},
        {"exactMatch": 1.0}])
    assert [row.index for row in regressed(rows, "exactMatch", 0.05)] == [0, 3]
    # ROUGE-L: 1.00 -> 0.97 is within the 0.05 margin; 0.60 -> 0.40 is not; a row without ROUGE-L is not judged.
    [lost] = regressed(rows, "rougeL", 0.05)
    assert (lost.index, lost.metric, lost.baseline, lost.candidate) == (1, "rougeL", 0.60, 0.40)


def test_auto_falls_back_to_base_only_when_there_is_no_champion(trained, tiny_model_dir, tmp_path, registry,
                                                              monkeypatch):
    from tuneloop_evaluator.champion import ChampionUnavailable, resolve_baseline

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    workload = evaluator_workload(tiny_model_dir, trained, tmp_path / "out", baseline="auto")
    assert resolve_baseline(workload).kind == "base"  # no tracking at all
    workload.tracking, workload.registered_model = registry, "never-registered"
    assert resolve_baseline(workload).kind == "base"
    workload.evaluation.baseline = "champion"
    with pytest.raises(ChampionUnavailable, match="never-registered' has no champion alias"):
        resolve_baseline(workload)
    workload.evaluation.baseline = "auto"
    workload.tracking = Tracking(tracking_uri=closed_port_url().removesuffix("/v1"))
    with pytest.raises(ChampionUnavailable, match="could not be asked"):
        resolve_baseline(workload)
