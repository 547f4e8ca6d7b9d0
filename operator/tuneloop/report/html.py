"""One self-contained HTML page per run: inline CSS, the chart as inline SVG, no script, no URL to fetch.

Every piece of text that comes from the run (prompts, answers, messages, names) goes through
`escape`: a prompt holding `<script>` is shown as text.
"""

from __future__ import annotations

from html import escape

from tuneloop.api.evaluation import Comparison, Score
from tuneloop.api.finetunejob import ContaminationStats
from tuneloop.report import summary_lines
from tuneloop.report.loss_chart import loss_chart_svg
from tuneloop.report.model import ExampleRow, RunReport

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2937; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
       border-bottom: 1px solid #e5e7eb; padding-bottom: .2rem; }
.verdict { display: inline-block; padding: .15rem .6rem; border-radius: .3rem; color: #fff; font-weight: 700; }
.passed { background: #15803d; } .failed { background: #b91c1c; } .neutral { background: #6b7280; }
.message { color: #4b5563; margin-top: .4rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { text-align: left; padding: .3rem .7rem; border-bottom: 1px solid #e5e7eb; vertical-align: top; }
th { background: #f9fafb; font-weight: 600; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.primary td { font-weight: 600; }
.up { color: #15803d; } .down { color: #b91c1c; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { color: #6b7280; } dd { margin: 0; overflow-wrap: anywhere; }
.example { border: 1px solid #e5e7eb; border-radius: .4rem; margin: 1rem 0; padding: .6rem .8rem; }
.example pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: .2rem 0; font-size: 12.5px;
               background: #f9fafb; padding: .4rem; border-radius: .3rem; max-height: 18em; overflow: auto; }
.answers { display: grid; grid-template-columns: 1fr 1fr 1fr; gap: .6rem; }
.exact { color: #15803d; font-weight: 700; }
.scores { color: #6b7280; font-size: 12px; }
.note { color: #6b7280; font-size: 12.5px; }
.warning { color: #92400e; background: #fef3c7; border-left: 4px solid #d97706; padding: .3rem .6rem; margin: .4rem 0; }
ul.checks li { margin: .2rem 0; } li.check-failed { color: #b91c1c; }
li.deciding { font-weight: 700; background: #f3f4f6; padding: .2rem .4rem; border-radius: .3rem; }
.tag { display: inline-block; font-size: 11px; padding: 0 .4rem; border-radius: .3rem; background: #1f2937; color: #fff;
       margin-right: .4rem; }
table.regressed pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font-size: 12.5px; max-height: 12em;
                      overflow: auto; }
table.regressed td { max-width: 24em; }
svg { max-width: 100%; height: auto; }
"""


def render_html(report: RunReport) -> str:
    title = f"FineTuneJob {report.namespace}/{report.job_name}"
    sections = [_headline(report), _facts(report), _loss(report), _evaluation(report), _gate(report),
                _cost(report), _regressed(report), _examples(report)]
    body = "\n".join(section for section in sections if section)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}: {escape(_verdict(report)[0])}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _verdict(report: RunReport) -> tuple[str, str]:
    """(text, css class) of the headline badge: the gate's decision, or why there is none."""
    if report.gate is not None:
        return ("PASSED", "passed") if report.gate.passed else ("FAILED", "failed")
    if report.phase == "Failed":
        return "JOB FAILED", "failed"
    return f"NOT GATED ({report.phase})", "neutral"


def _headline(report: RunReport) -> str:
    text, css = _verdict(report)
    subject = "Gate" if report.gate is not None else "Result"
    when = f" &middot; completed {escape(report.completed)}" if report.completed else ""
    return (f"<h1>FineTuneJob {escape(report.namespace)}/{escape(report.job_name)}</h1>\n"
            f"<div>{subject}: <span class=\"verdict {css}\" id=\"verdict\">{escape(text)}</span> "
            f"&middot; phase {escape(report.phase)}{when}</div>\n"
            + (f"<p class=\"message\">{escape(report.message)}</p>" if report.message else ""))


def _facts(report: RunReport) -> str:
    rows: list[tuple[str, str]] = [("base model", report.base_model or "unknown")]
    if report.dataset:
        data = report.dataset
        rows.append(("dataset", f"{summary_lines.split_sizes(data)}; {data.train_tokens:,} training tokens"))
    if report.augmentation and report.augmentation.summary:
        rows.append(("synthetic rows", f"{report.augmentation.summary} ({report.augmentation.teacher or 'teacher'})"))
    if report.cleaning:
        clean = report.cleaning
        redacted = ", ".join(f"{count} {kind}" for kind, count in clean.pii_redacted.items()) or "none"
        rows.append(("cleaning", f"{clean.rows_in} -> {clean.rows_out} rows; normalised {clean.normalized}; "
                                 f"exact duplicates {clean.exact_duplicates}, near duplicates {clean.near_duplicates}, "
                                 f"too short {clean.too_short}, too long {clean.too_long}; PII redacted: {redacted}"))
    if report.training:
        training = report.training
        line = (f"{training.steps} steps, final train loss {training.train_loss:.4f}, "
                f"{training.tokens_per_second:.0f} tokens/s, {training.seconds:.0f} s")
        if training.validation_loss_before is not None and training.validation_loss_after is not None:
            line += f"; validation loss {training.validation_loss_before:.4f} -> {training.validation_loss_after:.4f}"
        if training.resumed_from_step:
            line += f"; resumed from the checkpoint at step {training.resumed_from_step}"
        if training.stopped_early:
            line += f"; stopped early, output is the best checkpoint (step {training.best_step})"
        rows.append(("training", line))
        if training.preference:
            rows.append(("objective", training.preference.summary()))
    if report.dataset and report.dataset.preferences:
        rows.append(("preferences", summary_lines.preference_data(report.dataset.preferences)))
    if report.export:
        rows.append(("export", report.export.skipped or report.export.summary or ""))
        rows.extend(("", line) for line in summary_lines.export_files(report.export))
    if report.registry:
        registry = report.registry
        aliases = ", ".join(registry.aliases) or "none (nothing promoted)"
        rows.append(("registered", f"{registry.uri}: model {registry.model_name}, version {registry.version}; "
                                   f"aliases: {aliases}"))
        rows.extend((f"with {kind}", uri) for kind, uri in sorted((registry.exports or {}).items()))
    lineage = report.lineage
    for label, value in (("job uid", lineage.job_uid), ("dataset sha256", lineage.dataset_sha256),
                         ("adapter", lineage.adapter_uri), ("MLflow run", lineage.mlflow_run_id),
                         ("records", lineage.records_uri)):
        if value:
            rows.append((label, value))
    items = [f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in rows]
    if report.dataset and report.dataset.contamination:
        items.insert(2, _contamination(report.dataset.contamination))
    return "<h2>Run</h2>\n<dl>\n" + "\n".join(items) + "\n</dl>"


def _contamination(stats: ContaminationStats) -> str:
    findings = summary_lines.contamination_examples(stats)
    more = len(stats.examples) - len(findings)
    listed = "".join(f"<li>{escape(finding)}</li>" for finding in findings)
    return (f"<dt>contamination</dt><dd id=\"contamination\">{escape(stats.summary())}"
            + (f"<ul>{listed}</ul>" if listed else "")
            + (f"<span class=\"note\">and {more} more in the status</span>" if more > 0 else "") + "</dd>")


def _loss(report: RunReport) -> str:
    svg = loss_chart_svg(report.loss)
    if svg is None:
        return "<h2>Loss</h2>\n<p class=\"note\">No loss was recorded for this run.</p>"
    counts = f"{len(report.loss.train)} train points, {len(report.loss.validation)} validation points"
    source = f"; {escape(report.loss.source)}" if report.loss.source else ""
    return (f"<h2>Loss</h2>\n<figure id=\"loss-chart\">{svg}\n"
            f"<figcaption class=\"note\">{counts}{source}</figcaption></figure>")


def _interval(score: Score | None, signed: bool = False) -> str:
    return "&ndash;" if score is None else score.interval(signed)


def _comparison_table(comparison: Comparison, primary: str | None, evaluated_set: str) -> str:
    rows = []
    for metric, candidate in comparison.candidate.items():
        difference = comparison.difference.get(metric)
        trend = "" if difference is None else " class=\"up\"" if difference.low > 0 else (
            " class=\"down\"" if difference.high < 0 else "")
        css = " class=\"primary\"" if metric == primary else ""
        rows.append(f"<tr{css} data-metric=\"{escape(metric)}\"><td>{escape(metric)}</td>"
                    f"<td class=\"num\">{_interval(comparison.baseline.get(metric))}</td>"
                    f"<td class=\"num\">{_interval(candidate)}</td>"
                    f"<td class=\"num\"><span{trend}>{_interval(difference, signed=True)}</span></td></tr>")
    return (f"<table class=\"metrics\" data-set=\"{evaluated_set}\">\n<tr><th>metric</th><th>baseline</th><th>candidate</th>"
            "<th>candidate &minus; baseline</th></tr>\n" + "\n".join(rows) + "\n</table>")


def _evaluation(report: RunReport) -> str:
    evaluation = report.evaluation
    if evaluation is None:
        return "<h2>Evaluation</h2>\n<p class=\"note\">The run has no evaluation.</p>"
    confidence = f"{evaluation.confidence:.0%} bootstrap intervals" if evaluation.confidence else "bootstrap intervals"
    parts = [f"<h2>Evaluation</h2>\n<p>{evaluation.test.examples} test examples (rows no step of training saw or "
             f"chose by), {confidence}; baseline: {escape(evaluation.baseline)}; primary metric: "
             f"{escape(evaluation.primary_metric)}. Each cell: mean [low, high].</p>",
             _comparison_table(evaluation.test, evaluation.primary_metric, "test")]
    judge = evaluation.judge
    parts.append(f"<p id=\"judge\">Judge: {escape(summary_lines.judge(judge))}</p>")
    distrust = summary_lines.judge_distrust(judge)
    if distrust:
        parts.append(f"<p class=\"warning\" id=\"judge-distrust\">{escape(distrust)}</p>")
    if evaluation.regression is not None:
        regressed = summary_lines.regressed_count(evaluation.regressed_rows, evaluation.regression.examples)
        parts.append(f"<h3>Regression set ({evaluation.regression.examples} of the champion's test rows)</h3>\n"
                     f"<p>{escape(regressed)}.</p>")
        parts.append(_comparison_table(evaluation.regression, evaluation.primary_metric, "regression"))
    if evaluation.general is not None:
        parts.append(f"<h3>General set ({evaluation.general.examples} examples)</h3>")
        parts.append(_comparison_table(evaluation.general, None, "general"))
    return "\n".join(parts)


def _gate(report: RunReport) -> str:
    if report.gate is None:
        return ""
    checks = "\n".join(
        f"<li class=\"check-{'passed' if line.passed else 'failed'}{' deciding' if line.deciding else ''}\""
        + (" id=\"deciding\"><span class=\"tag\">deciding</span>" if line.deciding else ">")
        + f"{escape(line.text)}</li>" for line in summary_lines.gate_lines(report.gate))
    warnings = "\n".join(f"<p class=\"warning\">Warning: {escape(warning)}</p>" for warning in report.gate.warnings)
    return (f"<h2>Gate</h2>\n<p>{escape(report.gate.message)}</p>\n<p class=\"note\">Each check: the estimate "
            f"[confidence interval] vs its threshold, the test, its one-sided p (Holm-adjusted across the checks) "
            f"and the smallest effect detectable at this n with 80% power.</p>\n<ul class=\"checks\">\n{checks}\n</ul>" + (f"\n{warnings}" if warnings else ""))


def _cost(report: RunReport) -> str:
    """What the run cost: the status's cost block and queue, the stages as a table."""
    facts = summary_lines.cost_facts(report.cost, report.queue, report.phase)
    if not facts:
        return ""
    items = "\n".join(f"<dt>{escape(label)}</dt><dd>{escape(text)}</dd>" for label, text in facts)
    parts = [f"<h2>Cost</h2>\n<dl id=\"cost\">\n{items}\n</dl>"]
    if report.cost is not None and report.cost.stages:
        header, *rows = summary_lines.stage_cost_table(report.cost)
        numeric = ' class="num"'
        cells = "\n".join("<tr>" + "".join(f"<td{numeric if column else ''}>{escape(cell)}</td>"
                                           for column, cell in enumerate(row)) + "</tr>" for row in rows)
        parts.append("<table id=\"cost-stages\">\n<tr>" + "".join(f"<th>{escape(name)}</th>" for name in header)
                     + f"</tr>\n{cells}\n</table>")
        parts.append("<p class=\"note\">Held: the stage's GPUs x the time its Job ran. Used: its GPUs x the "
                     "time the workload itself computed; the rest went to pods starting, loading and "
                     "interrupted attempts.</p>")
    return "\n".join(parts)


def _regressed(report: RunReport) -> str:
    evaluation = report.evaluation
    count = evaluation.regressed_rows if evaluation else None
    if not report.regressed and not count:
        return ""
    heading = (f"<h2>What regressed</h2>\n<p class=\"note\">Rows of the regression set (the champion's test rows) "
               f"{summary_lines.LOST_ROWS}: {max(count or 0, len(report.regressed))}"
               f".</p>")
    if not report.regressed:
        return heading + "\n<p class=\"note\">The evaluation records, which list them, could not be read here.</p>"
    rows = "\n".join(f"<tr><td class=\"num\">{number}</td>" + "".join(
        f"<td><pre>{escape(text) or '(empty)'}</pre></td>" for text in (row.prompt, row.reference, row.base, row.tuned))
        + "</tr>" for number, row in enumerate(report.regressed, start=1))
    return (heading + "\n<table class=\"regressed\" id=\"regressed\">\n<tr><th>#</th><th>prompt</th><th>reference</th>"
            f"<th>champion</th><th>candidate</th></tr>\n{rows}\n</table>")


def _answer(label: str, text: str, scores: dict[str, float], exact: bool | None) -> str:
    mark = " <span class=\"exact\">&#10003; exact match</span>" if exact else ""
    score_line = ", ".join(f"{escape(metric)} {value:.2f}" for metric, value in scores.items())
    return (f"<div><strong>{label}</strong>{mark}<pre>{escape(text) or '(empty)'}</pre>"
            + (f"<div class=\"scores\">{score_line}</div>" if score_line else "") + "</div>")


def _example(number: int, row: ExampleRow) -> str:
    return (f"<div class=\"example\"><div><strong>Example {number}</strong></div>"
            f"<pre>{escape(row.prompt)}</pre>\n<div class=\"answers\">"
            + _answer("expected", row.reference, {}, None)
            + _answer("base", row.base, row.base_scores, row.exact("base"))
            + _answer("tuned", row.tuned, row.tuned_scores, row.exact("tuned"))
            + "</div></div>")


def _examples(report: RunReport) -> str:
    if not report.examples:
        return ""
    total = max(report.examples_total, len(report.examples))
    shown = f"the first {len(report.examples)} of {total}" if total > len(report.examples) else f"all {total}"
    rows = "\n".join(_example(number, row) for number, row in enumerate(report.examples, start=1))
    return f"<h2>Base vs tuned</h2>\n<p class=\"note\">Test examples, {shown}.</p>\n{rows}"
