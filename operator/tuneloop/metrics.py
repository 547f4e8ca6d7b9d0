"""Prometheus metrics of the operator (served on --metrics-port)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram("tuneloop_reconcile_duration_seconds", "Time one FineTuneJob reconcile took.")
RECONCILE_ERRORS = Counter("tuneloop_reconcile_errors_total", "Reconciles that raised an error (kopf retries them).")
PHASE_CHANGES = Counter("tuneloop_finetunejob_phase_changes_total", "FineTuneJobs entering a phase.", ["phase"])
JOBS_BY_PHASE = Gauge("tuneloop_finetunejobs", "FineTuneJobs this operator knows, by phase.", ["phase"])
SECONDS_IN_PHASE = Histogram("tuneloop_finetunejob_phase_seconds", "Time FineTuneJobs spent in a phase.", ["phase"],
                             buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600, float("inf")))

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
