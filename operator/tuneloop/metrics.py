"""Prometheus metrics of the operator (served on --metrics-port)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

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

_phases: dict[str, tuple[str, float]] = {}


def record_phase(uid: str, phase: str) -> None:
    """Keep the by-phase gauge and the time-in-phase histogram up to date for one job."""
    previous = _phases.get(uid)
    if previous is not None and previous[0] == phase:
        return
    now = time.monotonic()
    if previous is not None:
        JOBS_BY_PHASE.labels(phase=previous[0]).dec()
        SECONDS_IN_PHASE.labels(phase=previous[0]).observe(now - previous[1])
    JOBS_BY_PHASE.labels(phase=phase).inc()
    PHASE_CHANGES.labels(phase=phase).inc()
    _phases[uid] = (phase, now)


def forget(uid: str) -> None:
    previous = _phases.pop(uid, None)
    if previous is not None:
        JOBS_BY_PHASE.labels(phase=previous[0]).dec()


_since: dict[tuple[str, str, str], str] = {}


def phase_entered(kind: str, namespace: str, name: str, phase: str, settled: bool) -> None:
    """Time a resource's phase from when this operator first sees it; a settled phase (one that
    may last for ever: Succeeded, Healthy, Active, ...) is not timed."""
    key = (kind, namespace, name)
    previous = _since.get(key)
    if previous == phase:
        return
    if previous is not None:
        PHASE_SINCE.remove(kind, namespace, name, previous)
        del _since[key]
    if not settled:
        PHASE_SINCE.labels(kind=kind, namespace=namespace, name=name, phase=phase).set(time.time())
        _since[key] = phase


def phase_forgotten(kind: str, namespace: str, name: str) -> None:
    phase = _since.pop((kind, namespace, name), None)
    if phase is not None:
        PHASE_SINCE.remove(kind, namespace, name, phase)


def rollouts_ended(namespace: str, name: str, before: list[Any], after: list[Any]) -> None:
    """Count the rollout records a pass added to a ModelDeployment's history."""
    for record in after:
        if record not in before:
            ROLLOUTS.labels(namespace=namespace, modeldeployment=name, outcome=record.outcome).inc()
