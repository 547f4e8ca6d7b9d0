"""The operator's metrics the chart's alerts read: time in a phase that should end, FineTuneJobs by
phase, rollouts by outcome."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from tuneloop import metrics
from tuneloop.api.modeldeployment import RolloutRecord


def since(kind, name, phase):
    return REGISTRY.get_sample_value("tuneloop_phase_since_timestamp_seconds",
                                     {"kind": kind, "namespace": "ml", "name": name, "phase": phase})


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0


def test_a_phase_is_timed_from_when_it_is_entered_until_it_ends_or_settles():
    before = time.time()
    metrics.record_phase("FineTuneJob", "ml", "ftj-metrics", "Training", settled=False)
    entered = since("FineTuneJob", "ftj-metrics", "Training")
    assert before <= entered <= time.time()
    metrics.record_phase("FineTuneJob", "ml", "ftj-metrics", "Training", settled=False)
    assert since("FineTuneJob", "ftj-metrics", "Training") == entered      # the same phase: the clock runs on
    metrics.record_phase("FineTuneJob", "ml", "ftj-metrics", "Evaluating", settled=False)
    assert since("FineTuneJob", "ftj-metrics", "Training") is None
    assert since("FineTuneJob", "ftj-metrics", "Evaluating") is not None
    metrics.record_phase("FineTuneJob", "ml", "ftj-metrics", "Succeeded", settled=True)
    assert since("FineTuneJob", "ftj-metrics", "Evaluating") is None
    assert since("FineTuneJob", "ftj-metrics", "Succeeded") is None


def test_finetunejobs_are_counted_by_phase_and_their_time_in_each_phase_observed():
    training = sample("tuneloop_finetunejobs", phase="Training")
    observed = sample("tuneloop_finetunejob_phase_seconds_count", phase="Training")
    metrics.record_phase("FineTuneJob", "ml", "ftj-count", "Training", settled=False)
    assert sample("tuneloop_finetunejobs", phase="Training") == training + 1
    metrics.record_phase("FineTuneJob", "ml", "ftj-count", "Failed", settled=True)
    assert sample("tuneloop_finetunejobs", phase="Training") == training
    assert sample("tuneloop_finetunejob_phase_seconds_count", phase="Training") == observed + 1
    failed = sample("tuneloop_finetunejobs", phase="Failed")
    metrics.forget("FineTuneJob", "ml", "ftj-count")
    assert sample("tuneloop_finetunejobs", phase="Failed") == failed - 1
    # other kinds are timed, not counted by phase
    metrics.record_phase("ModelDeployment", "ml", "md-count", "Training", settled=False)
    assert sample("tuneloop_finetunejobs", phase="Training") == training
    metrics.forget("ModelDeployment", "ml", "md-count")


def test_a_deleted_resource_leaves_no_series():
    metrics.record_phase("ModelDeployment", "ml", "md-metrics", "Progressing", settled=False)
    metrics.forget("ModelDeployment", "ml", "md-metrics")
    assert since("ModelDeployment", "md-metrics", "Progressing") is None
    metrics.forget("ModelDeployment", "ml", "md-metrics")   # twice is harmless


def test_only_the_records_a_pass_added_are_counted():
    def count(outcome):
        return sample("tuneloop_rollouts_total", namespace="ml", modeldeployment="md-count", outcome=outcome)
    old = RolloutRecord(revision="a1", outcome="Promoted", reason="analysis passed", time="2026-11-23T10:00:00Z")
    aborted = RolloutRecord(revision="b2", outcome="Aborted", reason="aborted by kubectl annotate",
                            time="2026-11-23T11:00:00Z")
    metrics.rollouts_ended("ml", "md-count", [old], [old, aborted])
    metrics.rollouts_ended("ml", "md-count", [old, aborted], [old, aborted])
    assert count("Aborted") == 1 and count("Promoted") == 0
