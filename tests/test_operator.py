"""The operator, run for real (kopf) against the hardened API emulator: tests play the Job
controller and the kubelet by writing Job and Pod status."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from k8s_emulator import handlers_registry, running_emulator

REPO = Path(__file__).resolve().parents[1]
CRDS = list(yaml.safe_load_all((REPO / "crds" / "tuneloop.dev_crds.yaml").read_text()))
EXAMPLE = yaml.safe_load((REPO / "examples" / "cluster" / "finetunejob.yaml").read_text())
FTJ = ("tuneloop.dev/v1alpha1", "FineTuneJob")
JOB = ("batch/v1", "Job")
CONFIGMAP = ("v1", "ConfigMap")
POD = ("v1", "Pod")
WORKLOAD = "acme-tickets-train"


@pytest.fixture
def operator_env(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"catalog": {"smollm2-135m-instruct": "pvc://models/smollm2-135m-instruct"}}))
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
    monkeypatch.setenv("TUNELOOP_RECONCILE_INTERVAL", "0.5")
    return tmp_path


async def run_operator(harness, body, *, kubeconfig_dir: Path):
    os.environ["KUBECONFIG"] = str(harness.write_kubeconfig(kubeconfig_dir / "kubeconfig"))
    async with harness.kopf_operator(handlers_registry("tuneloop.handlers")):
        await body()


def terminated_pod(harness, name: str, terminated: dict) -> None:
    """Play the kubelet: a trainer pod of the workload that ended as `terminated` says."""
    harness.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": "default", "labels": {"tuneloop.dev/workload": WORKLOAD, "job-name": WORKLOAD}},
        "spec": {"containers": [{"name": "trainer", "image": "trainer"}]}})
    harness.patch_status(POD, "default", name, {
        "phase": "Succeeded" if terminated["exitCode"] == 0 else "Failed",
        "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0, "image": "trainer",
                               "imageID": "", "state": {"terminated": terminated}}]})


def finish_job(harness, result: dict) -> None:
    """Play the kubelet and the Job controller: the trainer wrote its result and the Job completed."""
    terminated_pod(harness, f"{WORKLOAD}-x1", {"exitCode": 0, "reason": "Completed", "message": json.dumps(result)})
    harness.patch_status(JOB, "default", WORKLOAD, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-23T10:00:00Z"}]})


async def job_in_phase(harness, phase: str) -> dict:
    """Wait until the example FineTuneJob reaches `phase`; return it."""
    def current():
        ftj = harness.get(FTJ, "default", "acme-tickets") or {}
        return ftj if ftj.get("status", {}).get("phase") == phase else None
    return await harness.wait_for(current)


RESULT = {"succeeded": True, "steps": 68, "holdOutLossBefore": 4.08, "holdOutLossAfter": 0.05, "trainLoss": 0.05,
          "tokensPerSecond": 5000.0, "seconds": 60.0, "adapterPath": "/mnt/pvc/adapters/acme-tickets/adapter",
          "holdOutPath": "/mnt/pvc/adapters/acme-tickets/hold-out.jsonl",
          "dataset": {"rows": 300, "trainRows": 270, "holdOutRows": 30, "trainTokens": 27894,
                      "format": "alpaca", "sha256": "ab" * 32}}


def test_applying_the_example_creates_one_configmap_and_one_job_and_success_flows_back(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                job = await harness.wait_for(lambda: harness.get(JOB, "default", WORKLOAD))
                ftj = await job_in_phase(harness, "Training")
                assert ftj["status"]["conditions"][0]["type"] == "SpecValid"
                kubernetes_validate.validate(job, "1.33.0", strict=True)
                configmap = harness.get(CONFIGMAP, "default", WORKLOAD)
                kubernetes_validate.validate(configmap, "1.33.0", strict=True)
                assert json.loads(configmap["data"]["workload.json"])["modelPath"] == "/mnt/pvc/models/smollm2-135m-instruct"
                assert job["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]

                finish_job(harness, RESULT)
                done = await job_in_phase(harness, "Succeeded")
                assert done["status"]["training"]["adapterUri"] == "pvc://adapters/acme-tickets/adapter"
                assert done["status"]["training"]["holdOutLossAfter"] == 0.05
                await asyncio.sleep(1.5)  # a few more timer periods: nothing more may happen

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert len(harness.list_objects(JOB, include_deleted=True)) == 1
            assert len(harness.list_objects(CONFIGMAP, "default", include_deleted=True,
                                            label_selector="app.kubernetes.io/managed-by=tuneloop")) == 1
            assert None not in harness.history(JOB, "default", WORKLOAD)  # never deleted and re-created
            reasons = {e.get("reason") for e in harness.list_objects(("v1", "Event"), "default")}
            assert {"TrainingStarted", "Trained", "Succeeded"} <= reasons

    asyncio.run(scenario())


def test_a_spec_the_cluster_cannot_run_fails_with_invalid_spec_and_launches_nothing(operator_env):
    manifest = json.loads(json.dumps(EXAMPLE))
    manifest["spec"]["baseModel"] = {"name": "llama-70b"}

    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(manifest)
                failed = await job_in_phase(harness, "Failed")
                condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
                assert condition["reason"] == "InvalidSpec"
                assert "spec.baseModel.name: 'llama-70b' is not in the model catalog" in condition["message"]
                await asyncio.sleep(1.0)

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert harness.list_objects(JOB, include_deleted=True) == []

    asyncio.run(scenario())


def test_a_pod_killed_for_memory_fails_the_job_with_that_reason(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                await harness.wait_for(lambda: harness.get(JOB, "default", WORKLOAD))
                terminated_pod(harness, f"{WORKLOAD}-oom", {"exitCode": 137, "reason": "OOMKilled"})
                harness.patch_status(JOB, "default", WORKLOAD, {"failed": 4, "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                     "message": "Job has reached the specified backoff limit",
                     "lastTransitionTime": "2026-11-23T10:00:00Z"}]})
                failed = await job_in_phase(harness, "Failed")
                assert "OOMKilled (exit code 137)" in failed["status"]["message"]
                assert "BackoffLimitExceeded" in failed["status"]["message"]

            await run_operator(harness, body, kubeconfig_dir=operator_env)

    asyncio.run(scenario())


def test_an_operator_restarted_mid_training_creates_nothing_twice(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def first():
                harness.create(EXAMPLE)
                await harness.wait_for(lambda: harness.get(JOB, "default", WORKLOAD))

            async def second():
                await asyncio.sleep(1.5)  # resume handlers and timers run against the existing objects
                finish_job(harness, RESULT)
                await job_in_phase(harness, "Succeeded")

            await run_operator(harness, first, kubeconfig_dir=operator_env)
            await run_operator(harness, second, kubeconfig_dir=operator_env)
            assert len(harness.list_objects(JOB, include_deleted=True)) == 1
            assert len(harness.list_objects(CONFIGMAP, "default", include_deleted=True,
                                            label_selector="app.kubernetes.io/managed-by=tuneloop")) == 1

    asyncio.run(scenario())


def test_deleting_a_finetunejob_removes_what_it_owns(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                await harness.wait_for(lambda: harness.get(JOB, "default", WORKLOAD))
                harness.delete(FTJ, "default", "acme-tickets")
                await harness.wait_for(lambda: harness.get(FTJ, "default", "acme-tickets") is None)

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert harness.get(JOB, "default", WORKLOAD) is None
            assert harness.get(CONFIGMAP, "default", WORKLOAD) is None

    asyncio.run(scenario())

