"""The run's description (MLflow shows the `mlflow.note.content` tag as Markdown on the run's page):
the whole story of one FineTuneJob — data, cleaning, training, evaluation with intervals, the gate's
verdict and the registered version — written by the registration, the last stage that knows it all."""

from __future__ import annotations

from tuneloop.api.evaluation import Comparison
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.api.workloads import RegisterResult
from tuneloop.registry.lineage import (
    BASE_MODEL_TAG,
    DATASET_SHA256_TAG,
    GATE_TAG,
    JOB_UID_TAG,
    TUNELOOP_VERSION_TAG,
)

DESCRIPTION_TAG = "mlflow.note.content"
MAX_DESCRIPTION = 8000  # MLflow's limit on a tag value


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
             f"{dataset.rows} rows ({dataset.format}) after cleaning: {dataset.train_rows} to train on "
             f"({dataset.train_tokens} tokens), {dataset.hold_out_rows} held out for evaluation. "
             f"sha256 `{dataset.sha256}`.", ""]
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
            f"hold-out loss  {training.hold_out_loss_before:.4f} -> {training.hold_out_loss_after:.4f}",
            f"speed          {training.tokens_per_second:.0f} tokens/s, {training.seconds:.0f} s", "```", "",
            "The loss curves: `loss/train` and `loss/validation` (hold-out loss at the same steps), Model metrics.", ""]


def _evaluation(status: FineTuneJobStatus) -> list[str]:
    evaluation = status.evaluation
    if evaluation is None:
        return []
    baseline = evaluation.baseline + (f" v{evaluation.baseline_version}" if evaluation.baseline_version else "")
    lines = ["## Evaluation", "",
             f"{evaluation.hold_out.examples} held-out examples, tuned vs **{baseline}**; "
             "[low, high] is the bootstrap confidence interval.", "",
             *comparison_table(evaluation.hold_out, baseline), ""]
    if evaluation.general is not None:
        lines += [f"General set ({evaluation.general.examples} examples, regression check):", "",
                  *comparison_table(evaluation.general, baseline), ""]
    judge = evaluation.judge
    if judge.configured:
        lines += [f"LLM judge {judge.model or ''}: {judge.wins} wins, {judge.ties} ties, {judge.losses} losses "
                  f"({judge.unparseable} unreadable).", ""]
    lines += ["Every example, both answers and their scores: the `evaluation/examples.json` table (Artifacts).", ""]
    return lines


def _gate(status: FineTuneJobStatus | None, tags: dict[str, str]) -> list[str]:
    gate = status.evaluation.gate if status and status.evaluation else None
    if gate is None:
        return ["## Gate", "", f"Gate: {tags.get(GATE_TAG, 'not evaluated')}.", ""]
    return ["## Gate", "", *([f"- {check}" for check in gate.checks] or [gate.message]), ""]


def headline(status: FineTuneJobStatus | None, tags: dict[str, str], registered: RegisterResult) -> str:
    """What the run page shows before "Show more": verdict, primary score, hold-out loss, the version."""
    evaluation = status.evaluation if status else None
    passed = evaluation.gate.passed if evaluation and evaluation.gate else tags.get(GATE_TAG) == "passed"
    parts = [f"**Gate {'PASSED' if passed else 'FAILED'}**"]
    if evaluation and evaluation.summary:
        parts.append(evaluation.summary)
    if status and status.training:
        parts.append(f"hold-out loss {status.training.hold_out_loss_before:.3f} → "
                     f"{status.training.hold_out_loss_after:.3f}")
    aliases = f"aliases {', '.join(registered.aliases)}" if registered.aliases else "no alias moved"
    parts.append(f"registered `{registered.uri}` ({aliases})")
    notes = (registered.message or "").split("; ")[1:]  # the first part repeats the version
    return " · ".join(parts) + ("".join(f"\n\n{note}" for note in notes))


def run_description(job: str, status: FineTuneJobStatus | None, tags: dict[str, str],
                    registered: RegisterResult) -> str:
    """Markdown for the run's page. `tags` are the version's (lineage, gate); `status` the job's when known."""
    base_model = tags.get(BASE_MODEL_TAG, "")
    lines = [headline(status, tags, registered), ""]
    if status is not None:
        lines += _data(status) + _training(status, base_model) + _evaluation(status)
    lines += _gate(status, tags)
    lines += ["## Lineage", "",
              f"- FineTuneJob `{job}`, uid `{tags.get(JOB_UID_TAG, '')}`",
              f"- base model `{base_model}`",
              f"- dataset sha256 `{tags.get(DATASET_SHA256_TAG, '')}`",
              f"- Tuneloop {tags.get(TUNELOOP_VERSION_TAG, '')}"]
    text = "\n".join(lines) + "\n"
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 20] + "\n\n(cut)\n"
