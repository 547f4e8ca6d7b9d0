"""The loss chart: train and validation loss over optimizer steps, as inline SVG (matplotlib, Agg)."""

from __future__ import annotations

import io
import re

from tuneloop.report.model import LossSeries

TRAIN_ID, VALIDATION_ID = "loss-train", "loss-validation"


def loss_chart_svg(loss: LossSeries) -> str | None:
    """An <svg> element to put straight into HTML; None when there is no point to draw."""
    if not loss.train and not loss.validation:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 10, "svg.hashsalt": "tuneloop"}):
        figure = Figure(figsize=(8, 3.4), layout="constrained")
        axes = figure.subplots()
        if loss.train:
            steps, values = zip(*loss.train)
            (line,) = axes.plot(steps, values, color="#2563eb", linewidth=1.4, label="train")
            line.set_gid(TRAIN_ID)
        if loss.validation:
            steps, values = zip(*loss.validation)
            (line,) = axes.plot(steps, values, color="#ea580c", linewidth=1.2, linestyle="--", marker="o",
                                markersize=4, label="validation")
            line.set_gid(VALIDATION_ID)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("loss")
        if _spans_decades(loss):
            axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
        axes.legend(frameon=False)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return _inline(buffer.getvalue())


def _spans_decades(loss: LossSeries) -> bool:
    values = [value for _, value in loss.train + loss.validation]
    return min(values) > 0 and max(values) / min(values) >= 20


def _inline(svg: str) -> str:
    """The <svg> element alone: no XML prolog or DOCTYPE, and no namespace URLs (HTML needs none)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
