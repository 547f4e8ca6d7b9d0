"""The report `tuneloop run --local` prints when a job ends."""

from __future__ import annotations

import textwrap
from typing import Any

from tuneloop.api.finetunejob import FineTuneJob, FineTuneJobStatus


def print_report(job: FineTuneJob, status: FineTuneJobStatus, result_previews: list[dict[str, Any]]) -> None:
    training, dataset, cleaning = status.training, status.dataset, status.cleaning
    print()
    print(f"FineTuneJob {job.metadata.name}: {status.phase}")
    if dataset:
        print(f"  data       {dataset.rows} rows ({dataset.format}): {dataset.train_rows} train, "
              f"{dataset.hold_out_rows} hold-out; sha256 {dataset.sha256[:16]}")
    if cleaning:
        removed = {"exact duplicates": cleaning.exact_duplicates, "near duplicates": cleaning.near_duplicates,
                   "too short": cleaning.too_short, "too long": cleaning.too_long}
        redacted = ", ".join(f"{count} {kind}" for kind, count in cleaning.pii_redacted.items()) or "none"
        print(f"  cleaning   {cleaning.rows_in} -> {cleaning.rows_out} rows; normalised {cleaning.normalized}; "
              + ", ".join(f"{label} {count}" for label, count in removed.items()) + f"; PII redacted: {redacted}")
    if training:
        change = (training.hold_out_loss_after - training.hold_out_loss_before) / training.hold_out_loss_before
        print(f"  hold-out   loss {training.hold_out_loss_before:.4f} -> {training.hold_out_loss_after:.4f} "
              f"({change:+.0%})")
        print(f"  training   {training.steps} steps, final train loss {training.train_loss:.4f}, "
              f"{training.tokens_per_second:.0f} tokens/s, {training.seconds:.0f}s in all")
        if training.resumed_from_step:
            print(f"  resumed    from the checkpoint at step {training.resumed_from_step}")
        if training.stopped_early:
            print(f"  stopped    early; the output is the best checkpoint, step {training.best_step}")
        print(f"  adapter    {training.adapter_uri}")
        if training.merged_model_uri:
            print(f"  merged     {training.merged_model_uri}")
    for number, preview in enumerate(result_previews, start=1):
        print(f"\n  hold-out example {number}")
        prompt = textwrap.fill(preview["prompt"], 96, subsequent_indent=" " * 13)
        print(f"    {'prompt':<9}{prompt}")
        for label, key in (("expected", "reference"), ("base", "base"), ("tuned", "tuned")):
            answer = " ".join(preview[key].split())
            answer = answer if len(answer) <= 96 else answer[:93] + "..."
            mark = "   (exact match)" if key != "reference" and preview[key].strip() == preview["reference"].strip() else ""
            print(f"    {label:<9}{answer or '(empty)'}{mark}")
    if status.phase == "Failed":
        print(f"  reason     {status.message}")


def print_evaluation(job: FineTuneJob, status: FineTuneJobStatus) -> None:
    evaluation, registry = status.evaluation, status.registry
    if evaluation:
        baseline = evaluation.baseline + (f" v{evaluation.baseline_version}" if evaluation.baseline_version else "")
        hold_out = evaluation.hold_out
        confidence = job.spec.evaluation.bootstrap.confidence
        print(f"\n  evaluation on {hold_out.examples} hold-out examples, {confidence:.0%} bootstrap intervals; "
              f"baseline: {baseline}")
        print(f"    {'metric':<15}{'baseline':<24}{'candidate':<24}{'candidate - baseline'}")
        for metric, candidate in hold_out.candidate.items():
            base, difference = hold_out.baseline.get(metric), hold_out.difference.get(metric)
            print(f"    {metric:<15}{_interval(base):<24}{_interval(candidate):<24}{_interval(difference, signed=True)}")
        judge = evaluation.judge
        if not judge.configured:
            print("    judge          not configured (spec.evaluation.judge): gated on the other metrics")
        else:
            print(f"    judge          {judge.model}: {judge.judged} judged, {judge.unparseable} unparseable; "
                  f"pairwise {judge.wins} wins, {judge.ties} ties, {judge.losses} losses")
        if evaluation.general:
            general = evaluation.general
            print(f"    general set    {general.examples} examples, rougeL candidate - baseline "
                  f"{_interval(general.difference.get('rougeL'), signed=True)}")
        if evaluation.gate:
            print(f"  gate       {'PASSED' if evaluation.gate.passed else 'FAILED'}")
            for check in evaluation.gate.checks:
                print(f"    {check}")
        if evaluation.records_uri:
            print(f"  records    {evaluation.records_uri}")
    if registry:
        aliases = ", ".join(registry.aliases) or "none (nothing promoted)"
        print(f"  registered {registry.uri} (model {registry.model_name}, version {registry.version}; "
              f"aliases: {aliases})")


def _interval(score: Any, signed: bool = False) -> str:
    return "-" if score is None else score.interval(signed)
