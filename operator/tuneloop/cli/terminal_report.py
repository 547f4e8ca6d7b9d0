"""The report `tuneloop run --local` (and `tuneloop status`) prints when a job ends."""

from __future__ import annotations

import textwrap
from typing import Any

from tuneloop.api.evaluation import EvaluationResults
from tuneloop.api.finetunejob import FineTuneJob, FineTuneJobStatus
from tuneloop.report import summary_lines

REGRESSED_SHOWN = 5
ANSWER_WIDTH = 96
LINE_WIDTH = 116


def print_report(job: FineTuneJob, status: FineTuneJobStatus, result_previews: list[dict[str, Any]]) -> None:
    training, dataset, cleaning = status.training, status.dataset, status.cleaning
    print()
    print(f"FineTuneJob {job.metadata.name}: {status.phase}")
    if dataset:
        print(f"  data       {summary_lines.split_sizes(dataset)}; sha256 {dataset.sha256[:16]}")
        if dataset.contamination:
            _print_wrapped("             contamination: ", dataset.contamination.summary())
            for finding in summary_lines.contamination_examples(dataset.contamination):
                print(f"               {finding}")
        if dataset.preferences:
            print(f"  preference {summary_lines.preference_data(dataset.preferences)}")
    if status.augmentation and status.augmentation.summary:
        _print_wrapped("  augment    ", f"{status.augmentation.summary} ({status.augmentation.teacher or 'teacher'})")
    if cleaning:
        removed = {"exact duplicates": cleaning.exact_duplicates, "near duplicates": cleaning.near_duplicates,
                   "too short": cleaning.too_short, "too long": cleaning.too_long}
        redacted = ", ".join(f"{count} {kind}" for kind, count in cleaning.pii_redacted.items()) or "none"
        print(f"  cleaning   {cleaning.rows_in} -> {cleaning.rows_out} rows; normalised {cleaning.normalized}; "
              + ", ".join(f"{label} {count}" for label, count in removed.items()) + f"; PII redacted: {redacted}")
    if training:
        change = (training.validation_loss_after - training.validation_loss_before) / training.validation_loss_before
        print(f"  val. loss  {training.validation_loss_before:.4f} -> {training.validation_loss_after:.4f} "
              f"({change:+.0%})")
        print(f"  training   {training.steps} steps, final train loss {training.train_loss:.4f}, "
              f"{training.tokens_per_second:.0f} tokens/s, {training.seconds:.0f}s in all")
        if training.preference:
            _print_wrapped("  objective  ", training.preference.summary())
        if training.resumed_from_step:
            print(f"  resumed    from the checkpoint at step {training.resumed_from_step}")
        if training.stopped_early:
            print(f"  stopped    early; the output is the best checkpoint, step {training.best_step}")
        print(f"  adapter    {training.adapter_uri}")
        if training.merged_model_uri:
            print(f"  merged     {training.merged_model_uri}")
    if status.export:
        _print_wrapped("  export     ", status.export.skipped or status.export.summary or "")
        for line in summary_lines.export_files(status.export):
            _print_wrapped("             ", line)
    for number, preview in enumerate(result_previews, start=1):
        print(f"\n  validation example {number}")
        prompt = textwrap.fill(preview["prompt"], 96, subsequent_indent=" " * 13)
        print(f"    {'prompt':<9}{prompt}")
        for label, key in (("expected", "reference"), ("base", "base"), ("tuned", "tuned")):
            answer = _one_line(preview[key])
            mark = "   (exact match)" if key != "reference" and preview[key].strip() == preview["reference"].strip() else ""
            print(f"    {label:<9}{answer or '(empty)'}{mark}")
    if status.phase == "Failed":
        print(f"  reason     {status.message}")


def print_evaluation(job: FineTuneJob, status: FineTuneJobStatus) -> None:
    evaluation, registry = status.evaluation, status.registry
    if evaluation:
        baseline = evaluation.baseline + (f" v{evaluation.baseline_version}" if evaluation.baseline_version else "")
        test = evaluation.test
        confidence = job.spec.evaluation.bootstrap.confidence
        print(f"\n  evaluation on {test.examples} test examples, {confidence:.0%} bootstrap intervals; "
              f"baseline: {baseline}")
        print(f"    {'metric':<15}{'baseline':<24}{'candidate':<24}{'candidate - baseline'}")
        for metric, candidate in test.candidate.items():
            base, difference = test.baseline.get(metric), test.difference.get(metric)
            print(f"    {metric:<15}{_interval(base):<24}{_interval(candidate):<24}{_interval(difference, signed=True)}")
        _print_wrapped("    judge          ", summary_lines.judge(evaluation.judge))
        distrust = summary_lines.judge_distrust(evaluation.judge)
        if distrust:
            _print_wrapped("    WARNING        ", distrust)
        _print_guardrails(evaluation, baseline)
        if evaluation.gate:
            print(f"  gate       {'PASSED' if evaluation.gate.passed else 'FAILED'}")
            for line in summary_lines.gate_lines(evaluation.gate):
                print(f"    {'deciding > ' if line.deciding else ''}{line.text}")
            for warning in evaluation.gate.warnings:
                _print_wrapped("    WARNING: ", warning)
        _print_regressed(evaluation)
        if evaluation.records_uri:
            print(f"  records    {evaluation.records_uri}")
    if registry:
        aliases = ", ".join(registry.aliases) or "none (nothing promoted)"
        print(f"  registered {registry.uri} (model {registry.model_name}, version {registry.version}; "
              f"aliases: {aliases})")
        for kind, uri in sorted((registry.exports or {}).items()):
            print(f"             with {kind}: {uri}")
    _print_cost(status)


def _print_cost(status: FineTuneJobStatus) -> None:
    """Queue and run time, GPU-hours held and used per stage, efficiency, money and the price of a point."""
    facts = summary_lines.cost_facts(status.cost, status.queue, status.phase)
    if not facts:
        return
    print("  cost")
    for label, text in facts:
        _print_wrapped(f"    {label:<11}", text)
    if status.cost is not None and status.cost.stages:
        for line in summary_lines.aligned(summary_lines.stage_cost_table(status.cost)):
            print(f"    {line}")


def _print_guardrails(evaluation: EvaluationResults, baseline: str) -> None:
    regression, general = evaluation.regression, evaluation.general
    if regression is not None:
        metric = summary_lines.headline_metric(regression, evaluation.primary_metric)
        _print_wrapped("    regression set ", f"{regression.examples} of the champion's test rows: "
                       f"{summary_lines.guardrail(regression, metric, 'champion')}")
        print(f"                   {summary_lines.regressed_count(evaluation.regressed_rows, regression.examples)}")
    if general is not None:
        metric = summary_lines.headline_metric(general, "rougeL")
        _print_wrapped("    general set    ", f"{general.examples} examples: "
                       f"{summary_lines.guardrail(general, metric, baseline)}")


def _print_regressed(evaluation: EvaluationResults) -> None:
    """The regressed rows, from the records file the evaluator wrote (a local run's)."""
    from tuneloop.registry.run_report import local_records_path, read_records

    if not evaluation.regressed_rows:
        return
    rows = read_records(local_records_path(evaluation.records_uri)).regressed
    print(f"  regressed  {evaluation.regressed_rows} regression-set rows lost on the guardrail's metric"
          + (":" if rows else " (the records file cannot be read here)"))
    for number, row in enumerate(rows[:REGRESSED_SHOWN], start=1):
        print(f"    {number}. prompt    {_one_line(row.prompt)}")
        for label, text in (("expected", row.reference), ("champion", row.base), ("candidate", row.tuned)):
            print(f"       {label:<10}{_one_line(text)}")
    if len(rows) > REGRESSED_SHOWN:
        print(f"    and {len(rows) - REGRESSED_SHOWN} more in the report")


def _print_wrapped(prefix: str, text: str) -> None:
    print(textwrap.fill(text, LINE_WIDTH, initial_indent=prefix, subsequent_indent=" " * len(prefix),
                        break_long_words=False, break_on_hyphens=False))


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ANSWER_WIDTH else flat[:ANSWER_WIDTH - 3] + "..."


def _interval(score: Any, signed: bool = False) -> str:
    return "-" if score is None else score.interval(signed)
