"""The operator with Kueue and spec.suspend, run for real (kopf) against the hardened API emulator.

There is no Kueue controller here, so the tests play it as Kueue's job integration behaves
(kueue pkg/controller/jobframework/reconciler.go): it keeps a Workload object for each queued Job
(label kueue.x-k8s.io/job-uid) with its reason in the conditions, admits a Job by setting
spec.suspend false, and preempts it by recording an Evicted condition and suspending the Job again,
which the Job controller answers by deleting the Job's pods and adding condition Suspended.
The real API server tier (test_real_apiserver.py) covers what Kubernetes 1.20 can do: suspend by
the user, and refusing a queue on a server that drops Job suspension.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import datetime, timezone

import pytest
import yaml

from k8s_emulator import running_emulator
from test_operator import (CONFIGMAP, CRDS, EVALUATED, EXAMPLE, FTJ, JOB, POD, REGISTERED, RESULT, finish_job,
                           run_operator)
from stage_results import DATA_CHECKED

from tuneloop.api.common import rfc3339

WORKLOAD_API = ("kueue.x-k8s.io/v1beta1", "Workload")
KUEUE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "workloads.kueue.x-k8s.io"},
    "spec": {"group": "kueue.x-k8s.io", "scope": "Namespaced",
             "names": {"kind": "Workload", "plural": "workloads", "singular": "workload", "listKind": "WorkloadList"},
             "versions": [{"name": "v1beta1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]}}
QUEUE = "team-a-gpus"


@pytest.fixture
def operator_env(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "catalog": {"smollm2-135m-instruct": "pvc://models/smollm2-135m-instruct"},
        "mlflowTrackingUri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "queueing": {"namespaces": {"default": QUEUE}},  # the namespace's default queue: the manifest names none
        "costPerGpuHour": 4.0, "costCurrency": "EUR"}))
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
    monkeypatch.setenv("TUNELOOP_RECONCILE_INTERVAL", "0.5")
    return tmp_path


def now() -> str:
    return rfc3339(datetime.now(timezone.utc))


def ftj(harness) -> dict:
    return harness.get(FTJ, "default", "acme-tickets") or {}


async def in_phase(harness, phase: str, timeout: float = 20) -> dict:
    return await harness.wait_for(lambda: ftj(harness) if ftj(harness).get("status", {}).get("phase") == phase
                                  else None, timeout=timeout)


async def queued_for(harness, reason: str) -> dict:
    """The FineTuneJob once it shows Queued with Kueue's reason."""
    def current():
        status = ftj(harness).get("status", {})
        return ftj(harness) if status.get("phase") == "Queued" and (status.get("queue") or {}).get("reason") == reason \
            else None
    return await harness.wait_for(current, timeout=20)


async def queued_job(harness, name: str, reason: str = "Pending", message: str = "") -> dict:
    """Kueue sees a new Job: it makes its Workload, not admitted yet, saying why."""
    job = await harness.wait_for(lambda: harness.get(JOB, "default", name), timeout=20)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    workload = f"job-{name}-{job['metadata']['uid'][:5]}"
    harness.create({"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload", "metadata": {
        "name": workload, "namespace": "default", "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"],
                             "controller": True}]}, "spec": {"queueName": QUEUE, "active": True}})
    harness.patch_status(WORKLOAD_API, "default", workload, {"conditions": [
        {"type": "QuotaReserved", "status": "False", "reason": reason, "message": message,
         "lastTransitionTime": now()}]})
    return job


def admit(harness, name: str) -> None:
    """Kueue admits: the Job is unsuspended; the Job controller stamps its start time."""
    harness.patch(JOB, "default", name, {"spec": {"suspend": False}})
    harness.patch_status(JOB, "default", name, {"startTime": now(), "active": 1, "conditions": [
        {"type": "Suspended", "status": "False", "reason": "JobResumed", "lastTransitionTime": now()}]})


def preempt(harness, name: str) -> None:
    """Kueue evicts the Workload and suspends the Job; the Job controller deletes its pods."""
    job = harness.get(JOB, "default", name)
    workload = next(w for w in harness.list_objects(WORKLOAD_API, "default")
                    if w["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == job["metadata"]["uid"])
    harness.patch_status(WORKLOAD_API, "default", workload["metadata"]["name"], {"conditions": [
        {"type": "Evicted", "status": "True", "reason": "Preempted",
         "message": "Preempted to accommodate a higher priority Workload", "lastTransitionTime": now()},
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "lastTransitionTime": now()}]})
    harness.patch(JOB, "default", name, {"spec": {"suspend": True}})
    harness.patch_status(JOB, "default", name, {"active": 0, "conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": now()}]})
    for pod in harness.list_objects(POD, "default", label_selector=f"tuneloop.dev/workload={name}"):
        harness.delete(POD, "default", pod["metadata"]["name"])


def created_once(harness, name: str) -> bool:
    """Never deleted and made again: one life in the object's history."""
    history = harness.history(JOB, "default", name)
    return bool(history) and None not in history


def test_queued_admitted_preempted_and_readmitted_stages_run_once_each_and_their_cost_adds_up(operator_env):
    async def scenario():
        async with running_emulator([*CRDS, KUEUE_CRD]) as harness:
            async def body():
                manifest = copy.deepcopy(EXAMPLE)
                manifest["spec"]["resources"].update(gpus=2, workloadPriorityClassName="batch-low")
                harness.create(manifest)

                check = await queued_job(harness, "acme-tickets-validate", "Inadmissible",
                                         "LocalQueue team-a-gpus doesn't exist")
                assert "kueue.x-k8s.io/priority-class" in check["metadata"]["labels"]
                waiting = await queued_for(harness, "Inadmissible")
                assert waiting["status"]["stage"] == "validate"
                assert "LocalQueue team-a-gpus doesn't exist" in waiting["status"]["message"]
                await asyncio.sleep(1.1)
                admit(harness, "acme-tickets-validate")
                await in_phase(harness, "Validating")
                finish_job(harness, DATA_CHECKED, "acme-tickets-validate")

                train = await queued_job(harness, "acme-tickets-train", "Pending",
                                         "couldn't assign flavors to pod set main: insufficient unused quota for "
                                         "nvidia.com/gpu in flavor h100, 2 more needed")
                spec = train["spec"]
                assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 300
                assert {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                            "values": [143]}} in spec["podFailurePolicy"]["rules"]
                queued = await queued_for(harness, "Pending")
                assert queued["status"]["queue"]["message"].startswith("couldn't assign flavors")
                await asyncio.sleep(1.1)
                admit(harness, "acme-tickets-train")
                await in_phase(harness, "Training")
                await asyncio.sleep(2.1)

                preempt(harness, "acme-tickets-train")
                preempted = await queued_for(harness, "Preempted")
                assert preempted["status"]["queue"]["preemptions"] == 1
                await asyncio.sleep(1.1)
                admit(harness, "acme-tickets-train")
                await in_phase(harness, "Training")
                finish_job(harness, {**RESULT, "resumedFromStep": 20}, "acme-tickets-train")

                for stage, result in (("evaluate", EVALUATED), ("register", REGISTERED)):
                    await queued_job(harness, f"acme-tickets-{stage}")
                    admit(harness, f"acme-tickets-{stage}")
                    finish_job(harness, result, f"acme-tickets-{stage}")
                done = await in_phase(harness, "Succeeded")

                status = done["status"]
                assert status["training"]["resumedFromStep"] == 20
                assert (status["queue"]["admissions"], status["queue"]["preemptions"]) == (5, 1)
                stages = {entry["stage"]: entry for entry in status["cost"]["stages"]}
                assert list(stages) == ["validate", "train", "evaluate", "register"]
                train_cost = stages["train"]
                assert (train_cost["gpus"], train_cost["interruptions"], train_cost["state"]) == (2, 1, "Done")
                assert train_cost["queuedSeconds"] >= 2 and train_cost["runningSeconds"] >= 2
                for entry in stages.values():
                    assert entry["gpuSecondsRequested"] == pytest.approx(entry["gpus"] * entry["runningSeconds"], abs=0.2)
                assert stages["train"]["gpuSecondsUsed"] == 2 * RESULT["seconds"]
                cost = status["cost"]
                assert cost["queuedSeconds"] == pytest.approx(sum(e["queuedSeconds"] for e in stages.values()), abs=0.2)
                assert cost["runningSeconds"] == pytest.approx(sum(e["runningSeconds"] for e in stages.values()), abs=0.2)
                wall = (datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
                        - datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))).total_seconds()
                assert cost["queuedSeconds"] + cost["runningSeconds"] <= wall + 2  # whole-second timestamps
                assert cost["gpuHoursRequested"] == pytest.approx(
                    sum(e["gpuSecondsRequested"] for e in stages.values()) / 3600, abs=1e-4)
                assert (cost["currency"], cost["cost"]) == ("EUR", round(4.0 * cost["gpuHoursRequested"], 2))
                assert cost["improvement"]["metric"] == "exactMatch" and cost["improvement"]["points"] == 60.0
                for stage in ("validate", "train", "evaluate", "register"):
                    assert created_once(harness, f"acme-tickets-{stage}"), stage
                phases = [version["status"]["phase"] for version in harness.history(FTJ, "default", "acme-tickets")
                          if version and version.get("status", {}).get("phase")]
                collapsed = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
                assert collapsed[:6] == ["Queued", "Validating", "Queued", "Training", "Queued", "Training"]
                reasons = [e["reason"] for e in harness.list_objects(("v1", "Event"), "default")
                           if e["involvedObject"]["name"] == "acme-tickets"]
                assert reasons.count("Preempted") == 1 and reasons.count("Admitted") == 5
            await run_operator(harness, body, kubeconfig_dir=operator_env)

    asyncio.run(scenario())


def test_suspend_stops_the_training_job_and_resume_brings_back_the_same_one_queued(operator_env):
    async def scenario():
        async with running_emulator([*CRDS, KUEUE_CRD]) as harness:
            async def body():
                harness.create(copy.deepcopy(EXAMPLE))
                await queued_job(harness, "acme-tickets-validate")
                admit(harness, "acme-tickets-validate")
                finish_job(harness, DATA_CHECKED, "acme-tickets-validate")
                await queued_job(harness, "acme-tickets-train")
                admit(harness, "acme-tickets-train")
                running = await in_phase(harness, "Training")
                generation = running["metadata"]["generation"]

                harness.patch(FTJ, "default", "acme-tickets", {"spec": {"suspend": True}})
                await harness.wait_for(lambda: harness.get(JOB, "default", "acme-tickets-train") is None, timeout=20)
                suspended = await in_phase(harness, "Suspended")
                assert suspended["status"]["observedGeneration"] == generation + 1
                assert not any(c["type"] == "SpecChangeIgnored" for c in suspended["status"]["conditions"])
                assert harness.get(CONFIGMAP, "default", "acme-tickets-train") is not None  # kept for the resume
                await asyncio.sleep(1.5)
                assert harness.get(JOB, "default", "acme-tickets-train") is None  # nothing comes back while suspended

                harness.patch(FTJ, "default", "acme-tickets", {"spec": {"suspend": False}})
                again = await queued_job(harness, "acme-tickets-train")  # back in the queue, as a new Job
                assert json.loads(harness.get(CONFIGMAP, "default", "acme-tickets-train")["data"]["workload.json"])
                await in_phase(harness, "Queued")
                admit(harness, "acme-tickets-train")
                finish_job(harness, RESULT, "acme-tickets-train")
                await queued_job(harness, "acme-tickets-evaluate")
                history = harness.history(JOB, "default", "acme-tickets-train")
                assert history.count(None) == 1 and history[-1]["metadata"]["uid"] == again["metadata"]["uid"]
                reasons = [e["reason"] for e in harness.list_objects(("v1", "Event"), "default")
                           if e["involvedObject"]["name"] == "acme-tickets"]
                assert reasons.count("Suspended") == 1 and reasons.count("Resumed") == 1
                train = next(e for e in ftj(harness)["status"]["cost"]["stages"] if e["stage"] == "train")
                assert train["interruptions"] == 1
            await run_operator(harness, body, kubeconfig_dir=operator_env)

    asyncio.run(scenario())
