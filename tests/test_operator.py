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
from stage_results import DATA_CHECKED, improvement_test

REPO = Path(__file__).resolve().parents[1]
CRDS = list(yaml.safe_load_all((REPO / "crds" / "tuneloop.dev_crds.yaml").read_text()))
EXAMPLE = yaml.safe_load((REPO / "examples" / "cluster" / "finetunejob.yaml").read_text())
FTJ = ("tuneloop.dev/v1alpha1", "FineTuneJob")
JOB = ("batch/v1", "Job")
CONFIGMAP = ("v1", "ConfigMap")
POD = ("v1", "Pod")
WORKLOAD = "acme-tickets-train"
DATA_CHECK = "acme-tickets-validate"


@pytest.fixture
def operator_env(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"catalog": {"smollm2-135m-instruct": "pvc://models/smollm2-135m-instruct"},
                                      "mlflowTrackingUri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
    monkeypatch.setenv("TUNELOOP_RECONCILE_INTERVAL", "0.5")
    return tmp_path


async def run_operator(harness, body, *, kubeconfig_dir: Path):
    """Run the operator against the emulator while body() plays the cluster; KUBECONFIG is restored after."""
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(harness.write_kubeconfig(kubeconfig_dir / "kubeconfig"))
    try:
        async with harness.kopf_operator(handlers_registry("tuneloop.handlers")):
            await body()
    finally:
        if previous is None:
            del os.environ["KUBECONFIG"]
        else:
            os.environ["KUBECONFIG"] = previous


def terminated_pod(harness, name: str, terminated: dict, workload: str = WORKLOAD) -> None:
    """Play the kubelet: a pod of the workload whose main container ended as `terminated` says."""
    container = harness.get(JOB, "default", workload)["spec"]["template"]["spec"]["containers"][0]["name"]
    harness.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": "default", "labels": {"tuneloop.dev/workload": workload, "job-name": workload}},
        "spec": {"containers": [{"name": container, "image": "image"}]}})
    harness.patch_status(POD, "default", name, {
        "phase": "Succeeded" if terminated["exitCode"] == 0 else "Failed",
        "containerStatuses": [{"name": container, "ready": False, "restartCount": 0, "image": "image",
                               "imageID": "", "state": {"terminated": terminated}}]})


def finish_job(harness, result: dict, workload: str = WORKLOAD) -> None:
    """Play the kubelet and the Job controller: the workload wrote its result and the Job completed."""
    terminated_pod(harness, f"{workload}-x1", {"exitCode": 0, "reason": "Completed", "message": json.dumps(result)},
                   workload)
    harness.patch_status(JOB, "default", workload, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-23T10:00:00Z"}]})


def fail_job(harness, result: dict, workload: str) -> None:
    """The workload exited 1 with its result: the pod failure policy fails the Job at once."""
    terminated_pod(harness, f"{workload}-x1", {"exitCode": 1, "reason": "Error", "message": json.dumps(result)},
                   workload)
    harness.patch_status(JOB, "default", workload, {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 1",
         "lastTransitionTime": "2026-11-23T10:00:00Z"}]})


async def job_in_phase(harness, phase: str) -> dict:
    """Wait until the example FineTuneJob reaches `phase`; return it."""
    def current():
        ftj = harness.get(FTJ, "default", "acme-tickets") or {}
        return ftj if ftj.get("status", {}).get("phase") == phase else None
    return await harness.wait_for(current)


RESULT = {"succeeded": True, "steps": 68, "validationLossBefore": 4.08, "validationLossAfter": 0.05, "trainLoss": 0.05,
          "tokensPerSecond": 5000.0, "seconds": 60.0, "adapterPath": "/mnt/pvc/adapters/acme-tickets/adapter",
          "testPath": "/mnt/pvc/adapters/acme-tickets/test.jsonl",
          "dataset": {"rows": 300, "trainRows": 270, "validationRows": 30, "testRows": 30, "trainTokens": 27894,
                      "format": "alpaca", "sha256": "ab" * 32}}


SCORE = {"value": 0.6, "low": 0.43, "high": 0.77}
EVALUATED = {"succeeded": True, "baseline": "base", "judge": {"configured": False},
             "recordsPath": "/mnt/pvc/adapters/acme-tickets/evaluation/evaluation-records.jsonl",
             "tests": [improvement_test()], "test": {"examples": 30, "candidate": {"exactMatch": SCORE},
                         "baseline": {"exactMatch": {"value": 0.0, "low": 0.0, "high": 0.0}},
                         "difference": {"exactMatch": SCORE}}}
REGISTERED = {"succeeded": True, "modelName": "acme-tickets", "version": "1", "uri": "models:/acme-tickets/1",
              "aliases": ["challenger", "champion"], "runId": "r1"}


def validated(obj: dict) -> dict:
    kubernetes_validate.validate(obj, "1.33.0", strict=True)
    return obj


def test_the_example_runs_through_training_evaluation_and_registration(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                finish_job(harness, RESULT, await data_checked(harness))
                evaluate = validated(await harness.wait_for(lambda: harness.get(JOB, "default", "acme-tickets-evaluate")))
                await job_in_phase(harness, "Evaluating")
                pod = evaluate["spec"]["template"]["spec"]
                assert pod["containers"][0]["command"][:3] == ["python", "-m", "tuneloop_evaluator"]
                spec = json.loads(validated(harness.get(CONFIGMAP, "default", "acme-tickets-evaluate"))
                                  ["data"]["workload.json"])
                assert spec["adapterPath"] == "/mnt/pvc/adapters/acme-tickets/adapter"
                assert spec["testPath"] == "/mnt/pvc/adapters/acme-tickets/test.jsonl"

                finish_job(harness, EVALUATED, "acme-tickets-evaluate")
                register = validated(await harness.wait_for(lambda: harness.get(JOB, "default", "acme-tickets-register")))
                assert "nvidia.com/gpu" not in register["spec"]["template"]["spec"]["containers"][0]["resources"].get(
                    "limits", {})
                spec = json.loads(harness.get(CONFIGMAP, "default", "acme-tickets-register")["data"]["workload.json"])
                assert spec["setChampion"] and spec["tags"]["tuneloop.dev/gate"] == "passed"
                assert spec["jobUid"] == harness.get(FTJ, "default", "acme-tickets")["metadata"]["uid"]

                finish_job(harness, REGISTERED, "acme-tickets-register")
                done = await job_in_phase(harness, "Succeeded")
                assert done["status"]["evaluation"]["score"] == 0.6
                assert done["status"]["evaluation"]["gate"]["passed"] is True
                assert done["status"]["registry"]["uri"] == "models:/acme-tickets/1"
                await asyncio.sleep(1.0)

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert len(harness.list_objects(JOB, include_deleted=True)) == 4
            reasons = {e.get("reason") for e in harness.list_objects(("v1", "Event"), "default")}
            assert {"DataValidated", "Trained", "GatePassed", "Evaluated", "Registered", "Succeeded"} <= reasons
            harness.assert_event_precedes(FTJ, "default", "acme-tickets", "Succeeded", "Succeeded")
            harness.assert_event_precedes(FTJ, "default", "acme-tickets", "EvaluatingStarted", "Evaluating")

    asyncio.run(scenario())


def test_an_unreachable_registry_is_retried_with_a_new_job_and_nothing_is_lost(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                finish_job(harness, RESULT, await data_checked(harness))
                finish_job(harness, EVALUATED, await job_named(harness, "acme-tickets-evaluate"))
                first = await job_named(harness, "acme-tickets-register")
                uid = harness.get(JOB, "default", first)["metadata"]["uid"]
                fail_job(harness, {"succeeded": False, "reason": "RegistryUnavailable",
                                   "message": "MLflow at http://mlflow:5000 unreachable for 120 s"}, first)
                retry = await harness.wait_for(lambda: (job := harness.get(JOB, "default", first))
                                               and job["metadata"]["uid"] != uid and job)
                # the retry Job is created during the pass; the status (its condition) is written at its end
                condition = await harness.wait_for(lambda: next(
                    (c for c in (harness.get(FTJ, "default", "acme-tickets").get("status") or {}).get("conditions", [])
                     if c["type"] == "RegistryUnavailable"), None))
                assert condition["status"] == "True" and "unreachable" in condition["message"]
                assert "conditions" not in retry.get("status", {})
                harness.delete(POD, "default", f"{first}-x1")  # the garbage collector follows the old Job
                finish_job(harness, REGISTERED, first)
                await job_in_phase(harness, "Succeeded")

            await run_operator(harness, body, kubeconfig_dir=operator_env)

    asyncio.run(scenario())


def test_an_unavailable_judge_fails_the_job_with_that_reason(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                finish_job(harness, RESULT, await data_checked(harness))
                fail_job(harness, {"succeeded": False, "reason": "JudgeUnavailable",
                                   "message": "judge at http://judge:8000/v1 unreachable after 4 retries"},
                         await job_named(harness, "acme-tickets-evaluate"))
                failed = await job_in_phase(harness, "Failed")
                condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
                assert condition["reason"] == "JudgeUnavailable"
                assert "unreachable after 4 retries" in condition["message"]

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert harness.get(JOB, "default", "acme-tickets-register") is None

    asyncio.run(scenario())


async def job_named(harness, name: str) -> str:
    """Wait until the operator has created the Job; return its name."""
    await harness.wait_for(lambda: harness.get(JOB, "default", name))
    return name


async def data_checked(harness) -> str:
    """Play the Validating stage: its Job found the data good. Returns the training Job's name."""
    finish_job(harness, DATA_CHECKED, await job_named(harness, DATA_CHECK))
    return await job_named(harness, WORKLOAD)


def test_applying_the_example_creates_one_configmap_and_one_job_and_results_flow_back(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                check = validated(await harness.wait_for(lambda: harness.get(JOB, "default", DATA_CHECK)))
                ftj = await job_in_phase(harness, "Validating")
                assert ftj["status"]["conditions"][0]["type"] == "SpecValid"
                assert harness.get(JOB, "default", WORKLOAD) is None  # no GPU is asked for before the data is read
                container = check["spec"]["template"]["spec"]["containers"][0]
                assert container["command"][:3] == ["python", "-m", "tuneloop_trainer.check_data"]
                assert "nvidia.com/gpu" not in container["resources"]["limits"]

                finish_job(harness, DATA_CHECKED, DATA_CHECK)
                job = await harness.wait_for(lambda: harness.get(JOB, "default", WORKLOAD))
                ftj = await job_in_phase(harness, "Training")
                assert ftj["status"]["dataReport"]["estimatedSteps"] == 68
                assert ftj["status"]["dataset"]["rows"] == 300
                kubernetes_validate.validate(job, "1.33.0", strict=True)
                configmap = harness.get(CONFIGMAP, "default", WORKLOAD)
                kubernetes_validate.validate(configmap, "1.33.0", strict=True)
                assert json.loads(configmap["data"]["workload.json"])["modelPath"] == "/mnt/pvc/models/smollm2-135m-instruct"
                assert job["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]

                finish_job(harness, RESULT)
                done = await job_in_phase(harness, "Evaluating")
                assert done["status"]["training"]["adapterUri"] == "pvc://adapters/acme-tickets/adapter"
                assert done["status"]["training"]["validationLossAfter"] == 0.05
                await asyncio.sleep(1.5)  # a few more timer periods: nothing more may happen

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert len(harness.list_objects(JOB, include_deleted=True, label_selector="tuneloop.dev/stage=train")) == 1
            assert len(harness.list_objects(CONFIGMAP, "default", include_deleted=True,
                                            label_selector="tuneloop.dev/stage=train")) == 1
            assert None not in harness.history(JOB, "default", WORKLOAD)  # never deleted and re-created
            reasons = {e.get("reason") for e in harness.list_objects(("v1", "Event"), "default")}
            assert {"ValidatingStarted", "DataValidated", "TrainingStarted", "Trained", "EvaluatingStarted"} <= reasons

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
                harness.assert_event_precedes(FTJ, "default", "acme-tickets", "InvalidSpec", "Failed")
                await asyncio.sleep(1.0)

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert harness.list_objects(JOB, include_deleted=True) == []

    asyncio.run(scenario())


def test_bad_data_fails_the_job_at_validating_and_no_gpu_is_ever_requested(operator_env):
    message = "/mnt/pvc/datasets/tickets.jsonl: 2 bad rows of 300: ...:7: broken JSON; ...:9: no 'output'"

    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                fail_job(harness, {"succeeded": False, "reason": "InvalidData", "message": message, "badRows": 2},
                         await job_named(harness, DATA_CHECK))
                failed = await job_in_phase(harness, "Failed")
                condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
                assert (condition["reason"], condition["message"]) == ("InvalidData", message)
                await asyncio.sleep(1.0)

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert [j["metadata"]["name"] for j in harness.list_objects(JOB, include_deleted=True)] == [DATA_CHECK]

    asyncio.run(scenario())


def with_judge_key(name: str, secret: str) -> dict:
    manifest = json.loads(json.dumps(EXAMPLE))
    manifest["metadata"]["name"] = name
    manifest["spec"]["evaluation"]["judge"] = {"url": "http://judge.default.svc:8000/v1", "model": "judge",
                                               "apiKeySecret": {"name": secret, "key": "token"}}
    return manifest


def secret(name: str, usage: str | None, data: dict | None = None) -> dict:
    labels = {"tuneloop.dev/secret-usage": usage} if usage else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default", "labels": labels},
            "data": {"token": "czNjcmV0"} if data is None else data}


def test_a_judge_key_the_namespace_has_not_marked_for_tuneloop_fails_the_job_before_any_pod(operator_env):
    """A tenant may not hand any Secret of its namespace to a pod the operator creates: only one labelled
    tuneloop.dev/secret-usage for the judge (or allow-listed by the admin) is mounted."""
    async def scenario():
        async with running_emulator(CRDS) as harness:
            harness.create(secret("db-password", None))
            harness.create(secret("judge-key", "judge"))
            harness.create(secret("wrong-key", "judge", {"other": "eA=="}))

            async def body():
                for name, key in (("steals", "db-password"), ("missing", "no-such-secret"),
                                  ("typo", "wrong-key"), ("marked", "judge-key")):
                    harness.create(with_judge_key(name, key))
                teacher = with_judge_key("teacher", "judge-key")  # marked for the judge, not for a teacher
                teacher["spec"]["dataset"]["augment"] = {"targetRows": 400, "teacher": {
                    "url": "http://teacher.default.svc:8000/v1", "model": "teacher",
                    "apiKeySecret": {"name": "judge-key", "key": "token"}}}
                harness.create(teacher)

                def phase(name):
                    return ((harness.get(FTJ, "default", name) or {}).get("status") or {}).get("phase")
                await harness.wait_for(lambda: phase("steals") == "Failed" and phase("missing") == "Failed"
                                       and phase("typo") == "Failed" and phase("marked") == "Validating"
                                       and phase("teacher") == "Failed")
                messages = {}
                for name in ("steals", "missing", "typo", "teacher"):
                    failed = next(c for c in harness.get(FTJ, "default", name)["status"]["conditions"]
                                  if c["type"] == "Failed")
                    assert failed["reason"] == "SecretNotAllowed"
                    messages[name] = failed["message"]
                assert messages["steals"].startswith("spec.evaluation.judge.apiKeySecret: Secret default/db-password "
                                                     "is not marked for Tuneloop's judge use: label it "
                                                     "tuneloop.dev/secret-usage=judge")
                assert messages["missing"] == ("spec.evaluation.judge.apiKeySecret: Secret default/no-such-secret "
                                               "does not exist")
                assert messages["typo"] == "spec.evaluation.judge.apiKeySecret: Secret default/wrong-key has no key 'token'"
                assert messages["teacher"].startswith(
                    "spec.dataset.augment.teacher.apiKeySecret: Secret default/judge-key is not marked for Tuneloop's "
                    "teacher use: label it tuneloop.dev/secret-usage=teacher")

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert [j["metadata"]["name"] for j in harness.list_objects(JOB, include_deleted=True)] == [
                "marked-validate"]

    asyncio.run(scenario())


def test_a_judge_outside_the_namespace_and_the_allow_list_fails_the_job_before_any_pod(operator_env):
    manifest = with_judge_key("elsewhere", "judge-key")
    manifest["spec"]["evaluation"]["judge"]["url"] = "http://judge.team-b.svc:8000/v1"

    async def scenario():
        async with running_emulator(CRDS) as harness:
            harness.create(secret("judge-key", "judge"))

            async def body():
                harness.create(manifest)
                failed = await harness.wait_for(lambda: next(
                    (c for c in ((harness.get(FTJ, "default", "elsewhere") or {}).get("status") or {}).get(
                        "conditions", []) if c["type"] == "Failed"), None))
                assert failed["reason"] == "AddressNotAllowed"
                assert failed["message"].startswith("spec.evaluation.judge.url: 'http://judge.team-b.svc:8000/v1' is "
                                                    "neither a Service of namespace default")

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            assert harness.list_objects(JOB, include_deleted=True) == []

    asyncio.run(scenario())


def test_the_admin_may_allow_list_a_secret_by_name(operator_env):
    config = operator_env / "config.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "allowedSecrets": ["default/shared-judge"]}))

    async def scenario():
        async with running_emulator(CRDS) as harness:
            harness.create(secret("shared-judge", None))

            async def body():
                harness.create(with_judge_key("allowed", "shared-judge"))
                await harness.wait_for(lambda: harness.get(JOB, "default", "allowed-validate"))

            await run_operator(harness, body, kubeconfig_dir=operator_env)

    asyncio.run(scenario())


def test_a_pod_killed_for_memory_fails_the_job_with_that_reason(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                await data_checked(harness)
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


def test_an_operator_restarted_in_every_phase_creates_nothing_twice(operator_env):
    """Stop the operator in Validating, Training, Evaluating and Registering and start a new one each time."""
    stages = ("validate", "train", "evaluate", "register")
    results = {"validate": DATA_CHECKED, "train": RESULT, "evaluate": EVALUATED, "register": REGISTERED}

    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def start():
                harness.create(EXAMPLE)
                await job_named(harness, DATA_CHECK)

            def finish(stage: str, then: str | None):
                async def body():
                    await asyncio.sleep(1.0)  # resume handlers and timers run against the existing objects
                    finish_job(harness, results[stage], f"acme-tickets-{stage}")
                    if then:
                        await job_named(harness, f"acme-tickets-{then}")
                    else:
                        await job_in_phase(harness, "Succeeded")
                return body

            await run_operator(harness, start, kubeconfig_dir=operator_env)
            for stage, then in zip(stages, (*stages[1:], None)):
                await run_operator(harness, finish(stage, then), kubeconfig_dir=operator_env)
            for stage in stages:
                selector = f"tuneloop.dev/stage={stage}"
                assert len(harness.list_objects(JOB, include_deleted=True, label_selector=selector)) == 1
                assert len(harness.list_objects(CONFIGMAP, "default", include_deleted=True,
                                                label_selector=selector)) == 1

    asyncio.run(scenario())


def test_an_operator_killed_between_the_configmap_and_the_job_finishes_the_launch(operator_env):
    """Status is written last: a crash after the ConfigMap leaves the job Pending with its ConfigMap."""
    from tuneloop.api.finetunejob import FineTuneJob
    from tuneloop.config import load_config
    from tuneloop.runtime.manifests import data_check_objects

    async def scenario():
        async with running_emulator(CRDS) as harness:
            ftj = harness.create(EXAMPLE)
            configmap = data_check_objects(FineTuneJob.model_validate(ftj), DATA_CHECK, load_config())[0]
            left_behind = harness.create(configmap)

            async def body():
                await job_named(harness, DATA_CHECK)
                await job_in_phase(harness, "Validating")

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            configmaps = harness.list_objects(CONFIGMAP, "default", include_deleted=True,
                                              label_selector="tuneloop.dev/stage=validate")
            assert [c["metadata"]["uid"] for c in configmaps] == [left_behind["metadata"]["uid"]]
            assert len(harness.list_objects(JOB, include_deleted=True)) == 1

    asyncio.run(scenario())


def test_deleting_a_finetunejob_removes_what_it_owns(operator_env):
    async def scenario():
        async with running_emulator(CRDS) as harness:
            async def body():
                harness.create(EXAMPLE)
                await data_checked(harness)
                harness.delete(FTJ, "default", "acme-tickets")
                await harness.wait_for(lambda: harness.get(FTJ, "default", "acme-tickets") is None)

            await run_operator(harness, body, kubeconfig_dir=operator_env)
            for name in (DATA_CHECK, WORKLOAD):
                assert harness.get(JOB, "default", name) is None
                assert harness.get(CONFIGMAP, "default", name) is None

    asyncio.run(scenario())

