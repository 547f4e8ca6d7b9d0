"""Which baseline the candidate meets: the base model, or the registered model's `champion` version
(looked up and downloaded through tuneloop.registry); and the champion the regression set always meets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tuneloop.api.workloads import EvaluatorWorkload
from tuneloop.registry.artifacts import download_version
from tuneloop.registry.champion import CHAMPION_ALIAS, ChampionUnavailable, champion_version

log = logging.getLogger("tuneloop_evaluator")
__all__ = ["Baseline", "ChampionUnavailable", "regression_champion", "resolve_baseline"]


@dataclass
class Baseline:
    kind: str  # "base" or "champion"
    version: str | None = None
    folder: Path | None = None  # the champion's adapter (or model) folder


def _download(workload: EvaluatorWorkload, version: str, source: str) -> Path:
    try:
        return download_version(workload.tracking.tracking_uri, source, Path(workload.output_dir) / "champion")
    except Exception as error:
        raise ChampionUnavailable(f"{workload.registered_model} version {version}: artifacts at {source} "
                                  f"could not be downloaded: {error}") from None


def _champion(workload: EvaluatorWorkload) -> Baseline | None:
    """The registered model's champion, downloaded; None when there is none (or nothing to look it up in)."""
    if workload.tracking is None or not workload.registered_model:
        return None
    found = champion_version(workload.tracking.tracking_uri, workload.registered_model)
    if found is None:
        return None
    version, source = found
    folder = _download(workload, version, source)
    log.info("%s version %s (%s) from %s", workload.registered_model, version, CHAMPION_ALIAS, source)
    return Baseline("champion", version=version, folder=folder)


def resolve_baseline(workload: EvaluatorWorkload) -> Baseline:
    """base: the base model. champion: the champion or ChampionUnavailable. auto: champion if there is one.

    An MLflow that cannot be asked is an error for auto too: falling back to the base model would
    let a candidate worse than the champion pass the gate.
    """
    wanted = workload.evaluation.baseline
    if wanted == "base":
        return Baseline("base")
    if wanted == "champion" and (workload.tracking is None or not workload.registered_model):
        raise ChampionUnavailable("evaluation.baseline is champion, but the workload has no tracking URI "
                                  "and registered model to look it up in")
    champion = _champion(workload)
    if champion is not None:
        return champion
    if wanted == "champion":
        raise ChampionUnavailable(f"registered model {workload.registered_model!r} has no {CHAMPION_ALIAS} "
                                  f"alias at {workload.tracking.tracking_uri}")
    log.info("no %s for %s yet: the baseline is the base model", CHAMPION_ALIAS, workload.registered_model)
    return Baseline("base")


def regression_champion(workload: EvaluatorWorkload, baseline: Baseline) -> Baseline | None:
    """The champion the regression set compares the candidate with, whatever evaluation.baseline says: the
    guardrail protects what the champion could do, so `baseline: base` must not turn it off. None when the
    regression set is off or there is no champion; an MLflow that cannot be asked is ChampionUnavailable."""
    if not workload.evaluation.regression_set.enabled:
        return None
    if baseline.kind == "champion":
        return baseline
    return _champion(workload)
