"""FineTuneSchedules, run for real: the kopf operator against the API emulator, a real feedback
service (SQLite) for the corrections, and the real snapshot workload on the spec the operator wrote.

The tests move the operator's clock (tuneloop.clock) from slot to slot instead of waiting for
minutes; everything else runs in real time. They play the Job controller and the kubelet: the
snapshot pod runs the real workload (its output folder stands in for the PVC), the training,
evaluation and registration pods leave given results.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from feedback_server import serving
from k8s_emulator import handlers_registry, running_emulator
from stage_results import DATA_CHECKED
from test_operator import EVALUATED, REGISTERED, RESULT, finish_job
from tuneloop import clock
from tuneloop.feedback.app import create_app

REPO = Path(__file__).resolve().parents[1]
CRDS = list(yaml.safe_load_all((REPO / "crds" / "tuneloop.dev_crds.yaml").read_text()))
SCHEDULE = yaml.safe_load((REPO / "examples" / "cluster" / "finetuneschedule.yaml").read_text())
FTSCHED = ("tuneloop.dev/v1alpha1", "FineTuneSchedule")
FTJ = ("tuneloop.dev/v1alpha1", "FineTuneJob")
JOB, CONFIGMAP = ("batch/v1", "Job"), ("v1", "ConfigMap")
NAME = "acme-tickets-nightly"
TOKEN = "feedback-test-token"


class FakeClock:
    """Behind real time until start_at(): no slot is due before the schedule exists."""

    def __init__(self):
        self.moment = datetime.now(timezone.utc) - timedelta(seconds=5)

    def now(self) -> datetime:
        return self.moment

    def start_at(self, created: str) -> None:
        """Just after the schedule's creationTimestamp (whole seconds): the next minute is its first slot."""
        self.moment = datetime.fromisoformat(created.replace("Z", "+00:00")) + timedelta(seconds=1)

    def advance(self, minutes: int = 1) -> None:
        self.moment += timedelta(minutes=minutes)


def schedule_manifest(url: str) -> dict:
    manifest = json.loads(json.dumps(SCHEDULE))
    manifest["spec"].update(schedule="* * * * *", timeZone="UTC", startingDeadlineSeconds=None)
    manifest["spec"]["feedback"].update(url=url, minNewCorrections=5)
    del manifest["spec"]["startingDeadlineSeconds"]
    return manifest


def post_corrections(url: str, count: int, start: int) -> None:
    for index in range(start, start + count):
        body = {"prompt": f"Kestrel Travel account {49000 + index}: tracking stopped updating, number {index}.",
                "answer": '{"acct":"KT-1","cat":"shipping","act":"investigate","pri":"P3"}',
                "correction": f'{{"acct":"KT-{49000 + index}","cat":"shipping","act":"investigate","pri":"P1"}}',
                "model": "acme-tickets", "adapterVersion": "1", "label": "pri", "idempotencyKey": f"key-{index}"}
        request = urllib.request.Request(f"{url}/v1/feedback", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass


async def run_snapshot_pod(harness, name: str, pvc_root: Path) -> dict:
    """Play the snapshot pod: the real workload on the operator's spec, its /mnt/pvc/<claim> a local folder."""
    spec = json.loads(harness.get(CONFIGMAP, "default", name)["data"]["workload.json"])
    assert spec["outputDir"] == "/mnt/pvc/datasets/acme/feedback"
    spec["outputDir"] = str(pvc_root / "datasets" / "acme" / "feedback")
    folder = pvc_root.parent / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tuneloop_trainer.snapshot", "--spec", str(folder / "spec.json"),
        "--result", str(folder / "result.json"), env={**os.environ, "TUNELOOP_FEEDBACK_TOKEN": TOKEN})
    assert await process.wait() == 0
    result = json.loads((folder / "result.json").read_text())
    result["path"] = result["path"].replace(str(pvc_root), "/mnt/pvc")  # as the pod saw it
    for preference_file in (result.get(key) for key in ("pairs", "kto")):
        if preference_file:
            preference_file["path"] = preference_file["path"].replace(str(pvc_root), "/mnt/pvc")
    finish_job(harness, result, name)
    return result


@pytest.fixture
def scene(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_RECONCILE_INTERVAL", "0.3")
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake.now)
    with serving(create_app(f"sqlite:///{tmp_path / 'feedback.db'}", TOKEN)) as url:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"catalog": {"smollm2-135m-instruct": "pvc://models/smollm2-135m-instruct"},
                                          "mlflowTrackingUri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                          "allowedUrls": [url]}))  # the feedback service, outside the namespace
        monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
        yield tmp_path, fake, url


async def with_operator(harness, tmp_path, body):
    os.environ["KUBECONFIG"] = str(harness.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        async with harness.kopf_operator(handlers_registry("tuneloop.handlers")):
            await body()
    finally:
        del os.environ["KUBECONFIG"]


def create_token_secret(harness, labels=None) -> None:
    """The namespace's feedback token, marked for Tuneloop's feedback use (runtime/secrets.py)."""
    labels = {"tuneloop.dev/secret-usage": "feedback"} if labels is None else labels
    harness.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tuneloop-feedback", "labels": labels},
                    "data": {"token": base64.b64encode(TOKEN.encode()).decode()}})


def status_of(harness) -> dict:
    return (harness.get(FTSCHED, "default", NAME) or {}).get("status") or {}


def permitted(harness) -> dict | None:
    """The schedule's Permitted condition: whether its feedback address and token may be used."""
    return next((c for c in status_of(harness).get("conditions", []) if c["type"] == "Permitted"), None)


def snapshot_jobs(harness) -> list[str]:
    return sorted(job["metadata"]["name"] for job in harness.list_objects(JOB, "default")
                  if job["metadata"]["name"].endswith("-snapshot"))


def test_one_finetunejob_per_due_slot_never_two_at_once_and_too_few_corrections_skip(scene):
    tmp_path, fake, url = scene

    async def scenario():
        async with running_emulator(CRDS) as harness:
            create_token_secret(harness)

            async def body():
                post_corrections(url, 2, 0)
                fake.start_at(harness.create(schedule_manifest(url))["metadata"]["creationTimestamp"])
                await harness.wait_for(lambda: status_of(harness).get("nextScheduleTime"))
                fake.advance()
                skipped = await harness.wait_for(lambda: (status_of(harness).get("lastRun") or {}).get("outcome"))
                assert skipped == "Skipped" and "2 new corrections, fewer than minNewCorrections 5" in \
                    status_of(harness)["lastRun"]["message"]
                assert snapshot_jobs(harness) == []

                post_corrections(url, 6, 2)
                fake.advance()
                (snapshot,) = await harness.wait_for(lambda: snapshot_jobs(harness))
                kubernetes_validate.validate(harness.get(JOB, "default", snapshot), "1.33.0", strict=True)
                job = harness.get(JOB, "default", snapshot)["spec"]["template"]["spec"]["containers"][0]
                assert {"name": "TUNELOOP_FEEDBACK_TOKEN", "valueFrom": {"secretKeyRef": {
                    "name": "tuneloop-feedback", "key": "token"}}} in job["env"]
                spec = json.loads(harness.get(CONFIGMAP, "default", snapshot)["data"]["workload.json"])
                assert (spec["afterId"], spec["upToId"]) == (0, 8)
                result = await run_snapshot_pod(harness, snapshot, tmp_path / "pvc")
                assert result["rows"] == 8

                run_name = snapshot.removesuffix("-snapshot")
                ftj = await harness.wait_for(lambda: harness.get(FTJ, "default", run_name))
                assert ftj["metadata"]["ownerReferences"][0]["name"] == NAME
                dataset = ftj["spec"]["dataset"]
                assert dataset["uri"] == "pvc://datasets/acme/feedback/" + Path(result["path"]).name
                assert dataset["replay"]["uri"] == "pvc://datasets/acme/tickets.jsonl"
                # the FineTuneJob is created first, the status written last: wait for it
                await harness.wait_for(lambda: status_of(harness).get("active") == [run_name])
                frozen = status_of(harness)["run"]["snapshot"]  # the preference files, as storage URIs too
                assert (frozen["pairsUri"], frozen["pairsRows"]) == (
                    "pvc://datasets/acme/feedback/" + Path(result["pairs"]["path"]).name, 8)
                assert frozen["ktoUri"] == "pvc://datasets/acme/feedback/" + Path(result["kto"]["path"]).name

                fake.advance()  # the next slot comes while the run trains: Forbid
                await harness.wait_for(lambda: "still going (Forbid)" in status_of(harness)["lastRun"]["message"])
                assert len(harness.list_objects(FTJ, "default")) == 1 and len(snapshot_jobs(harness)) == 1

                finish_job(harness, DATA_CHECKED, await harness.wait_for(
                    lambda: harness.get(JOB, "default", f"{run_name}-validate") and f"{run_name}-validate"))
                finish_job(harness, RESULT, await harness.wait_for(
                    lambda: harness.get(JOB, "default", f"{run_name}-train") and f"{run_name}-train"))
                finish_job(harness, EVALUATED, await harness.wait_for(
                    lambda: harness.get(JOB, "default", f"{run_name}-evaluate") and f"{run_name}-evaluate"))
                finish_job(harness, REGISTERED, await harness.wait_for(
                    lambda: harness.get(JOB, "default", f"{run_name}-register") and f"{run_name}-register"))
                await harness.wait_for(lambda: status_of(harness)["lastRun"]["outcome"] == "Promoted")
                done = status_of(harness)
                assert done["trainedUpToId"] == 8 and done["active"] == [] and done["lastRun"]["version"] == "1"
                assert done["lastRun"]["snapshot"]["sha256"] == result["sha256"]

                post_corrections(url, 5, 8)
                fake.advance()
                await harness.wait_for(lambda: len(snapshot_jobs(harness)) == 2)
                newest = snapshot_jobs(harness)[-1]
                spec = json.loads(harness.get(CONFIGMAP, "default", newest)["data"]["workload.json"])
                assert (spec["afterId"], spec["upToId"]) == (8, 13), "only the corrections after the promoted run"

            await with_operator(harness, tmp_path, body)

    asyncio.run(scenario())


def test_a_restarted_operator_continues_the_run_and_missed_slots_run_once(scene):
    tmp_path, fake, url = scene

    async def scenario():
        async with running_emulator(CRDS) as harness:
            create_token_secret(harness)
            post_corrections(url, 6, 0)

            async def first():
                fake.start_at(harness.create(schedule_manifest(url))["metadata"]["creationTimestamp"])
                await harness.wait_for(lambda: status_of(harness).get("nextScheduleTime"))
                fake.advance()
                await harness.wait_for(lambda: snapshot_jobs(harness))
                # the Job is created during the pass, the status written at its end: stop after both
                await harness.wait_for(lambda: (status_of(harness).get("run") or {}).get("step") == "Snapshot")

            async def second():  # a new operator process, with the snapshot still running
                await asyncio.sleep(1.0)
                (snapshot,) = snapshot_jobs(harness)
                assert status_of(harness)["run"]["step"] == "Snapshot"
                await run_snapshot_pod(harness, snapshot, tmp_path / "pvc")
                await harness.wait_for(lambda: harness.list_objects(FTJ, "default"))
                fail = {"succeeded": False, "message": "CUDA out of memory"}
                run_name = snapshot.removesuffix("-snapshot")
                await harness.wait_for(lambda: harness.get(JOB, "default", f"{run_name}-validate"))
                finish_job(harness, DATA_CHECKED, f"{run_name}-validate")
                await harness.wait_for(lambda: harness.get(JOB, "default", f"{run_name}-train"))
                finish_job(harness, fail, f"{run_name}-train")
                await harness.wait_for(lambda: (status_of(harness).get("lastRun") or {}).get("outcome") == "Failed")
                assert status_of(harness)["trainedUpToId"] == 0, "a failed run's corrections are taken again"

            async def third():  # down for three slots: one run on return, for the latest slot
                await harness.wait_for(lambda: len(snapshot_jobs(harness)) == 2)
                await asyncio.sleep(1.0)
                assert len(snapshot_jobs(harness)) == 2
                spec = json.loads(harness.get(CONFIGMAP, "default", snapshot_jobs(harness)[-1])["data"][
                    "workload.json"])
                assert spec["afterId"] == 0

            await with_operator(harness, tmp_path, first)
            await with_operator(harness, tmp_path, second)
            fake.advance(3)
            await with_operator(harness, tmp_path, third)
            assert len(harness.list_objects(FTJ, "default")) == 1

    asyncio.run(scenario())


def test_the_snapshot_job_of_a_cluster_schedule_needs_a_pvc_folder(scene):
    tmp_path, fake, url = scene

    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                manifest = schedule_manifest(url)
                del manifest["spec"]["feedback"]["snapshotUri"]
                harness.create(manifest)
                message = await harness.wait_for(lambda: status_of(harness).get("message"))
                assert "spec.feedback.snapshotUri: a cluster needs a pvc://claim/path folder" in message

            await with_operator(harness, tmp_path, body)

    asyncio.run(scenario())


def test_a_feedback_url_outside_the_allowed_urls_gets_no_request_and_no_token(scene):
    tmp_path, fake, url = scene

    async def scenario():
        async with running_emulator(CRDS) as harness:
            create_token_secret(harness)

            async def body():
                manifest = schedule_manifest(url.replace("127.0.0.1", "localhost"))  # the same server, not listed
                fake.start_at(harness.create(manifest)["metadata"]["creationTimestamp"])
                fake.advance()
                condition = await harness.wait_for(lambda: permitted(harness))
                assert (condition["status"], condition["reason"]) == ("False", "AddressNotAllowed")
                assert condition["message"].startswith("spec.feedback.url: 'http://localhost:")
                assert "nor under one of the operator's allowedUrls" in condition["message"]
                await asyncio.sleep(1.0)
                assert snapshot_jobs(harness) == []

            await with_operator(harness, tmp_path, body)

    asyncio.run(scenario())


def test_a_token_secret_not_marked_for_tuneloop_is_refused_by_name_until_it_is(scene):
    """A tenant cannot hand the operator any Secret of its namespace: the schedule says which and
    how to mark it, starts nothing, and runs once the namespace has marked it."""
    tmp_path, fake, url = scene

    async def scenario():
        async with running_emulator(CRDS) as harness:
            create_token_secret(harness, labels={"tuneloop.dev/secret-usage": "judge"})  # marked, but not for this

            async def body():
                post_corrections(url, 6, 0)
                fake.start_at(harness.create(schedule_manifest(url))["metadata"]["creationTimestamp"])
                fake.advance()
                condition = await harness.wait_for(lambda: permitted(harness))
                assert (condition["status"], condition["reason"]) == ("False", "SecretNotAllowed")
                assert condition["message"].startswith("spec.feedback.tokenSecret: Secret default/tuneloop-feedback "
                                                       "is not marked for Tuneloop's feedback use: label it "
                                                       "tuneloop.dev/secret-usage=feedback")
                await asyncio.sleep(1.0)
                assert snapshot_jobs(harness) == [] and harness.list_objects(FTJ, "default") == []

                harness.patch(("v1", "Secret"), "default", "tuneloop-feedback",
                              {"metadata": {"labels": {"tuneloop.dev/secret-usage": "judge.feedback"}}})
                # The snapshot Job is created before the pass writes its status: wait for both.
                allowed = await harness.wait_for(
                    lambda: snapshot_jobs(harness) and permitted(harness)["status"] == "True" and permitted(harness))
                assert allowed["reason"] == "Allowed"

            await with_operator(harness, tmp_path, body)

    asyncio.run(scenario())
