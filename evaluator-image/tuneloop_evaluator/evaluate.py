"""One evaluation: answers from candidate and baseline on the test split, the regression set (the
champion's test rows) and the general set; scored, judged, tested (the gate's paired tests, Holm-corrected),
written out per example, and logged to the training run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.api.evaluation import PAIRED_ONLY, BootstrapSpec, Comparison, GateTest, JudgeSpec, JudgeStats
from tuneloop.api.workloads import EvaluatorResult, EvaluatorWorkload
from tuneloop.registry.evaluation import RECORDS_FILE, log_evaluation
from tuneloop.registry.test_rows import champion_test_rows
from tuneloop.workload_data.chat import render_prompt
from tuneloop.workload_data.rows import DataError, Example, load_dataset
from tuneloop_evaluator.bootstrap import bootstrap_difference, bootstrap_mean
from tuneloop_evaluator.champion import Baseline, regression_champion, resolve_baseline
from tuneloop_evaluator.gate_tests import DEFAULT_MIN_AGREEMENT, PASS_FAIL, SetScores, gate_tests
from tuneloop_evaluator.judge import (
    ItemJudgment, JudgeItem, JudgeNotConfigured, PointJudgment, check_judge, judge_answers, resolve_api_key,
)
from tuneloop_evaluator.metrics import TaskShape, rouge_l, score_answer, task_shape

log = logging.getLogger("tuneloop_evaluator")
CANDIDATE = "candidate"
CHAMPION = "champion"


class InvalidWorkload(ValueError):
    """The workload points at inputs that are not there."""


@dataclass
class EvalSet:
    """One set of examples with both sides' answers and per-example scores (metric -> value). The baseline
    answers the test and general sets; the regression set is always answered by the champion."""

    name: str
    examples: list[Example]
    baseline: Baseline = field(default_factory=lambda: Baseline("base"))
    candidate_answers: list[str] = field(default_factory=list)
    baseline_answers: list[str] = field(default_factory=list)
    candidate_scores: list[dict[str, float]] = field(default_factory=list)
    baseline_scores: list[dict[str, float]] = field(default_factory=list)
    judgments: list[ItemJudgment] | None = None

    def scores(self) -> SetScores:
        return SetScores(name=self.name, candidate=self.candidate_scores, baseline=self.baseline_scores)


def check_inputs(workload: EvaluatorWorkload) -> None:
    for name, path in (("modelPath", workload.model_path), ("adapterPath", workload.adapter_path)):
        if not Path(path).is_dir():
            raise InvalidWorkload(f"{name}: {path} is not a folder")
    if workload.evaluation.general_set is not None and not workload.general_set_path:
        raise InvalidWorkload("evaluation.generalSet is set but the workload has no generalSetPath")


def load_examples(path: str, system_prompt: str | None, limit: int | None) -> list[Example]:
    """Prompt/answer rows of a JSONL or Parquet file (the trainer's test split is `messages` rows)."""
    examples = load_dataset(Path(path), "auto", system_prompt).examples
    text_rows = [example.line for example in examples if not example.messages]
    if text_rows:
        raise DataError(f"{path}:{text_rows[0]}: a text row has no prompt to answer; evaluation needs "
                        "alpaca or messages rows")
    return examples[:limit]


def judge_question(example: Example) -> str:
    messages = example.prompt_messages
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"[{message['role']}]\n{message['content']}" for message in messages)


def judge_key(spec: JudgeSpec | None, warnings: list[str]) -> str | None:
    """The API key to judge with; None when there is no judge for this run (and it is not required)."""
    if spec is None:
        return None
    try:
        return resolve_api_key(spec)
    except JudgeNotConfigured as error:
        if spec.required:
            raise
        warnings.append(f"judge skipped: {error}")
        log.warning("judge skipped (evaluation.judge.required is false): %s", error)
        return None


def generate(workload: EvaluatorWorkload, sets: list[EvalSet]) -> None:
    """Answers of the candidate and of each set's baseline; the champion (there is at most one) is loaded once."""
    from tuneloop_evaluator.generation import AnswerModels

    evaluation = workload.evaluation
    models = AnswerModels(workload.model_path)
    models.add(CANDIDATE, Path(workload.adapter_path))
    champion = next((eval_set.baseline.folder for eval_set in sets if eval_set.baseline.folder is not None), None)
    if champion is not None:
        models.add(CHAMPION, champion)
    for eval_set in sets:
        baseline_name = CHAMPION if eval_set.baseline.folder is not None else None
        prompts = [render_prompt(models.tokenizer, example) for example in eval_set.examples]
        started = time.monotonic()
        eval_set.candidate_answers = models.answers(CANDIDATE, prompts, evaluation.max_new_tokens,
                                                    evaluation.batch_size)
        eval_set.baseline_answers = models.answers(baseline_name, prompts, evaluation.max_new_tokens,
                                                   evaluation.batch_size)
        log.info("%s: %d prompts answered by candidate and %s in %.1fs", eval_set.name, len(prompts),
                 eval_set.baseline.kind, time.monotonic() - started)


def answered(eval_set: EvalSet) -> Iterator[tuple[Example, str, str]]:
    """(example, candidate answer, baseline answer) for every example of the set."""
    return zip(eval_set.examples, eval_set.candidate_answers, eval_set.baseline_answers, strict=True)


def score_set(eval_set: EvalSet, score: Callable[[str, str], dict[str, float]]) -> None:
    for example, candidate, baseline in answered(eval_set):
        eval_set.candidate_scores.append(score(candidate, example.reference))
        eval_set.baseline_scores.append(score(baseline, example.reference))


def judge_items(eval_set: EvalSet) -> list[JudgeItem]:
    return [JudgeItem(question=judge_question(example), reference=example.reference, candidate=candidate,
                      baseline=baseline)
            for example, candidate, baseline in answered(eval_set)]


def add_judgments(eval_set: EvalSet, judgments: list[ItemJudgment]) -> None:
    """Readable judgments of the first len(judgments) examples become per-example scores; unreadable ones
    are left out, never counted as passes."""
    eval_set.judgments = judgments
    for candidate, baseline, judgment in zip(eval_set.candidate_scores, eval_set.baseline_scores, judgments):
        if judgment.candidate.score is not None:
            candidate["judgeScore"] = float(judgment.candidate.score)
        if judgment.baseline.score is not None:
            baseline["judgeScore"] = float(judgment.baseline.score)
        if judgment.pair is not None and judgment.pair.win_value is not None:
            candidate["judgeWinRate"] = judgment.pair.win_value


def compare(eval_set: EvalSet, spec: BootstrapSpec) -> Comparison:
    """Every metric any example has: candidate and baseline means over the examples that have it, and the
    paired difference over the examples where both sides have it."""
    comparison = Comparison(examples=len(eval_set.examples))
    metrics = dict.fromkeys(name for scores in eval_set.candidate_scores + eval_set.baseline_scores for name in scores)
    for metric in metrics:
        candidate = [scores[metric] for scores in eval_set.candidate_scores if metric in scores]
        baseline = [scores[metric] for scores in eval_set.baseline_scores if metric in scores]
        pairs = [(c[metric], b[metric])
                 for c, b in zip(eval_set.candidate_scores, eval_set.baseline_scores, strict=True)
                 if metric in c and metric in b]
        if candidate:
            comparison.candidate[metric] = bootstrap_mean(candidate, spec)
        if metric in PAIRED_ONLY:
            continue
        if baseline:
            comparison.baseline[metric] = bootstrap_mean(baseline, spec)
        if pairs:
            comparison.difference[metric] = bootstrap_difference([c for c, _ in pairs], [b for _, b in pairs], spec)
    return comparison


def _point(judgment: PointJudgment) -> dict[str, Any]:
    point: dict[str, Any] = {"score": judgment.score, "rationale": judgment.rationale}
    if judgment.unreadable is not None:
        point["unreadable"] = judgment.unreadable  # malformed, refusal, ramble or rejected
    return point


def records(eval_set: EvalSet, regressed_rows: list[Regressed] = ()) -> list[dict[str, Any]]:
    lost = {row.index: row for row in regressed_rows}
    rows = []
    for index, example in enumerate(eval_set.examples):
        judgment = eval_set.judgments[index] if eval_set.judgments and index < len(eval_set.judgments) else None
        candidate = {"answer": eval_set.candidate_answers[index], "scores": eval_set.candidate_scores[index]}
        baseline = {"answer": eval_set.baseline_answers[index], "scores": eval_set.baseline_scores[index]}
        row: dict[str, Any] = {"set": eval_set.name, "index": index, "line": example.line,
                               "prompt": example.prompt_messages, "reference": example.reference,
                               "candidate": candidate, "baseline": baseline}
        if index in lost:
            row["regressed"] = True
            row["regressedOn"] = {"metric": lost[index].metric, "baseline": lost[index].baseline,
                                  "candidate": lost[index].candidate}
        if judgment is not None:
            candidate["judge"], baseline["judge"] = _point(judgment.candidate), _point(judgment.baseline)
            if judgment.pair is not None:
                row["pairwise"] = {"verdict": judgment.pair.verdict, "inconsistent": judgment.pair.inconsistent,
                                   "candidateFirst": judgment.pair.first, "baselineFirst": judgment.pair.second,
                                   "rationales": judgment.pair.rationales}
        rows.append(row)
    return rows


def write_records(path: Path, rows: list[dict[str, Any]]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)


@dataclass(frozen=True)
class Regressed:
    """A regression-set row the candidate lost on the guardrail's metric."""

    index: int
    metric: str
    baseline: float
    candidate: float


def regressed(eval_set: EvalSet, metric: str, margin: float) -> list[Regressed]:
    """Rows where the candidate fell behind the baseline on the guardrail's `metric`: a pass/fail metric the
    baseline passed and the candidate failed, or a continuous one that dropped by more than `margin`
    (gate.nonInferiorityMargin), the loss the guardrail tolerates on average."""
    rows = []
    for index, (candidate, baseline) in enumerate(zip(eval_set.candidate_scores, eval_set.baseline_scores,
                                                      strict=True)):
        if metric not in candidate or metric not in baseline:
            continue
        lost = (baseline[metric] == 1.0 and candidate[metric] == 0.0 if metric in PASS_FAIL
                else baseline[metric] - candidate[metric] > margin)
        if lost:
            rows.append(Regressed(index, metric, baseline[metric], candidate[metric]))
    return rows


def guardrail_metric(tests: list[GateTest]) -> str | None:
    """The metric the regression set's non-inferiority check was decided on."""
    return next((test.metric for test in tests if test.kind == "nonInferiority" and test.set == "regression"), None)


def regression_set(workload: EvaluatorWorkload, champion: Baseline | None, warnings: list[str]) -> EvalSet | None:
    """The champion's own test rows, answered by the candidate and the champion, when there is a champion that
    logged them (whatever evaluation.baseline the test set is compared with)."""
    if champion is None:
        return None
    spec = workload.evaluation.regression_set
    found = champion_test_rows(workload.tracking.tracking_uri, workload.registered_model,
                               Path(workload.output_dir) / "regression")
    if found is None:
        warnings.append(f"no regression set: champion version {champion.version} logged no test rows")
        return None
    if found.version != champion.version:
        warnings.append(f"no regression set: the champion moved from version {champion.version} to "
                        f"{found.version} during the evaluation")
        return None
    return EvalSet("regression", load_examples(str(found.path), workload.dataset.system_prompt, spec.max_examples),
                   baseline=champion)


def shape_of(eval_set: EvalSet, label_fields: list[str], source: str) -> TaskShape:
    try:
        return task_shape([example.reference for example in eval_set.examples], label_fields)
    except ValueError as error:
        raise DataError(f"{source}: {error}") from None


def run(workload: EvaluatorWorkload) -> EvaluatorResult:
    started = time.monotonic()
    evaluation = workload.evaluation
    output_dir = Path(workload.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    check_inputs(workload)
    api_key = judge_key(evaluation.judge, warnings)

    test = EvalSet("test", load_examples(workload.test_path, workload.dataset.system_prompt,
                                         evaluation.max_examples))
    general = None
    if evaluation.general_set is not None:
        # General ability is asked without the task's system prompt.
        general = EvalSet("general", load_examples(workload.general_set_path, None,
                                                   evaluation.general_set.max_examples))
    label_fields = evaluation.structured.label_fields
    shape = shape_of(test, label_fields, workload.test_path)
    if label_fields and not shape.structured:
        warnings.append("labelAccuracy not measured: the references are not all JSON objects")
    if api_key is not None:
        check_judge(evaluation.judge, api_key)  # fail before generation when the judge is down

    baseline = resolve_baseline(workload)
    test.baseline = baseline
    if general is not None:
        general.baseline = baseline
    regression = regression_set(workload, regression_champion(workload, baseline), warnings)
    sets = [test] + [extra for extra in (regression, general) if extra is not None]
    generate(workload, sets)
    score_set(test, lambda answer, reference: score_answer(answer, reference, shape))
    if regression is not None:
        # The champion's rows may predate a label field the spec asks for now: then labels are not compared.
        try:
            regression_shape = task_shape([example.reference for example in regression.examples], label_fields)
        except ValueError:
            regression_shape = task_shape([example.reference for example in regression.examples], [])
        score_set(regression, lambda answer, reference: score_answer(answer, reference, regression_shape))
    if general is not None:
        score_set(general, lambda answer, reference: {"rougeL": rouge_l(answer, reference)})

    judge_stats = None
    if api_key is not None:
        judged = judge_answers(evaluation.judge, api_key, judge_items(test)[:evaluation.judge.max_examples],
                               judge_items(general) if general else [])
        add_judgments(test, judged.test)
        if general is not None:
            add_judgments(general, judged.general)
        judge_stats = judged.stats

    min_agreement = evaluation.judge.min_agreement if evaluation.judge else DEFAULT_MIN_AGREEMENT
    tests, test_warnings = gate_tests(evaluation.gate, evaluation.bootstrap, test.scores(),
                                      regression.scores() if regression else None,
                                      general.scores() if general else None, judge_stats, min_agreement)
    warnings += test_warnings
    metric = guardrail_metric(tests)
    regressed_rows = (regressed(regression, metric, evaluation.gate.non_inferiority_margin)
                      if regression is not None and metric is not None else [])
    records_path = output_dir / RECORDS_FILE
    write_records(records_path, records(test) + (records(regression, regressed_rows) if regression else [])
                  + (records(general) if general else []))
    result = EvaluatorResult(
        succeeded=True, message="; ".join(warnings) or None, baseline=baseline.kind,
        baseline_version=baseline.version, test=compare(test, evaluation.bootstrap),
        regression=compare(regression, evaluation.bootstrap) if regression else None,
        regressed_rows=len(regressed_rows) if regression is not None else None,
        general=compare(general, evaluation.bootstrap) if general else None,
        judge=judge_stats or JudgeStats(configured=False), records_path=str(records_path),
        tests=tests, warnings=warnings,
    )
    if workload.tracking is not None and workload.training_run_id:
        log_evaluation(workload.tracking, workload.training_run_id, result, records_path)
    result.seconds = time.monotonic() - started
    return result
