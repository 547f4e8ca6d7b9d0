"""The run report: one self-contained HTML page per FineTuneJob run (loss, metrics, gate, examples).

`tuneloop.registry.run_report.collect` builds a `RunReport`; this package only renders it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tuneloop.report.html import render_html
from tuneloop.report.model import (
    EvaluationSummary,
    ExampleRow,
    Lineage,
    LossSeries,
    RunReport,
)

REPORT_FILE = "report.html"

__all__ = ["EvaluationSummary", "ExampleRow", "Lineage", "LossSeries", "REPORT_FILE", "RunReport",
           "render_html", "write_report"]


def write_report(report: RunReport, folder: Path) -> Path:
    """Write `folder/report.html` (whole or not at all) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    partial = folder / f".{REPORT_FILE}.partial"
    partial.write_text(render_html(report), encoding="utf-8")
    os.replace(partial, path)
    return path
