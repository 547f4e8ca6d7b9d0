"""The operator against a real kube-apiserver and kube-controller-manager (tests/kube_apiserver.py),
logged in as the chart's ServiceAccount with exactly the RBAC `helm template` renders.

The API server's audit log records every request the operator makes, with what it sent and what
was stored: the module's last test fails on a 403 anywhere, and on a field the server pruned from
what the operator wrote to its own kinds. Kubernetes does its part (the Job controller makes the Pods, the
garbage collector removes children); the tests play only the kubelet, by writing Pod status.
What 1.20 cannot express (CEL rules, a Job's podFailurePolicy) stays tested on the emulator.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bad_manifests import CASES
from chart_operator import SERVICE_ACCOUNT_USER, SYSTEM, Operator
from crd_schema import admit
from feedback_server import serving
from kube_apiserver import KubeApiServer, missing_binaries, running_control_plane
from stage_results import DATA_CHECKED, improvement_test
from tuneloop.api import finetunejob as finetunejob_api
from test_operator_finetuneschedule import TOKEN as FEEDBACK_TOKEN
from test_operator_finetuneschedule import post_corrections
from tuneloop.config import load_config
from tuneloop.feedback.app import create_app
from tuneloop.runtime.manifests import training_objects

REPO = Path(__file__).resolve().parents[1]
CRDS = [document for path in sorted((REPO / "crds").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text()) if document]
EXAMPLE = yaml.safe_load((REPO / "examples" / "cluster" / "finetunejob.yaml").read_text())
SCHEDULE = yaml.safe_load((REPO / "examples" / "cluster" / "finetuneschedule.yaml").read_text())
FTJ_API = "/apis/tuneloop.dev/v1alpha1"

pytestmark = pytest.mark.apiserver

RESULTS = {
    "validate": DATA_CHECKED,
    "train": {"succeeded": True, "steps": 68, "validationLossBefore": 4.08, "validationLossAfter": 0.05, "trainLoss": 0.05,
              "tokensPerSecond": 5000.0, "seconds": 60.0, "adapterPath": "/mnt/pvc/adapters/x/adapter",
              "testPath": "/mnt/pvc/adapters/x/test.jsonl",
              "dataset": {"rows": 300, "trainRows": 270, "validationRows": 30, "testRows": 30, "trainTokens": 27894,
                          "format": "alpaca", "sha256": "ab" * 32}},
    "evaluate": {"succeeded": True, "baseline": "base", "judge": {"configured": False},
                 "recordsPath": "/mnt/pvc/adapters/x/evaluation/evaluation-records.jsonl",
                 "tests": [improvement_test()], "test": {"examples": 30, "candidate": {"exactMatch": {"value": 0.6, "low": 0.43, "high": 0.77}},
                             "baseline": {"exactMatch": {"value": 0.0, "low": 0.0, "high": 0.0}},
                             "difference": {"exactMatch": {"value": 0.6, "low": 0.43, "high": 0.77}}}},
    "register": {"succeeded": True, "modelName": "acme-tickets", "version": "1", "uri": "models:/acme-tickets/1",
                 "aliases": ["challenger", "champion"], "runId": "r1"},
}


STAGES = tuple(RESULTS)


def control_plane_or_skip() -> None:
    """Skip where the binaries are not built; fail under CI, where `make test` builds them first."""
    if missing := missing_binaries():
        message = f"no real API server: {', '.join(missing)} missing; tools/build_kube.sh builds them (make test runs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory) -> Iterator[KubeApiServer]:
    control_plane_or_skip()
    with running_control_plane(tmp_path_factory.mktemp("control-plane"), crds=CRDS) as server:
        server.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM}}])
        yield server


@pytest.fixture(params=["watched-namespace", "cluster-wide"])
def operator(request, control_plane, tmp_path) -> Iterator[tuple[Operator, str]]:
    namespace = f"team-{request.param.split('-')[0]}"
    watched = [namespace] if request.param == "watched-namespace" else []
    operator = Operator(control_plane, tmp_path, watched, work_namespaces=(namespace,))
    try:
        yield operator, namespace
    finally:
        operator.stop()


def finetunejob(namespace: str, name: str) -> dict[str, Any]:
    manifest = copy.deepcopy(EXAMPLE)
    manifest["metadata"] = {"name": name, "namespace": namespace}
    return manifest


def children(server: KubeApiServer, owner: dict[str, Any], path: str) -> list[dict[str, Any]]:
    return [obj for obj in server.items(path)
            if any(ref["uid"] == owner["metadata"]["uid"] for ref in obj["metadata"].get("ownerReferences", []))]


def phase_of(server: KubeApiServer, namespace: str, name: str) -> str | None:
    ftj = server.get(f"{FTJ_API}/namespaces/{namespace}/finetunejobs/{name}") or {}
    return ftj.get("status", {}).get("phase")


def stage_job(server: KubeApiServer, ftj: dict[str, Any], stage: str, operator: Operator) -> dict[str, Any]:
    namespace = ftj["metadata"]["namespace"]
    return server.wait_for(lambda: operator.alive() and next(
        (j for j in children(server, ftj, f"/apis/batch/v1/namespaces/{namespace}/jobs")
         if j["metadata"]["name"].endswith(f"-{stage}")), None), f"the {stage} Job")


def job_pods(server: KubeApiServer, job: dict[str, Any]) -> list[dict[str, Any]]:
    return server.items(f"/api/v1/namespaces/{job['metadata']['namespace']}/pods",
                        f"job-name={job['metadata']['name']}")


def terminate(server: KubeApiServer, pod: dict[str, Any], exit_code: int, reason: str,
              result: dict[str, Any] | None = None) -> None:
    """Play the kubelet: the Pod's main container ended (with the workload's result as its message)."""
    container = pod["spec"]["containers"][0]
    terminated = {"exitCode": exit_code, "reason": reason, **({"message": json.dumps(result)} if result else {})}
    server.patch_status(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}", {
        "phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [{
            "name": container["name"], "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": terminated}}]})


def job_status(server: KubeApiServer, job: dict[str, Any]) -> dict[str, Any]:
    path = f"/apis/batch/v1/namespaces/{job['metadata']['namespace']}/jobs/{job['metadata']['name']}"
    return (server.get(path) or {}).get("status", {})


def finish_stage(server: KubeApiServer, ftj: dict[str, Any], stage: str, operator: Operator) -> dict[str, Any]:
    """Wait for the stage's Job and its Pod (made by the Job controller); the Pod ran and wrote the
    stage's result; the Job controller completes the Job."""
    job = stage_job(server, ftj, stage, operator)
    pod = server.wait_for(lambda: next(iter(job_pods(server, job)), None), f"the Job controller to make the {stage} Pod")
    terminate(server, pod, 0, "Completed", RESULTS[stage])
    server.wait_for(lambda: job_status(server, job).get("succeeded"), f"the Job controller to complete the {stage} Job")
    return job


def test_a_finetunejob_trains_evaluates_registers_and_succeeds_under_the_charts_rbac(control_plane, operator):
    operator, namespace = operator
    ftj = control_plane.apply([finetunejob(namespace, "acme-tickets")])[0]
    check = finish_stage(control_plane, ftj, "validate", operator)
    assert "nvidia.com/gpu" not in check["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    train = finish_stage(control_plane, ftj, "train", operator)
    assert train["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    finish_stage(control_plane, ftj, "evaluate", operator)
    finish_stage(control_plane, ftj, "register", operator)
    control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, namespace, "acme-tickets") == "Succeeded",
                           "phase Succeeded")
    done = control_plane.get(f"{FTJ_API}/namespaces/{namespace}/finetunejobs/acme-tickets")
    assert done["status"]["registry"]["uri"] == "models:/acme-tickets/1"
    assert done["status"]["evaluation"]["score"] == 0.6
    assert done["status"]["observedGeneration"] == done["metadata"]["generation"]
    assert done["status"]["dataReport"]["estimatedSteps"] == 68  # the CRD's status schema keeps the report
    reasons = {event["reason"] for event in control_plane.items(f"/api/v1/namespaces/{namespace}/events")
               if event["involvedObject"].get("uid") == ftj["metadata"]["uid"]}
    assert "Succeeded" in reasons, reasons

    control_plane.delete(done)
    control_plane.wait_for(lambda: not children(control_plane, ftj, f"/apis/batch/v1/namespaces/{namespace}/jobs")
                           and not children(control_plane, ftj, f"/api/v1/namespaces/{namespace}/configmaps"),
                           "the garbage collector to remove the FineTuneJob's Jobs and ConfigMaps", timeout=120)


def test_a_preempted_training_pod_is_replaced_by_the_job_controller_and_the_run_goes_on(control_plane, tmp_path):
    operator = Operator(control_plane, tmp_path, ["team-preempted"])
    try:
        ftj = control_plane.apply([finetunejob("team-preempted", "preempted")])[0]
        finish_stage(control_plane, ftj, "validate", operator)
        job = stage_job(control_plane, ftj, "train", operator)
        first = control_plane.wait_for(lambda: next(iter(job_pods(control_plane, job)), None), "the first Pod")
        control_plane.wait_for(lambda: phase_of(control_plane, "team-preempted", "preempted") == "Training",
                               "phase Training")
        terminate(control_plane, first, 143, "Error", {"succeeded": False, "reason": "Preempted",
                                                       "message": "stopped by SIGTERM; checkpoint-20 is complete"})
        second = control_plane.wait_for(lambda: next((p for p in job_pods(control_plane, job)
                                                      if p["metadata"]["uid"] != first["metadata"]["uid"]), None),
                                        "the Job controller to replace the preempted Pod", timeout=120)
        assert phase_of(control_plane, "team-preempted", "preempted") == "Training"  # not Failed
        terminate(control_plane, second, 0, "Completed", RESULTS["train"])
        control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, "team-preempted", "preempted")
                               == "Evaluating", "phase Evaluating")
        assert [j["metadata"]["uid"] for j in children(control_plane, ftj, "/apis/batch/v1/namespaces/team-preempted/jobs")
                if j["metadata"]["name"].endswith("-train")] == [job["metadata"]["uid"]]
    finally:
        operator.stop()


def test_suspend_deletes_the_running_training_job_and_resume_creates_it_again(control_plane, tmp_path):
    """spec.suspend: the Job goes in the foreground (the garbage collector removes its Pods first, so their
    SIGTERM and grace period come before the Job is gone); false again: the same Job name, made afresh."""
    namespace, name = "team-suspend", "suspended"
    operator = Operator(control_plane, tmp_path, [namespace])
    path = f"{FTJ_API}/namespaces/{namespace}/finetunejobs/{name}"
    try:
        ftj = control_plane.apply([finetunejob(namespace, name)])[0]
        finish_stage(control_plane, ftj, "validate", operator)
        first = stage_job(control_plane, ftj, "train", operator)
        control_plane.wait_for(lambda: next(iter(job_pods(control_plane, first)), None), "the training Pod")
        control_plane.wait_for(lambda: phase_of(control_plane, namespace, name) == "Training", "phase Training")

        control_plane.patch(path, {"spec": {"suspend": True}})
        control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, namespace, name) == "Suspended"
                               and not job_pods(control_plane, first)
                               and control_plane.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{first['metadata']['name']}")
                               is None, "the Job and its Pod gone, phase Suspended")
        suspended = control_plane.get(path)
        assert suspended["status"]["stage"] == "train"
        assert suspended["status"]["observedGeneration"] == suspended["metadata"]["generation"]  # applied, not ignored
        assert "set spec.suspend to false to resume" in control_plane.wait_for(
            lambda: "resume" in control_plane.get(path)["status"]["message"] and control_plane.get(path)["status"]["message"],
            "the Suspended message")

        control_plane.patch(path, {"spec": {"suspend": False}})
        second = control_plane.wait_for(lambda: next((j for j in children(
            control_plane, ftj, f"/apis/batch/v1/namespaces/{namespace}/jobs") if j["metadata"]["name"].endswith("-train")
            and j["metadata"]["uid"] != first["metadata"]["uid"]), None), "the training Job made again")
        assert second["metadata"]["name"] == first["metadata"]["name"]
        finish_stage(control_plane, ftj, "train", operator)
        control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, namespace, name) == "Evaluating",
                               "phase Evaluating")
        train = next(entry for entry in control_plane.get(path)["status"]["cost"]["stages"] if entry["stage"] == "train")
        assert train["interruptions"] == 1 and train["state"] == "Done"
    finally:
        operator.stop()
    deletes = [entry for entry in control_plane.audit_entries(SERVICE_ACCOUNT_USER)
               if entry["verb"] == "delete" and entry["objectRef"].get("namespace") == namespace
               and entry["objectRef"]["resource"] == "jobs"]
    assert [entry["responseStatus"].get("code") for entry in deletes][:1] == [200]
    assert all(entry["requestObject"]["propagationPolicy"] == "Foreground" for entry in deletes)


def test_a_queue_on_a_server_without_job_suspension_fails_the_job_and_leaves_no_job_running(control_plane, tmp_path):
    """Kubernetes 1.20 drops a Job's spec.suspend: a queued Job would start at once, outside Kueue's quota."""
    namespace, name = "team-kueue", "queued"
    operator = Operator(control_plane, tmp_path, [namespace])
    try:
        manifest = finetunejob(namespace, name)
        manifest["spec"]["queueName"] = "team-a-gpus"
        ftj = control_plane.apply([manifest])[0]
        control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, namespace, name) == "Failed",
                               "phase Failed")
        failed = control_plane.get(f"{FTJ_API}/namespaces/{namespace}/finetunejobs/{name}")["status"]
        assert failed["message"].startswith("spec.queueName: the cluster's API server dropped spec.suspend from Job "
                                            f"{name}-validate")
        assert "Kubernetes 1.22 or later" in failed["message"]
        assert next(c for c in failed["conditions"] if c["type"] == "Failed")["reason"] == "QueueUnsupported"
        control_plane.wait_for(lambda: not children(control_plane, ftj, f"/apis/batch/v1/namespaces/{namespace}/jobs"),
                               "the unqueued Job deleted")
    finally:
        operator.stop()


SECRETS_NAMESPACE = "team-secrets"


def test_a_judge_key_outside_the_charts_secret_names_or_unlabelled_is_refused_under_real_rbac(control_plane, tmp_path):
    """The operator may get only the Secrets of rbac.secretNames (the API server answers 403 for any
    other), and uses one only when the namespace has labelled it for the purpose."""
    namespace = SECRETS_NAMESPACE
    operator = Operator(control_plane, tmp_path, [namespace])
    try:
        key = {"token": base64.b64encode(b"k").decode()}
        control_plane.apply([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace, "labels": labels},
             "data": key}
            for name, labels in (("team-db", {"tuneloop.dev/secret-usage": "judge"}), ("tuneloop-judge", {}))])
        jobs = {}
        for name, secret in (("outside", "team-db"), ("unlabelled", "tuneloop-judge")):
            manifest = finetunejob(namespace, name)
            manifest["spec"]["evaluation"]["judge"] = {"url": f"http://judge.{namespace}.svc:8000/v1",
                                                       "model": "judge",
                                                       "apiKeySecret": {"name": secret, "key": "token"}}
            jobs[name] = control_plane.apply([manifest])[0]
        control_plane.wait_for(lambda: operator.alive() and all(phase_of(control_plane, namespace, name) == "Failed"
                                                                for name in jobs), "both FineTuneJobs refused")
        messages = {name: control_plane.get(f"{FTJ_API}/namespaces/{namespace}/finetunejobs/{name}")["status"]["message"]
                    for name in jobs}
        assert messages["outside"].startswith(f"spec.evaluation.judge.apiKeySecret: Secret {namespace}/team-db may not "
                                              "be read by the operator: ask the cluster admin to add 'team-db' to the "
                                              "chart's rbac.secretNames")
        assert "is not marked for Tuneloop's judge use" in messages["unlabelled"]
        assert control_plane.items(f"/apis/batch/v1/namespaces/{namespace}/jobs") == []

        control_plane.apply([{"apiVersion": "v1", "kind": "Secret", "data": key, "metadata": {
            "name": "tuneloop-judge", "namespace": namespace, "labels": {"tuneloop.dev/secret-usage": "judge"}}}])
        marked = finetunejob(namespace, "marked")
        marked["spec"]["evaluation"]["judge"] = {"url": f"http://judge.{namespace}.svc:8000/v1", "model": "judge",
                                                 "apiKeySecret": {"name": "tuneloop-judge", "key": "token"}}
        stage_job(control_plane, control_plane.apply([marked])[0], "validate", operator)
    finally:
        operator.stop()


def test_a_training_pod_killed_for_memory_fails_the_finetunejob_with_that_reason(control_plane, tmp_path):
    operator = Operator(control_plane, tmp_path, ["team-oom"], workloads={"backoffLimit": 0})
    try:
        ftj = control_plane.apply([finetunejob("team-oom", "oom")])[0]
        finish_stage(control_plane, ftj, "validate", operator)
        job = stage_job(control_plane, ftj, "train", operator)
        pod = control_plane.wait_for(lambda: next(iter(job_pods(control_plane, job)), None), "the training Pod")
        terminate(control_plane, pod, 137, "OOMKilled")
        control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, "team-oom", "oom") == "Failed",
                               "phase Failed")
        failed = control_plane.get(f"{FTJ_API}/namespaces/team-oom/finetunejobs/oom")
        assert "OOMKilled (exit code 137)" in failed["status"]["message"]
        assert "BackoffLimitExceeded" in failed["status"]["message"]
    finally:
        operator.stop()


def test_an_operator_killed_at_random_moments_creates_nothing_twice_and_loses_no_transition(control_plane, tmp_path):
    """A burst of FineTuneJobs; the operator is SIGKILLed and restarted at random moments while they
    are created and while their stages finish. Standalone: a killed replica's peering record would
    only make its successor wait out kopf's peering lifetime."""
    rng = random.Random(20261202)
    namespace, names = "team-burst", [f"burst-{i:02d}" for i in range(12)]
    operator = Operator(control_plane, tmp_path, [namespace], standalone=True)

    def kill_and_restart() -> None:
        time.sleep(rng.uniform(0.05, 1.5))
        operator.kill()
        operator.start()

    try:
        created = {}
        for batch in (names[:6], names[6:]):
            created.update({ftj["metadata"]["name"]: ftj
                            for ftj in control_plane.apply([finetunejob(namespace, name) for name in batch])})
            kill_and_restart()
        for stage in STAGES:
            for index, name in enumerate(names):
                finish_stage(control_plane, created[name], stage, operator)
                if index % 4 == 3:
                    kill_and_restart()
        control_plane.wait_for(lambda: operator.alive() and all(
            phase_of(control_plane, namespace, name) == "Succeeded" for name in names), "every FineTuneJob to succeed")
    finally:
        operator.stop()

    # A create cut off by the kill can be stored without its 201 reaching the audit log; a second
    # successful create of a name would mean the object was made twice (deleted in between).
    creates = Counter(f"{entry['objectRef']['resource']}/{entry['objectRef'].get('name')}"
                      for entry in control_plane.audit_entries(SERVICE_ACCOUNT_USER)
                      if entry["verb"] == "create" and entry["objectRef"].get("namespace") == namespace
                      and entry["objectRef"]["resource"] in ("jobs", "configmaps")
                      and entry["responseStatus"].get("code") == 201)
    assert {key: count for key, count in creates.items() if count > 1} == {}
    stored = {f"{kind}/{obj['metadata']['name']}" for kind, api in (("jobs", "/apis/batch/v1"), ("configmaps", "/api/v1"))
              for obj in control_plane.items(f"{api}/namespaces/{namespace}/{kind}")
              if obj["metadata"]["name"].startswith("burst-")}
    assert stored == {f"{kind}/{name}-{stage}" for kind in ("jobs", "configmaps") for name in names
                      for stage in STAGES}
    for name in names:
        status = control_plane.get(f"{FTJ_API}/namespaces/{namespace}/finetunejobs/{name}")["status"]
        done = {c["type"] for c in status["conditions"] if c["status"] == "True"}
        assert {"DataValidated", "Trained", "Evaluated", "Registered", "Complete"} <= done, (name, done)


# What the operator renders that Kubernetes 1.20 does not know, and so drops without an error: the
# product keeps them for the versions it supports (README); on 1.20 a Job's pods are retried up to
# backoffLimit instead (a preempted pod counts as a failure; an exit code 1 does not fail at once).
DROPPED_BY_1_20 = {"spec.podFailurePolicy"}


def test_what_kubernetes_1_20_drops_from_a_training_job_is_only_what_the_harness_lists(control_plane, tmp_path):
    operator = Operator(control_plane, tmp_path, ["team-dropped"])
    try:
        ftj = control_plane.apply([finetunejob("team-dropped", "dropped")])[0]
        finish_stage(control_plane, ftj, "validate", operator)
        listed = stage_job(control_plane, ftj, "train", operator)
        stored = control_plane.get(f"/apis/batch/v1/namespaces/team-dropped/jobs/{listed['metadata']['name']}")
    finally:
        operator.stop()
    rendered = next(obj for obj in training_objects(finetunejob_api.parse_manifest(ftj), stored["metadata"]["name"],
                                                    load_config(tmp_path / "config.yaml")) if obj["kind"] == "Job")
    missing = {".".join(path) for path, value in leaves(rendered) if path[0] != "metadata"
               and lookup(stored, path) != value and not (not value and lookup(stored, path) is KeyError)}  # omitempty
    assert {".".join(path.split(".")[:2]) for path in missing} == DROPPED_BY_1_20, sorted(missing)


def test_a_finetuneschedule_runs_one_cycle_from_corrections_to_a_registered_version(control_plane, tmp_path):
    """A real feedback service holds the corrections; the schedule fires at the next minute (the
    operator runs on real time here), the snapshot pod runs the real snapshot workload, and the
    FineTuneJob the schedule made goes through its stages."""
    namespace, name = "team-schedule", "acme-tickets-nightly"
    schedule = copy.deepcopy(SCHEDULE)
    schedule["metadata"] = {"name": name, "namespace": namespace}
    schedule["spec"].update(schedule="* * * * *", timeZone="UTC")
    del schedule["spec"]["startingDeadlineSeconds"]
    with serving(create_app(f"sqlite:///{tmp_path / 'feedback.db'}", FEEDBACK_TOKEN)) as url:
        post_corrections(url, 6, 0)
        schedule["spec"]["feedback"].update(url=url, minNewCorrections=5)
        operator = Operator(control_plane, tmp_path, [namespace], values={"allowedUrls": [url]})
        try:
            control_plane.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {
                "name": "tuneloop-feedback", "namespace": namespace,
                "labels": {"tuneloop.dev/secret-usage": "feedback"}},
                "data": {"token": base64.b64encode(FEEDBACK_TOKEN.encode()).decode()}}])
            fts = control_plane.apply([schedule])[0]
            snapshot = control_plane.wait_for(lambda: operator.alive() and next(
                (j for j in children(control_plane, fts, f"/apis/batch/v1/namespaces/{namespace}/jobs")
                 if j["metadata"]["name"].endswith("-snapshot")), None), "the schedule's snapshot Job at the next minute",
                timeout=150)
            result = run_snapshot_workload(control_plane, snapshot, tmp_path / "pvc")
            assert result["rows"] == 6
            pod = control_plane.wait_for(lambda: next(iter(job_pods(control_plane, snapshot)), None), "the snapshot Pod")
            terminate(control_plane, pod, 0, "Completed", result)

            run = control_plane.wait_for(lambda: operator.alive() and next(iter(children(
                control_plane, fts, f"{FTJ_API}/namespaces/{namespace}/finetunejobs")), None), "the run's FineTuneJob")
            assert run["spec"]["dataset"]["uri"].startswith("pvc://datasets/acme/feedback/")
            for stage in STAGES:
                finish_stage(control_plane, run, stage, operator)
            control_plane.wait_for(lambda: operator.alive() and (schedule_status(control_plane, namespace, name)
                                                                 .get("lastRun") or {}).get("outcome") == "Promoted",
                                   "the schedule to record the run as Promoted", timeout=90)
            status = schedule_status(control_plane, namespace, name)
            assert status["trainedUpToId"] == 6 and status["active"] == [] and status["lastRun"]["version"] == "1"
        finally:
            operator.stop()


def schedule_status(server: KubeApiServer, namespace: str, name: str) -> dict[str, Any]:
    return (server.get(f"{FTJ_API}/namespaces/{namespace}/finetuneschedules/{name}") or {}).get("status") or {}


def run_snapshot_workload(server: KubeApiServer, job: dict[str, Any], pvc_root: Path) -> dict[str, Any]:
    """What the snapshot pod runs, here: the real workload on the spec the operator wrote into the
    Job's ConfigMap, its /mnt/pvc a local folder."""
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    spec = json.loads(server.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")["data"]["workload.json"])
    spec["outputDir"] = spec["outputDir"].replace("/mnt/pvc", str(pvc_root))
    folder = pvc_root.parent / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "tuneloop_trainer.snapshot", "--spec", str(folder / "spec.json"),
                    "--result", str(folder / "result.json")], check=True, timeout=120,
                   env={**os.environ, "TUNELOOP_FEEDBACK_TOKEN": FEEDBACK_TOKEN})
    result = json.loads((folder / "result.json").read_text())
    result["path"] = result["path"].replace(str(pvc_root), "/mnt/pvc")  # as the pod saw it
    return result


def test_the_standalone_operator_runs_from_the_command_line(control_plane, tmp_path):
    operator = Operator(control_plane, tmp_path, ["team-solo"], standalone=True)
    try:
        ftj = control_plane.apply([finetunejob("team-solo", "solo")])[0]
        finish_stage(control_plane, ftj, "validate", operator)
        finish_stage(control_plane, ftj, "train", operator)
        control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, "team-solo", "solo") == "Evaluating",
                               "phase Evaluating")
    finally:
        operator.stop()


@pytest.mark.parametrize("length", [63, 253])
def test_names_at_the_longest_the_crd_allows_make_valid_children(control_plane, tmp_path, length):
    operator = Operator(control_plane, tmp_path, ["team-names"])
    name = "a" * length
    try:
        ftj = control_plane.apply([finetunejob("team-names", name)])[0]
        finish_stage(control_plane, ftj, "validate", operator)
        finish_stage(control_plane, ftj, "train", operator)
        control_plane.wait_for(lambda: operator.alive() and phase_of(control_plane, "team-names", name) == "Evaluating",
                               "phase Evaluating")
    finally:
        operator.stop()


def test_the_audit_check_finds_a_field_the_server_pruned(control_plane):
    """The module's pruning check, on a write it must catch: a field the CRD does not declare, inside
    a status object the CRD does (the top of status keeps unknown fields for kopf's bookkeeping)."""
    probe = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "probe", "namespace": SYSTEM}}
    control_plane.apply([probe, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "probe"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": SYSTEM}]}])
    control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-probe"}}])
    ftj = control_plane.apply([finetunejob("team-probe", "probed")])[0]
    token = control_plane.service_account_token(SYSTEM, "probe")
    response = control_plane.client.patch(
        f"{control_plane.path_of(ftj)}/status", content=json.dumps({"status": {"progress": {"step": 5, "madeUp": 1}}}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
    assert response.status_code == 200 and "madeUp" not in response.json()["status"]["progress"]
    assert pruned_fields(control_plane.audit_entries(f"system:serviceaccount:{SYSTEM}:probe")) == [
        f"patch {FTJ_API}/namespaces/team-probe/finetunejobs/probed/status: status.progress.madeUp"]


def test_the_real_api_server_agrees_with_the_emulators_schema_on_every_bad_manifest(control_plane):
    """The corpus of tests/bad_manifests.py, sent with dryRun: what the emulator's OpenAPI check (and
    the API server's name check) refuses, 1.20 refuses too; what the emulator admits, 1.20 admits.
    This proves the patterns are ones Go's RE2 reads the same way. CEL rules and strict field
    validation are newer than 1.20: those cases stay with the emulator."""
    control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "corpus"}}])
    crds = {crd["spec"]["names"]["kind"]: crd for crd in CRDS if crd["spec"]["group"] == "tuneloop.dev"}
    disagreements, checked = [], 0
    for case in [case for case in CASES if case.where != "json"]:
        manifest = case.manifest()
        _, errors = admit(crds[case.kind], manifest)
        schema_errors = [error for error in errors if not error.startswith("<root>")]  # CEL's start so
        if errors and not schema_errors:
            continue
        response = control_plane.client.post(control_plane.path_of(manifest, name=False), json=manifest,
                                             params={"dryRun": "All"})
        checked += 1
        if response.is_success == bool(schema_errors):
            disagreements.append(f"{case.id}: emulator {schema_errors[:1] or 'admits'}, "
                                 f"kube-apiserver {response.status_code} {response.text[:200]}")
    assert disagreements == []
    assert checked >= 100


# --- what the audit log shows --------------------------------------------------------------------

def leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from leaves(item, (*path, str(index)))
    else:
        yield path, value


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return KeyError
    return value


def pruned_fields(audit: list[dict[str, Any]]) -> list[str]:
    """Fields sent in a create, update or merge patch that the server did not store: the structural
    schema of a CRD prunes unknown fields without an error. (For a built-in kind the audit log shows
    the request already decoded, without the fields the server does not know: what 1.20 drops from
    a Job is found by comparing the operator's rendering with what is stored, below.)"""
    pruned = []
    for entry in audit:
        uri = entry["requestURI"]
        if entry["verb"] not in ("create", "update", "patch"):
            continue
        sent, stored = entry.get("requestObject"), entry.get("responseObject")
        if not isinstance(sent, dict) or not isinstance(stored, dict) or stored.get("kind") == "Status":
            continue
        for path, value in leaves(sent):
            if value is None or path[:1] == ("metadata",):
                continue  # a merge patch's null deletes; metadata is the server's to fill
            if lookup(stored, path) != value:
                pruned.append(f"{entry['verb']} {uri.split('?')[0]}: {'.'.join(path)}")
    return pruned


def test_the_operator_was_never_refused_and_nothing_it_wrote_was_pruned(control_plane):
    """Over every request the operator made in this module's tests (this test runs last)."""
    audit = control_plane.audit_entries(SERVICE_ACCOUNT_USER)
    assert audit, "the audit log recorded nothing the operator did: run the module's other tests with it"
    refused = [f"{e['verb']} {e['requestURI']}" for e in audit if e["responseStatus"].get("code") == 403]
    # The one refusal the chart's RBAC is meant to give: a tenant's Secret outside rbac.secretNames.
    assert set(refused) <= {f"get /api/v1/namespaces/{SECRETS_NAMESPACE}/secrets/team-db"}, refused
    assert pruned_fields(audit) == []
    assert {e["verb"] for e in audit} >= {"create", "patch", "list", "get"}
