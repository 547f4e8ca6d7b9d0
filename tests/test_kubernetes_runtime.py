"""How the Kubernetes runtime reads Jobs and pods: results from termination messages, and the
reasons a person needs when a pod cannot run or dies."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from test_registry import mlflow_server, server_url  # noqa: F401  (fixtures: a real `mlflow server`)
from tuneloop.runtime.finetunejob import pod_problem, result_from_pods


def pod(name: str, created: str = "2026-11-23T10:00:00Z", **status) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def terminated(**state) -> list[dict]:
    return [{"name": "trainer", "state": {"terminated": state}}]


def test_the_newest_pod_with_a_result_wins():
    old = pod("a", "2026-11-23T10:00:00Z", containerStatuses=terminated(exitCode=143, message=json.dumps(
        {"succeeded": False, "reason": "Preempted"})))
    new = pod("b", "2026-11-23T11:00:00Z", containerStatuses=terminated(exitCode=0, reason="Completed",
                                                                        message=json.dumps({"succeeded": True})))
    assert result_from_pods([old, new]) == {"succeeded": True}
    assert result_from_pods([pod("c", containerStatuses=terminated(exitCode=1, message="Traceback ..."))]) is None


def test_the_pod_that_completed_the_job_wins_over_a_preempted_one_of_the_same_second():
    """A real Job controller can replace a preempted pod within the second it failed in."""
    same_second = "2026-11-23T10:00:00Z"
    preempted = pod("a", same_second, containerStatuses=terminated(exitCode=143, message=json.dumps(
        {"succeeded": False, "reason": "Preempted"})))
    replacement = pod("b", same_second, containerStatuses=terminated(exitCode=0, reason="Completed",
                                                                     message=json.dumps({"succeeded": True})))
    assert result_from_pods([replacement, preempted]) == {"succeeded": True}
    assert result_from_pods([preempted, replacement]) == {"succeeded": True}


def test_oom_kill_is_named():
    dead = pod("t-abc", containerStatuses=terminated(exitCode=137, reason="OOMKilled"))
    assert pod_problem([dead]) == "pod t-abc: OOMKilled (exit code 137)"


def test_image_pull_errors_are_named():
    waiting = pod("t-abc", containerStatuses=[{"name": "trainer", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.local/trainer:0.1.0"'}}}])
    assert pod_problem([waiting]).startswith("pod t-abc: ImagePullBackOff: Back-off pulling image")


def test_missing_gpus_are_named():
    pending = pod("t-abc", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}])
    assert pod_problem([pending]) == ("pod t-abc: Unschedulable: 0/4 nodes are available: "
                                      "4 Insufficient nvidia.com/gpu.")


def test_a_healthy_pod_has_no_problem():
    running = pod("t-abc", containerStatuses=[{"name": "trainer", "state": {"running": {}}}],
                  conditions=[{"type": "PodScheduled", "status": "True"}])
    assert pod_problem([running]) == ""


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request, tmp_path):
    """A SQLite store (MlflowClient path) and a real `mlflow server` (the REST path a cluster uses)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return request.getfixturevalue("mlflow_server")


def test_live_progress_comes_from_the_trainers_mlflow_run(tracking_uri):
    import mlflow
    from mlflow.entities import Metric, Param

    from tuneloop.registry.progress import mlflow_progress

    name = f"ml/support-bot-{uuid.uuid4().hex[:6]}"
    assert asyncio.run(mlflow_progress(tracking_uri, "progress-test", name)) is None  # nothing logged yet
    client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("progress-test")
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment("progress-test"),
                            run_name=name)
    assert asyncio.run(mlflow_progress(tracking_uri, "progress-test", name))["stage"] == "preparing-data"
    client.log_batch(run.info.run_id, params=[Param("total_steps", "100")], metrics=[
        Metric("loss/train", loss, 0, step) for step, loss in ((1, 2.0), (2, 1.5), (25, 0.7))
    ] + [Metric("train/tokens_per_second", 900.0, 0, 25), Metric("train/epoch", 0.75, 0, 25)])

    progress = asyncio.run(mlflow_progress(tracking_uri, "progress-test", name))

    assert progress["stage"] == "training" and progress["step"] == 25 and progress["totalSteps"] == 100
    assert progress["loss"] == 0.7 and progress["tokensPerSecond"] == 900.0
    assert progress["etaSeconds"] is not None and progress["etaSeconds"] >= 0


def test_an_unreachable_mlflow_gives_no_progress_and_is_not_asked_again_for_a_while(monkeypatch):
    from tuneloop.api.finetunejob import parse_manifest
    from tuneloop.config import OperatorConfig
    from tuneloop.registry import progress
    from tuneloop.runtime.finetunejob import FineTuneJobRuntime

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    calls = []

    async def counted(*args, **options):
        calls.append(args)
        return await progress.mlflow_progress(*args, **options)

    monkeypatch.setattr("tuneloop.runtime.finetunejob.mlflow_progress", counted)
    runtime = FineTuneJobRuntime(client=None, config=OperatorConfig(mlflow_tracking_uri="http://127.0.0.1:9"))
    job = parse_manifest({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
                          "spec": {"baseModel": {"name": "m"}, "dataset": {"uri": "pvc://d/t.jsonl"}}})

    assert asyncio.run(runtime.progress(job)) is None
    assert asyncio.run(runtime.progress(job)) is None
    assert len(calls) == 1  # the second job's reconcile did not wait for a dead server


def test_a_failed_input_fetch_names_the_init_container_and_its_message():
    failing = pod("p", "2026-11-23T10:00:00Z", initContainerStatuses=[{"name": "fetch-dataset", "state": {
        "terminated": {"exitCode": 1, "reason": "Error",
                       "message": "s3://datasets/tickets.jsonl: no such object (NoSuchKey)\n"}}}])
    assert pod_problem([failing]) == ("pod p: init container fetch-dataset failed (exit code 1): "
                                      "s3://datasets/tickets.jsonl: no such object (NoSuchKey)")
