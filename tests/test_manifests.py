"""The Kubernetes objects a FineTuneJob turns into: valid against the real schemas, secure, and shaped
for one GPU, several GPUs (torchrun) and several nodes (Indexed Job + rendezvous Service)."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest

from stage_results import improvement_test
from tuneloop.api.finetunejob import parse_manifest
from tuneloop.api.workloads import Preview, TrainerResult, compact_result
from tuneloop.config import OperatorConfig
from tuneloop.runtime.manifests import training_objects
from tuneloop.storage_uris import UnsupportedStorage

K8S_VERSION = "1.33.0"
CONFIG = OperatorConfig.model_validate({
    "catalog": {"llama-3.1-8b": "pvc://models/llama-3.1-8b"},
    "mlflowTrackingUri": "http://mlflow.tuneloop:5000",
    "imagePullSecrets": ["registry-creds"],
})
S3_CONFIG = CONFIG.model_copy(update={
    "catalog": {"llama-3.1-8b": "s3://models/llama-3.1-8b"},
    "s3_secret_name": "minio-credentials", "s3_endpoint": "http://minio.storage:9000", "inputs_size": "40Gi",
})


def job(**resources):
    return parse_manifest({
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "support-bot", "namespace": "ml", "uid": "0b5c6a2e-1111-4c3b-9d5e-2a0f6c1d7e90"},
        "spec": {
            "baseModel": {"name": "llama-3.1-8b"},
            "dataset": {"uri": "pvc://datasets/support/train.jsonl"},
            "method": {"type": "qlora"},
            "output": {"uri": "pvc://adapters/support-bot"},
            "resources": {"gpus": 1, "memory": "64Gi", "nodeSelector": {"gpu": "h100"},
                          "priorityClassName": "training", **resources},
        },
    })


def by_kind(objects):
    return {obj["kind"]: obj for obj in objects}


@pytest.mark.parametrize("resources", [{}, {"gpus": 2}, {"gpus": 8, "nodes": 2}])
def test_every_object_validates_against_the_kubernetes_schemas(resources):
    for obj in training_objects(job(**resources), "support-bot-train", CONFIG):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_finetunejob_name_of_253_characters_makes_valid_children():
    long_job = job()
    long_job.metadata.name = "support-bot-" + "x" * 241  # as long as a name may be
    objects = training_objects(long_job, "support-bot-train", CONFIG)
    label_value = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # what the API server accepts
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # the schemas say nothing of label values
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63 and label_value.match(value), value
        assert obj["metadata"]["labels"]["tuneloop.dev/finetunejob"].startswith("support-bot-x")
        assert obj["metadata"]["ownerReferences"][0]["name"] == long_job.metadata.name


def test_one_gpu_job_shape():
    objects = by_kind(training_objects(job(), "support-bot-train", CONFIG))
    assert set(objects) == {"ConfigMap", "Job"}
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["modelPath"] == "/mnt/pvc/models/llama-3.1-8b"
    assert workload["datasetPath"] == "/mnt/pvc/datasets/support/train.jsonl"
    assert workload["outputDir"] == "/mnt/pvc/adapters/support-bot"
    assert workload["tracking"]["trackingUri"] == "http://mlflow.tuneloop:5000"

    job_obj = objects["Job"]
    for obj in objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "0b5c6a2e-1111-4c3b-9d5e-2a0f6c1d7e90"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tuneloop"
        assert obj["metadata"]["labels"]["tuneloop.dev/finetunejob"] == "support-bot"
    pod = job_obj["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "tuneloop_trainer"]
    assert "/dev/termination-log" in container["command"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "64Gi"}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "training"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/adapters"]["readOnly"] is False  # checkpoints and the adapter go here
    assert mounts["/mnt/pvc/datasets"]["readOnly"] is True and mounts["/mnt/pvc/models"]["readOnly"] is True
    assert job_obj["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert job_obj["spec"]["backoffLimit"] >= 1 and job_obj["spec"]["activeDeadlineSeconds"] > 0


def test_pods_meet_pod_security_restricted():
    pod = by_kind(training_objects(job(), "support-bot-train", CONFIG))["Job"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory" and "emptyDir" in volumes["scratch"]


def test_a_cpu_training_pod_gets_the_allocator_settings_and_a_gpu_pod_does_not():
    def env(**resources):
        pod = by_kind(training_objects(job(**resources), "t", CONFIG))["Job"]["spec"]["template"]["spec"]
        return {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}

    assert env(gpus=0)["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20)
    assert "MALLOC_MMAP_THRESHOLD_" not in env(gpus=1)


def test_several_gpus_run_torchrun_on_one_node():
    container = by_kind(training_objects(job(gpus=4), "t", CONFIG))["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=4"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_several_nodes_run_an_indexed_job_with_a_rendezvous_service():
    objects = by_kind(training_objects(job(gpus=8, nodes=2), "support-bot-train", CONFIG))
    spec = objects["Job"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 2 and spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "support-bot-train"
    command = pod["containers"][0]["command"]
    assert command[:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=8"]
    assert "--rdzv-endpoint=support-bot-train-0.support-bot-train:29500" in command
    service = objects["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"tuneloop.dev/workload": "support-bot-train"}
    assert spec["template"]["metadata"]["labels"]["tuneloop.dev/workload"] == "support-bot-train"


def test_a_queued_multi_node_job_is_one_suspended_job_that_kueue_admits_as_a_whole():
    queued = job(gpus=8, nodes=2, workloadPriorityClassName="batch-low")
    queued.spec.queue_name = "team-a-gpus"
    batch_job = by_kind(training_objects(queued, "support-bot-train", CONFIG))["Job"]

    assert batch_job["spec"]["suspend"] is True  # Kueue unsuspends it: both pods start together
    assert (batch_job["spec"]["parallelism"], batch_job["spec"]["completions"]) == (2, 2)
    assert batch_job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert batch_job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "batch-low"
    kubernetes_validate.validate(batch_job, "1.33.0", strict=True)

    # The namespace's default queue from the operator's configuration, when the spec names none.
    defaulted = CONFIG.model_copy(update={"queueing": {"namespaces": {"ml": "ml-queue"}}})
    defaulted = type(CONFIG).model_validate(defaulted.model_dump())
    labels = by_kind(training_objects(job(), "support-bot-train", defaulted))["Job"]["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "ml-queue"


def test_without_a_queue_a_job_starts_at_once_as_before():
    batch_job = by_kind(training_objects(job(), "support-bot-train", CONFIG))["Job"]

    assert "suspend" not in batch_job["spec"]
    assert not any(label.startswith("kueue.x-k8s.io/") for label in batch_job["metadata"]["labels"])


def test_storage_that_cannot_be_mounted_is_refused_with_the_field_named():
    manifest = job().to_wire()
    manifest["spec"]["output"]["uri"] = "s3://bucket/adapters"
    with pytest.raises(UnsupportedStorage, match="the output must be a pvc:// folder .* s3:// serves inputs only"):
        training_objects(parse_manifest(manifest), "t", CONFIG)
    manifest = job().to_wire()
    manifest["spec"]["baseModel"] = {"name": "mistral-7b"}
    with pytest.raises(UnsupportedStorage, match="spec.baseModel.name: 'mistral-7b' is not in the cluster's"):
        training_objects(parse_manifest(manifest), "t", CONFIG)


def s3_job(**resources):
    manifest = job(**resources).to_wire()
    manifest["spec"]["dataset"] = {"uri": "s3://datasets/support/train.jsonl",
                                   "replay": {"uri": "s3://datasets/general/replay.parquet"}}
    return parse_manifest(manifest)


@pytest.mark.parametrize("resources", [{}, {"gpus": 8, "nodes": 2}])
def test_s3_inputs_validate_against_the_kubernetes_schemas(resources):
    for obj in training_objects(s3_job(**resources), "support-bot-train", S3_CONFIG):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_s3_inputs_are_fetched_by_init_containers_before_the_trainer():
    objects = by_kind(training_objects(s3_job(), "support-bot-train", S3_CONFIG))
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["modelPath"] == "/inputs/model"
    assert workload["datasetPath"] == "/inputs/dataset/train.jsonl"
    assert workload["dataset"]["replay"]["uri"] == "s3://datasets/general/replay.parquet"
    assert workload["replayPath"] == "/inputs/replay/replay.parquet"
    assert workload["outputDir"] == "/mnt/pvc/adapters/support-bot"

    job_spec = objects["Job"]["spec"]
    pod = job_spec["template"]["spec"]
    fetches = {container["name"]: container for container in pod["initContainers"]}
    assert list(fetches) == ["fetch-model", "fetch-dataset", "fetch-replay"]
    assert fetches["fetch-model"]["command"] == [
        "python", "-m", "tuneloop_trainer.fetch", "s3://models/llama-3.1-8b", "/inputs/model"]
    assert fetches["fetch-dataset"]["command"][-2:] == ["s3://datasets/support/train.jsonl", "/inputs/dataset"]
    for fetch in fetches.values():
        assert fetch["image"] == pod["containers"][0]["image"]
        assert fetch["securityContext"] == pod["containers"][0]["securityContext"]
        assert "nvidia.com/gpu" not in fetch["resources"]["limits"]
        assert fetch["volumeMounts"] == [{"name": "inputs", "mountPath": "/inputs"}]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["inputs"] == {"name": "inputs", "emptyDir": {"sizeLimit": "40Gi"}}
    trainer_mounts = {mount["name"]: mount for mount in pod["containers"][0]["volumeMounts"]}
    assert trainer_mounts["inputs"] == {"name": "inputs", "mountPath": "/inputs", "readOnly": True}
    assert "pvc-models" not in volumes and "pvc-datasets" not in volumes
    failing_fast = [rule["onExitCodes"]["containerName"] for rule in job_spec["podFailurePolicy"]["rules"]
                    if rule["action"] == "FailJob"]
    assert failing_fast == ["trainer", "fetch-model", "fetch-dataset", "fetch-replay"]


def test_an_s3_preference_file_is_fetched_beside_the_dataset():
    manifest = s3_job().to_wire()
    manifest["spec"]["method"]["objective"] = "dpo"
    manifest["spec"]["dataset"]["preferences"] = {"uri": "s3://datasets/support/pairs.jsonl"}
    objects = by_kind(training_objects(parse_manifest(manifest), "support-bot-train", S3_CONFIG))
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["preferencesPath"] == "/inputs/preferences/pairs.jsonl"
    fetches = {container["name"]: container for container in
               objects["Job"]["spec"]["template"]["spec"]["initContainers"]}
    assert fetches["fetch-preferences"]["command"][-2:] == ["s3://datasets/support/pairs.jsonl",
                                                            "/inputs/preferences"]


def test_s3_credentials_come_from_the_secret_by_reference_only():
    pod = by_kind(training_objects(s3_job(), "t", S3_CONFIG))["Job"]["spec"]["template"]["spec"]
    env = {item["name"]: item for item in pod["initContainers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
        "name": "minio-credentials", "key": "AWS_ACCESS_KEY_ID"}}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"}
    trainer_env = {item["name"] for item in pod["containers"][0]["env"]}
    assert not trainer_env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # only the fetch holds them

    renamed_keys = S3_CONFIG.model_copy(update={"s3_access_key_id_key": "accesskey",
                                                "s3_secret_access_key_key": "secretkey"})
    pod = by_kind(training_objects(s3_job(), "t", renamed_keys))["Job"]["spec"]["template"]["spec"]
    keys = [item["valueFrom"]["secretKeyRef"]["key"] for item in pod["initContainers"][0]["env"] if "valueFrom" in item]
    assert keys == ["accesskey", "secretkey"]


def test_s3_inputs_without_a_secret_use_the_pods_own_identity():
    ambient = S3_CONFIG.model_copy(update={"s3_secret_name": None, "s3_endpoint": None})
    pod = by_kind(training_objects(s3_job(), "t", ambient))["Job"]["spec"]["template"]["spec"]
    assert all(container["env"] == [] for container in pod["initContainers"])


def test_pvc_inputs_need_no_init_containers():
    pod = by_kind(training_objects(job(), "t", CONFIG))["Job"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod and "inputs" not in {volume["name"] for volume in pod["volumes"]}


def test_an_s3_dataset_must_name_one_object():
    manifest = job().to_wire()
    manifest["spec"]["dataset"]["uri"] = "s3://datasets/support/"
    with pytest.raises(UnsupportedStorage, match="names a folder; give one object"):
        training_objects(parse_manifest(manifest), "t", CONFIG)


def test_the_result_fits_a_termination_message():
    previews = [Preview(prompt="p" * 500, reference="r" * 500, base="b" * 500, tuned="t" * 500)] * 5
    result = TrainerResult(succeeded=True, steps=10, validation_loss_before=2.0, validation_loss_after=1.0,
                           adapter_path="/mnt/pvc/adapters/x/adapter", previews=previews)
    text = compact_result(result)
    assert len(text) <= 4096
    assert json.loads(text)["validationLossAfter"] == 1.0 and "previews" not in json.loads(text)
    failed = compact_result(TrainerResult(succeeded=False, reason="InvalidData", message="x" * 10000))
    assert len(failed) <= 4096 and json.loads(failed)["reason"] == "InvalidData"


# --- the evaluate and register stages ---

def stage_job(stage: str, inputs: dict, config=CONFIG, **spec):
    from tuneloop.reconcile.finetunejob import LaunchWorkload
    from tuneloop.runtime.manifests import workload_objects

    manifest = job(gpus=2)
    if spec:
        manifest = parse_manifest({**manifest.model_dump(by_alias=True, exclude_none=True, mode="json"),
                                   "spec": {**manifest.spec.to_wire(), **spec}})
    return by_kind(workload_objects(manifest, LaunchWorkload(stage, f"support-bot-{stage}", inputs), config))


def test_the_data_check_job_reads_every_input_on_a_cpu_before_any_gpu_is_requested():
    gpu_nodes = CONFIG.model_copy(update={"default_node_selector": {"nvidia.com/gpu.present": "true"}})
    resources = {**job().spec.resources.to_wire(), "gpus": 2, "nodes": 2}
    objects = stage_job("validate", {}, config=gpu_nodes, resources=resources)
    training = stage_job("train", {}, config=gpu_nodes, resources=resources)["Job"]["spec"]["template"]["spec"]
    assert training["nodeSelector"] == {"nvidia.com/gpu.present": "true", "gpu": "h100"}
    assert training["tolerations"] == gpu_nodes.default_tolerations
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    job_spec = objects["Job"]["spec"]
    pod = job_spec["template"]["spec"]
    assert "completionMode" not in job_spec  # one pod, whatever the training's nodes
    (container,) = pod["containers"]
    assert container["name"] == "check-data" and container["image"] == CONFIG.images.trainer
    assert container["command"][:3] == ["python", "-m", "tuneloop_trainer.check_data"]
    data_check = {"cpu": "1", "memory": "4Gi"}
    assert container["resources"] == {"limits": data_check, "requests": data_check}
    assert pod["tolerations"] == []            # no GPU node taints tolerated: it runs on any CPU node
    assert pod["nodeSelector"] == {"gpu": "h100"}  # the job's own selector (data locality) still applies
    assert all(mount.get("readOnly") for mount in container["volumeMounts"] if mount["name"].startswith("pvc-"))
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["worldSize"] == 4  # 2 GPUs x 2 nodes: the step estimate is the training's
    assert workload["datasetPath"] == "/mnt/pvc/datasets/support/train.jsonl"
    failing_fast = [rule["onExitCodes"]["containerName"] for rule in job_spec["podFailurePolicy"]["rules"]
                    if rule["action"] == "FailJob"]
    assert failing_fast == ["check-data"]  # bad data is the data's fault: no retry


def test_the_data_check_fetches_an_s3_model_without_its_weights():
    from tuneloop.reconcile.finetunejob import LaunchWorkload
    from tuneloop.runtime.manifests import WEIGHT_FILES, workload_objects

    objects = by_kind(workload_objects(s3_job(), LaunchWorkload("validate", "support-bot-validate"), S3_CONFIG))
    fetches = {c["name"]: c["command"] for c in objects["Job"]["spec"]["template"]["spec"]["initContainers"]}
    assert list(fetches) == ["fetch-model", "fetch-dataset", "fetch-replay"]
    model = fetches["fetch-model"]
    assert model[-2:] == ["s3://models/llama-3.1-8b", "/inputs/model"]
    assert [model[i + 1] for i, word in enumerate(model) if word == "--exclude"] == list(WEIGHT_FILES)
    assert "--exclude" not in fetches["fetch-dataset"]
    training = by_kind(training_objects(s3_job(), "support-bot-train", S3_CONFIG))
    assert "--exclude" not in training["Job"]["spec"]["template"]["spec"]["initContainers"][0]["command"]


EVALUATE_INPUTS = {"adapter_uri": "pvc://adapters/support-bot/adapter",
                   "test_uri": "pvc://adapters/support-bot/test.jsonl", "training_run_id": "r1"}


def test_the_evaluation_job_runs_the_evaluator_on_one_gpu_with_the_judge_key_from_its_secret():
    judge = {"url": "http://judge.llm:8000/v1", "model": "judge", "apiKeySecret": {"name": "judge", "key": "token"}}
    objects = stage_job("evaluate", EVALUATE_INPUTS, evaluation={"judge": judge})
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    container = objects["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "evaluator" and container["image"] == CONFIG.images.evaluator
    assert container["command"][:3] == ["python", "-m", "tuneloop_evaluator"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    key = next(env for env in container["env"] if env["name"] == "TUNELOOP_JUDGE_API_KEY")
    assert key == {"name": "TUNELOOP_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge", "key": "token"}}}
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["adapterPath"] == "/mnt/pvc/adapters/support-bot/adapter"
    assert workload["registeredModel"] == "support-bot"
    assert "apiKey" not in json.dumps(workload).replace("apiKeySecret", "")


def test_the_registration_job_reads_the_adapter_without_a_gpu_and_fetches_nothing():
    inputs = {"adapter_uri": "pvc://adapters/support-bot/adapter", "set_challenger": True, "set_champion": True,
              "tags": {"tuneloop.dev/gate": "passed"}, "metrics": {"eval_exactMatch": 0.6}}
    objects = stage_job("register", inputs, config=S3_CONFIG)
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = objects["Job"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # the s3:// base model is not needed to register an adapter
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    assert all(mount.get("readOnly") for mount in pod["containers"][0]["volumeMounts"]
               if mount["name"].startswith("pvc-"))
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["jobUid"] == "0b5c6a2e-1111-4c3b-9d5e-2a0f6c1d7e90"
    assert workload["tags"]["tuneloop.dev/job-uid"] == workload["jobUid"]
    assert workload["setChampion"] is True


def test_the_augment_job_asks_the_teacher_from_a_cpu_node_with_the_key_from_its_secret():
    gpu_nodes = CONFIG.model_copy(update={"default_node_selector": {"nvidia.com/gpu.present": "true"}})
    teacher = {"url": "http://teacher.llm:8000/v1", "model": "qwen2.5-72b-instruct",
               "apiKeySecret": {"name": "teacher", "key": "token"}}
    dataset = {**job().spec.dataset.to_wire(), "augment": {"teacher": teacher, "targetRows": 500}}
    objects = stage_job("augment", {}, config=gpu_nodes, dataset=dataset)
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = objects["Job"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "augment" and container["image"] == CONFIG.images.trainer
    assert container["command"][:3] == ["python", "-m", "tuneloop_trainer.augment"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert pod["tolerations"] == [] and pod["nodeSelector"] == {"gpu": "h100"}  # no GPU node asked for
    key = next(env for env in container["env"] if env["name"] == "TUNELOOP_TEACHER_API_KEY")
    assert key["valueFrom"] == {"secretKeyRef": {"name": "teacher", "key": "token"}}
    writable = [mount["mountPath"] for mount in container["volumeMounts"]
                if mount["name"].startswith("pvc-") and not mount.get("readOnly")]
    assert writable == ["/mnt/pvc/adapters"]  # the synthetic rows are written beside the adapter-to-be
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["teacherKeyEnv"] == "TUNELOOP_TEACHER_API_KEY"
    assert workload["outputDir"] == "/mnt/pvc/adapters/support-bot"


def test_training_reads_the_synthetic_rows_the_augment_stage_wrote():
    objects = stage_job("train", {"synthetic_uri": "pvc://adapters/support-bot/synthetic/synthetic-0a1b.jsonl"})
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["syntheticPath"] == "/mnt/pvc/adapters/support-bot/synthetic/synthetic-0a1b.jsonl"
    assert "mergeAdapter" not in workload  # the trainer no longer merges: the export stage does, after the gate


def test_the_export_job_merges_and_converts_on_one_gpu_with_the_trainer_image():
    objects = stage_job("export", {"adapter_uri": "pvc://adapters/support-bot/adapter",
                                   "test_uri": "pvc://adapters/support-bot/test.jsonl"},
                        output={"uri": "pvc://adapters/support-bot", "export": ["merged", "gguf"],
                                "gguf": {"type": "q4_0"}})
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (container,) = objects["Job"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "export" and container["image"] == CONFIG.images.trainer
    assert container["command"][:3] == ["python", "-m", "tuneloop_trainer.export"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    workload = json.loads(objects["ConfigMap"]["data"]["workload.json"])
    assert workload["formats"] == ["merged", "gguf"] and workload["gguf"]["type"] == "q4_0"
    assert (workload["adapterPath"], workload["outputDir"]) == ("/mnt/pvc/adapters/support-bot/adapter",
                                                              "/mnt/pvc/adapters/support-bot")


def test_a_full_evaluation_result_fits_the_termination_message():
    from tuneloop.api.evaluation import METRICS, PAIRED_ONLY
    from tuneloop.api.workloads import EvaluatorResult

    score = {"value": 0.23333333333333334, "low": 0.06666666666666667, "high": 0.4000000000000001}
    comparison = {"examples": 200, "candidate": {metric: score for metric in METRICS},
                  "baseline": {m: score for m in METRICS if m not in PAIRED_ONLY},
                  "difference": {m: score for m in METRICS if m not in PAIRED_ONLY}}
    gate_tests = [improvement_test(metric) for metric in METRICS if metric not in PAIRED_ONLY]
    for test in gate_tests:
        test["warning"] = f"{test['metric']}: 30 test rows detect +0.21 with 80% power; +0.10 needs about 120"
    judge = {"configured": True, "model": "qwen2.5-7b-instruct", "judged": 800, "unparseable": 12, "malformed": 9,
             "refusals": 2, "rambles": 1, "repeated": 8, "selfAgreement": 0.875, "positionFlips": 0.1,
             "trusted": True}
    result = EvaluatorResult.model_validate({
        "succeeded": True, "baseline": "champion", "baselineVersion": "12", "tests": gate_tests, "test": comparison,
        "regression": comparison, "regressedRows": 3, "general": comparison, "judge": judge,
        "recordsPath": "/mnt/pvc/adapters/support-bot/evaluation/evaluation-records.jsonl",
        "warnings": [test["warning"] for test in gate_tests], "message": "judge skipped nothing; " * 20})

    text = compact_result(result)

    assert len(text) <= 4096
    compacted = EvaluatorResult.model_validate_json(text)
    assert [(test.check, test.passed, test.p_holm) for test in compacted.tests] == [
        (test["check"], True, 0.0005) for test in gate_tests], "every gate test survives, with its verdict"
    assert compacted.judge.self_agreement == 0.875 and compacted.regressed_rows == 3
    assert compacted.test.candidate["exactMatch"].value == 0.2333
    assert compacted.test.difference["rougeL"].low == 0.0667
