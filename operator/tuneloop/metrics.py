"""Prometheus metrics of the operator (served on --metrics-port)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from tuneloop.api.finetunejob import KIND as FINETUNEJOB

RECONCILE_SECONDS = Histogram("tuneloop_reconcile_duration_seconds", "Time one FineTuneJob reconcile took.")
RECONCILE_ERRORS = Counter("tuneloop_reconcile_errors_total", "Reconciles that raised an error (kopf retries them).")
PHASE_CHANGES = Counter("tuneloop_finetunejob_phase_changes_total", "FineTuneJobs entering a phase.", ["phase"])
JOBS_BY_PHASE = Gauge("tuneloop_finetunejobs", "FineTuneJobs this operator knows, by phase.", ["phase"])
SECONDS_IN_PHASE = Histogram("tuneloop_finetunejob_phase_seconds", "Time FineTuneJobs spent in a phase.", ["phase"],
                             buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600, float("inf")))
ROLLOUTS = Counter("tuneloop_rollouts_total",
                   "ModelDeployment rollouts that ended, by outcome (Promoted, Failed, Aborted, Superseded, "
                   "RolledBack).", ["namespace", "modeldeployment", "outcome"])
PHASE_SINCE = Gauge("tuneloop_phase_since_timestamp_seconds",
                    "When a resource entered the phase it is in (Unix time); only phases that should end.",
                    ["kind", "namespace", "name", "phase"])

# FineTuneJobs (FINETUNEJOB) have by-phase counts and time-in-phase histograms of their own.


@dataclass(frozen=True)
class _Phase:
    name: str
    entered: float  # time.monotonic()
    timed: bool     # has a tuneloop_phase_since_timestamp_seconds series


_phases: dict[tuple[str, str, str], _Phase] = {}


def record_phase(kind: str, namespace: str, name: str, phase: str, settled: bool) -> None:
    """Keep one resource's phase series up to date. Every phase that should end (not `settled`:
    Succeeded, Healthy, ...) is timed from when this operator first sees it, for the stuck-phase
    alert; FineTuneJobs are also counted by phase and their time in each phase observed."""
    key = (kind, namespace, name)
    previous = _phases.get(key)
    if previous is not None and previous.name == phase:
        return
    if previous is not None:
        _leave(kind, namespace, name, previous)
    if kind == FINETUNEJOB:
        JOBS_BY_PHASE.labels(phase=phase).inc()
        PHASE_CHANGES.labels(phase=phase).inc()
    if not settled:
        PHASE_SINCE.labels(kind=kind, namespace=namespace, name=name, phase=phase).set(time.time())
    _phases[key] = _Phase(phase, time.monotonic(), timed=not settled)


def forget(kind: str, namespace: str, name: str) -> None:
    """A deleted resource: its series go (the counters and histograms keep what they counted)."""
    previous = _phases.pop((kind, namespace, name), None)
    if previous is not None:
        _leave(kind, namespace, name, previous, observe=False)


def _leave(kind: str, namespace: str, name: str, previous: _Phase, observe: bool = True) -> None:
    if kind == FINETUNEJOB:
        JOBS_BY_PHASE.labels(phase=previous.name).dec()
        if observe:
            SECONDS_IN_PHASE.labels(phase=previous.name).observe(time.monotonic() - previous.entered)
    if previous.timed:
        PHASE_SINCE.remove(kind, namespace, name, previous.name)


def rollouts_ended(namespace: str, name: str, before: list[Any], after: list[Any]) -> None:
    """Count the rollout records a pass added to a ModelDeployment's history."""
    for record in after:
        if record not in before:
            ROLLOUTS.labels(namespace=namespace, modeldeployment=name, outcome=record.outcome).inc()
