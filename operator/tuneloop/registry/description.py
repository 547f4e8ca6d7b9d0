"""The run's description (MLflow shows the `mlflow.note.content` tag as Markdown on the run's page):
the whole story of one FineTuneJob — data, cleaning, training, evaluation with intervals, the gate's
verdict and the registered version — written by the registration, the last stage that knows it all."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tuneloop.api.evaluation import Comparison, EvaluationResults
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.api.workloads import RegisterResult
from tuneloop.registry.cost import COST_TAG
from tuneloop.registry.lineage import (
    BASE_MODEL_TAG,
    DATASET_SHA256_TAG,
    GATE_TAG,
    JOB_UID_TAG,
    TUNELOOP_VERSION_TAG,
)
from tuneloop.report import summary_lines
from tuneloop.report.model import ExampleRow

DESCRIPTION_TAG = "mlflow.note.content"
MAX_DESCRIPTION = 8000  # MLflow's limit on a tag value
REGRESSED_SHOWN = 5
ANSWER_WIDTH = 100


def comparison_table(comparison: Comparison, baseline: str) -> list[str]:
    """Each metric: baseline, tuned and their paired difference, with confidence intervals, as an aligned
    code block (MLflow draws Markdown tables without cell padding: intervals run into each other)."""
    width = max([len("metric"), *map(len, comparison.candidate)]) + 2
    lines = ["```", f"{'metric':<{width}}{baseline:<22}{'tuned':<22}tuned - {baseline}"]
    for metric, tuned in comparison.candidate.items():
        base, difference = comparison.baseline.get(metric), comparison.difference.get(metric)
        lines.append(f"{metric:<{width}}{base.interval() if base else '-':<22}{tuned.interval():<22}"
                     + (difference.interval(signed=True) if difference else "-"))
    return lines + ["```"]


def _data(status: FineTuneJobStatus) -> list[str]:
    dataset, cleaning = status.dataset, status.cleaning
    if dataset is None:
        return []
    lines = ["## Data", "",
             f"{summary_lines.split_sizes(dataset)} after cleaning ({dataset.train_tokens} training tokens); "
             "validation chose the checkpoint, only the evaluation and the gate saw test. "
             f"sha256 `{dataset.sha256}`.", ""]
    if status.augmentation is not None and status.augmentation.summary:
        lines += [f"Synthetic rows: {status.augmentation.summary} ({status.augmentation.teacher or 'teacher'}); "
                  "they trained only, never validated or tested.", ""]
    if dataset.contamination is not None:
        lines += [f"Contamination: {dataset.contamination.summary()}.", ""]
        findings = summary_lines.contamination_examples(dataset.contamination)
        if findings:
            lines += _code_block(findings) + [""]
    if cleaning is not None:
        dropped = [f"{count} {what}" for what, count in (
            ("exact duplicates", cleaning.exact_duplicates), ("near duplicates", cleaning.near_duplicates),
            ("too short", cleaning.too_short), ("too long", cleaning.too_long)) if count]
        redacted = ", ".join(f"{count} {kind}" for kind, count in cleaning.pii_redacted.items() if count)
        lines += [f"Cleaning: {cleaning.rows_in} rows read, {cleaning.rows_out} kept"
                  + (f"; dropped {', '.join(dropped)}" if dropped else "; none dropped")
                  + (f"; {cleaning.normalized} normalised" if cleaning.normalized else "")
                  + (f"; PII redacted: {redacted}" if redacted else "") + ".", ""]
    return lines


def _training(status: FineTuneJobStatus, base_model: str) -> list[str]:
    training = status.training
    if training is None:
        return []
    resumed = f", resumed from step {training.resumed_from_step}" if training.resumed_from_step else ""
    return ["## Training", "", "```",
            f"base model     {base_model}",
            f"steps          {training.steps}{resumed}",
            f"train loss     {training.train_loss:.4f}",
            f"val. loss      {training.validation_loss_before:.4f} -> {training.validation_loss_after:.4f}",
            f"speed          {training.tokens_per_second:.0f} tokens/s, {training.seconds:.0f} s",
            *([f"objective      {training.preference.summary()}"] if training.preference else []),
            *([f"preferences    {summary_lines.preference_data(status.dataset.preferences)}"]
              if status.dataset and status.dataset.preferences else []), "```", "",
            "The loss curves: `loss/train` and `loss/validation` (validation loss at the same steps), Model metrics.", ""]


def _evaluation(status: FineTuneJobStatus) -> list[str]:
    evaluation = status.evaluation
    if evaluation is None:
        return []
    baseline = evaluation.baseline + (f" v{evaluation.baseline_version}" if evaluation.baseline_version else "")
    lines = ["## Evaluation", "",
             f"{evaluation.test.examples} test examples, tuned vs **{baseline}**; "
             "[low, high] is the bootstrap confidence interval.", "",
             *comparison_table(evaluation.test, baseline), ""]
    if evaluation.regression is not None:
        lines += [f"Regression set ({evaluation.regression.examples} of the champion's test rows, non-inferiority): "
                  f"{summary_lines.regressed_count(evaluation.regressed_rows, evaluation.regression.examples)}.", "",
                  *comparison_table(evaluation.regression, "champion"), ""]
    if evaluation.general is not None:
        lines += [f"General set ({evaluation.general.examples} examples, non-inferiority):", "",
                  *comparison_table(evaluation.general, baseline), ""]
    lines += [f"LLM judge: {summary_lines.judge(evaluation.judge)}.", ""]
    distrust = summary_lines.judge_distrust(evaluation.judge)
    if distrust:
        lines += [f"**Warning:** {distrust}.", ""]
    lines += ["Every example, both answers and their scores: the `evaluation/examples.json` table (Artifacts).", ""]
    return lines


def _cost(status: FineTuneJobStatus) -> list[str]:
    """Queue and run time, GPU-hours, efficiency, money, the price of a point: as the status had them when
    the registration began (its own minutes are not counted)."""
    facts = summary_lines.cost_facts(status.cost, status.queue, status.phase)
    if not facts:
        return []
    table = summary_lines.aligned(summary_lines.stage_cost_table(status.cost)) if status.cost and status.cost.stages \
        else []
    return ["## Cost", "", *(f"- {label}: {text}" for label, text in facts), "",
            *(_code_block(table) + [""] if table else []),
            "Held: a stage's GPUs x the time its Job ran; used: its GPUs x the time the workload computed. "
            f"The same figures: metrics `cost/*`, and the version's tag `{COST_TAG}`.", ""]


def _regressed(evaluation: EvaluationResults | None, rows: Sequence[ExampleRow]) -> list[str]:
    """After the gate, so that a description cut at MLflow's limit loses rows, not the verdict."""
    if evaluation is None or not evaluation.regressed_rows:
        return []
    lines = [f"## What regressed ({evaluation.regressed_rows} rows)", "",
             f"Rows {summary_lines.LOST_ROWS}"
             + (":" if rows else "; the records list them (Artifacts)."), ""]
    listed = []
    for number, row in enumerate(rows[:REGRESSED_SHOWN], start=1):
        listed += ([""] if listed else []) + [f"{number}. prompt    {_one_line(row.prompt)}"] + [
            f"   {label:<10}{_one_line(text)}"
            for label, text in (("expected", row.reference), ("champion", row.base), ("candidate", row.tuned))]
    if listed:
        lines += _code_block(listed)
    if len(rows) > REGRESSED_SHOWN:
        lines.append(f"and {len(rows) - REGRESSED_SHOWN} more in the report (Artifacts: report/report.html).")
    return lines + [""]


def _gate(status: FineTuneJobStatus | None, tags: dict[str, str]) -> list[str]:
    gate = status.evaluation.gate if status and status.evaluation else None
    if gate is None:
        return ["## Gate", "", f"Gate: {tags.get(GATE_TAG, 'not evaluated')}.", ""]
    checks = [f"- **deciding:** {line.text}" if line.deciding else f"- {line.text}"
              for line in summary_lines.gate_lines(gate)]
    warnings = [f"- **Warning:** {warning}" for warning in gate.warnings]
    return ["## Gate", "", *(checks or [gate.message]), *warnings, ""]


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ANSWER_WIDTH else flat[:ANSWER_WIDTH - 3] + "..."


def _code_block(lines: list[str]) -> list[str]:
    """A fenced block no line of the (untrusted) text can close: the fence is longer than any backtick run in it."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *lines, fence]


def _export(status: FineTuneJobStatus, registered: RegisterResult) -> list[str]:
    export = status.export
    if export is None:
        return []
    logged = {exported.kind: exported.uri for exported in registered.exports}
    lines = ["## Export", "", export.skipped or export.summary or "", ""]
    failed_check = export.agreement is not None and not export.agreement.passed
    for exported in export.files:
        where = logged.get(exported.kind) or (
            "not registered: it failed its check against the merged model" if exported.kind == "gguf" and failed_check
            else "not registered")
        lines.append(f"- {exported.kind}{' ' + exported.gguf_type if exported.gguf_type else ''}: "
                     f"{exported.bytes / 1e6:,.0f} MB, sha256 `{exported.sha256}`, `{where}`")
    return lines + [""]


def headline(status: FineTuneJobStatus | None, tags: dict[str, str], registered: RegisterResult) -> str:
    """What the run page shows before "Show more": verdict, primary score, validation loss, the version."""
    evaluation = status.evaluation if status else None
    passed = evaluation.gate.passed if evaluation and evaluation.gate else tags.get(GATE_TAG) == "passed"
    parts = [f"**Gate {'PASSED' if passed else 'FAILED'}**"]
    if evaluation and evaluation.summary:
        parts.append(evaluation.summary)
    if status and status.training:
        parts.append(f"validation loss {status.training.validation_loss_before:.3f} → "
                     f"{status.training.validation_loss_after:.3f}")
    aliases = f"aliases {', '.join(registered.aliases)}" if registered.aliases else "no alias moved"
    parts.append(f"registered `{registered.uri}` ({aliases})")
    notes = (registered.message or "").split("; ")[1:]  # the first part repeats the version
    return " · ".join(parts) + ("".join(f"\n\n{note}" for note in notes))


def run_description(job: str, status: FineTuneJobStatus | None, tags: dict[str, str],
                    registered: RegisterResult, regressed: Sequence[ExampleRow] = ()) -> str:
    """Markdown for the run's page. `tags` are the version's (lineage, gate); `status` the job's when known;
    `regressed` the regression-set rows the evaluation's records mark regressed (run_report.read_records)."""
    base_model = tags.get(BASE_MODEL_TAG, "")
    lines = [headline(status, tags, registered), ""]
    if status is not None:
        lines += _data(status) + _training(status, base_model) + _evaluation(status)
    lines += _gate(status, tags)
    lines += _export(status, registered) if status is not None else []
    lines += _cost(status) if status is not None else []
    lines += _regressed(status.evaluation if status else None, regressed)
    lines += ["## Lineage", "",
              f"- FineTuneJob `{job}`, uid `{tags.get(JOB_UID_TAG, '')}`",
              f"- base model `{base_model}`",
              f"- dataset sha256 `{tags.get(DATASET_SHA256_TAG, '')}`",
              f"- Tuneloop {tags.get(TUNELOOP_VERSION_TAG, '')}"]
    text = "\n".join(lines) + "\n"
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 20] + "\n\n(cut)\n"
