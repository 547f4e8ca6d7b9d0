"""Kubernetes objects for a FineTuneJob's workloads, as plain dicts (pure: no API calls here).

One workload = a ConfigMap with its spec + a batch/v1 Job running the trainer image. More than one
GPU: torchrun on one node. More than one node: an Indexed Job plus a headless Service, torchrun
with c10d rendezvous on the pod of index 0. The trainer reads its spec from the ConfigMap, writes
checkpoints and outputs to the output volume (so a retried pod resumes) and its compact result
to the termination message, which the operator reads; it needs no Kubernetes credentials.
s3:// inputs (base model, dataset, replay) are downloaded by init containers into an emptyDir
before the trainer starts; the output is always a PVC, where checkpoints survive a pod restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from tuneloop.api.common import API_VERSION, fitted
from tuneloop.api.finetunejob import KIND, FineTuneJob
from tuneloop.api.workloads import JUDGE_API_KEY_ENV, TEACHER_API_KEY_ENV, Tracking, TrainerWorkload
from tuneloop.config import OperatorConfig
from tuneloop.offline_env import OFFLINE_ENV
from tuneloop.registry.lineage import lineage_tags
from tuneloop.reconcile.cost import stage_gpus
from tuneloop.reconcile.finetunejob import LaunchWorkload
from tuneloop.runtime import stage_workloads
from tuneloop.storage_uris import NO_CLUSTER_OUTPUT, UnsupportedStorage, cluster_storage_problem, s3_key

MANAGED_BY = "tuneloop"
SPEC_DIR = "/etc/tuneloop"
SCRATCH = "/scratch"
PVC_ROOT = "/mnt/pvc"
INPUTS = "/inputs"
# The fetch streams objects to disk: a little CPU and memory, no GPU (init containers' requests do
# not add to the trainer's: the pod reserves the larger of the two).
FETCH_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
RENDEZVOUS_PORT = 29500
TERMINATION_LOG = "/dev/termination-log"

# glibc's allocator for training on CPUs: a step frees and re-allocates activations of a few MB to
# tens of MB; by default glibc serves those with mmap, unmaps them on free and trims the heap, so
# every step faults the same memory in again, zero-filled by the kernel. Served from a heap that is
# never trimmed, SmolLM2 LoRA steps ran about 8% faster on a 2-core CPU (benchmarks/README.md).
# glibc reads them at process start: they belong in the launcher's environment (a CPU training pod,
# the local runner), not in the trainer.
CPU_TRAINER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),
                   "MALLOC_TOP_PAD_": str(2**30)}

# The container whose termination message carries each stage's result.
WORKLOAD_CONTAINERS = {"validate": "check-data", "augment": "augment", "train": "trainer", "evaluate": "evaluator",
                       "export": "export", "register": "register", "snapshot": "snapshot"}
TRAINER_IMAGE_STAGES = ("validate", "augment", "train", "export")
CPU_STAGES = ("validate", "augment")  # never on a GPU node: the operator's dataCheck CPU and memory
# What the data check leaves out of a fetched model folder: it needs the tokenizer, not the weights.
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.h5", "*.msgpack", "*.onnx")


# Kueue's job integration (kueue.sigs.k8s.io/docs/tasks/run/jobs): the LocalQueue label, and the
# WorkloadPriorityClass label; a Job created suspended waits for Kueue to unsuspend it.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
# What the trainer exits with after it saved a checkpoint on SIGTERM (tuneloop_trainer.__main__): a stop
# (preemption, suspension, drain), not a failure.
CHECKPOINTED_EXIT_CODE = 143


def queue_name(job: FineTuneJob, config: OperatorConfig) -> str | None:
    """The LocalQueue the job's Jobs go to: its own, else the operator's default for its namespace."""
    return job.spec.queue_name or config.queueing.queue_for(job.metadata.namespace)


def labels(job: FineTuneJob, stage: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": f"tuneloop-{stage}",
        "tuneloop.dev/finetunejob": fitted(job.metadata.name),
        "tuneloop.dev/stage": stage,
    }


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": job.metadata.name, "uid": job.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def metadata(job: FineTuneJob, name: str, stage: str) -> dict[str, Any]:
    return {"name": name, "namespace": job.metadata.namespace, "labels": labels(job, stage),
            "ownerReferences": [owner_reference(job)]}


def restricted_security_context() -> dict[str, Any]:
    """A container's share of Pod Security Standards 'restricted'."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@dataclass
class Storage:
    """pvc:// URIs become volumes mounted under /mnt/pvc/<claim>; s3:// inputs are fetched by init
    containers into /inputs/<name> (fetches: name -> URI). The trainer sees plain paths."""

    writable_claims: set[str] = field(default_factory=set)
    claims: set[str] = field(default_factory=set)
    fetches: dict[str, str] = field(default_factory=dict)

    def input_path(self, uri: str, name: str, *, is_file: bool = False) -> str:
        """Where the trainer reads an input; a fetched file keeps its name: /inputs/<name>/<file>."""
        if not uri.startswith("s3://"):
            return self.path(uri)
        if problem := cluster_storage_problem(uri, one_object=is_file):
            raise UnsupportedStorage(problem)
        self.fetches[name] = uri
        return f"{INPUTS}/{name}/{PurePosixPath(s3_key(uri)).name}" if is_file else f"{INPUTS}/{name}"

    def path(self, uri: str, *, writable: bool = False) -> str:
        """Where the pod sees a pvc:// URI, mounted."""
        if not uri.startswith("pvc://"):
            raise UnsupportedStorage(cluster_storage_problem(uri, output=writable) or
                                     f"{uri!r}: s3:// objects are fetched as inputs, not mounted; use pvc://claim/path")
        claim, _, rest = uri[len("pvc://"):].partition("/")
        self.claims.add(claim)
        if writable:
            self.writable_claims.add(claim)
        return f"{PVC_ROOT}/{claim}/{rest}".rstrip("/")

    def uri(self, path: str) -> str:
        """The inverse of path(): what the trainer reports as a path, as a storage URI."""
        if path.startswith(PVC_ROOT + "/"):
            return "pvc://" + path[len(PVC_ROOT) + 1:]
        return path

    def volumes(self, inputs_size: str) -> list[dict[str, Any]]:
        volumes = [{"name": f"pvc-{claim}", "persistentVolumeClaim": {"claimName": claim,
                                                                      "readOnly": claim not in self.writable_claims}}
                   for claim in sorted(self.claims)]
        if self.fetches:
            volumes.append({"name": "inputs", "emptyDir": {"sizeLimit": inputs_size}})
        return volumes

    def mounts(self) -> list[dict[str, Any]]:
        mounts = [{"name": f"pvc-{claim}", "mountPath": f"{PVC_ROOT}/{claim}",
                   "readOnly": claim not in self.writable_claims} for claim in sorted(self.claims)]
        if self.fetches:
            mounts.append({"name": "inputs", "mountPath": INPUTS, "readOnly": True})
        return mounts

    def fetch_container_names(self) -> list[str]:
        return [f"fetch-{name}" for name in self.fetches]


def trainer_workload(job: FineTuneJob, config: OperatorConfig, storage: Storage,
                     synthetic_uri: str | None = None) -> TrainerWorkload:
    spec = job.spec
    if spec.base_model.name is not None:
        model_uri = config.catalog.get(spec.base_model.name)
        if model_uri is None:
            raise UnsupportedStorage(f"spec.baseModel.name: {spec.base_model.name!r} is not in the cluster's "
                                     f"model catalog (known: {', '.join(sorted(config.catalog)) or 'none'})")
    else:
        model_uri = spec.base_model.uri or ""
    if spec.output.uri is None:
        raise UnsupportedStorage(NO_CLUSTER_OUTPUT)
    return stage_workloads.trainer_workload(
        job, model_path=storage.input_path(model_uri, "model"),
        input_file=lambda uri, name: storage.input_path(uri, name, is_file=True),
        output_dir=storage.path(spec.output.uri, writable=True), tracking=_tracking(job, config),
        gpu_peak_tflops=config.gpu_peak_tflops, synthetic_path=storage.path(synthetic_uri) if synthetic_uri else None)


def config_map(job: FineTuneJob, name: str, workload: Any, stage: str = "train") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(job, name, stage),
            "data": {"workload.json": workload.model_dump_json(by_alias=True, exclude_none=True, indent=2)}}


def trainer_command(job: FineTuneJob, name: str, workload: TrainerWorkload) -> list[str]:
    resources = job.spec.resources
    program = ["-m", "tuneloop_trainer", "--spec", f"{SPEC_DIR}/workload.json",
               "--result", f"{workload.output_dir}/result.json", "--termination-log", TERMINATION_LOG]
    if resources.nodes > 1:
        return ["torchrun", f"--nnodes={resources.nodes}", f"--nproc-per-node={max(resources.gpus, 1)}",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={name}-0.{name}:{RENDEZVOUS_PORT}",
                f"--rdzv-id={job.metadata.uid}", *program]
    if resources.gpus > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={resources.gpus}", *program]
    return ["python", *program]


def s3_env(config: OperatorConfig) -> list[dict[str, Any]]:
    """Credentials by secretKeyRef only. Without s3SecretName the fetch uses the pod's own identity
    (IRSA, EKS Pod Identity, instance profile): boto3 finds it in the usual places."""
    env: list[dict[str, Any]] = []
    if config.s3_secret_name:
        env += [{"name": variable, "valueFrom": {"secretKeyRef": {"name": config.s3_secret_name, "key": key}}}
                for variable, key in (("AWS_ACCESS_KEY_ID", config.s3_access_key_id_key),
                                      ("AWS_SECRET_ACCESS_KEY", config.s3_secret_access_key_key))]
    if config.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint})
    if config.s3_region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": config.s3_region})
    return env


def fetch_containers(storage: Storage, config: OperatorConfig, *, weights: bool = True) -> list[dict[str, Any]]:
    """One init container per s3:// input, so a failure names the input in the pod's status.
    Without `weights`, a model folder comes without its weight files."""
    def excluded(name: str) -> list[str]:
        return [] if weights or name != "model" else [option for pattern in WEIGHT_FILES
                                                      for option in ("--exclude", pattern)]

    return [{
        "name": container_name,
        "image": config.images.trainer,
        "imagePullPolicy": config.images.pull_policy,
        "command": ["python", "-m", "tuneloop_trainer.fetch", *excluded(name), uri, f"{INPUTS}/{name}"],
        "env": s3_env(config),
        "resources": FETCH_RESOURCES,
        "volumeMounts": [{"name": "inputs", "mountPath": INPUTS}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_security_context(),
    } for container_name, (name, uri) in zip(storage.fetch_container_names(), storage.fetches.items())]


def pod_spec(job: FineTuneJob, name: str, workload: TrainerWorkload, config: OperatorConfig,
             storage: Storage, *, stage: str = "train", command: list[str] | None = None,
             extra_env: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """The pod of a stage's workload: trainer image and trainer command unless told otherwise. The data
    check (validate) and the augment stage never run on a GPU node: they get the operator's dataCheck
    CPU and memory, and none of the GPU nodes' default selector or tolerations."""
    resources = job.spec.resources
    gpus = stage_gpus(job.spec, stage) // (resources.nodes if stage == "train" else 1)  # per pod
    limits: dict[str, str] = {}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    if stage in CPU_STAGES:
        limits.update(cpu=config.data_check.cpu, memory=config.data_check.memory)
    else:
        limits.update({key: value for key, value in (("cpu", resources.cpu), ("memory", resources.memory)) if value})
    env = [{"name": key, "value": value} for key, value in OFFLINE_ENV.items()]
    if stage == "train" and not gpus:
        env += [{"name": key, "value": value} for key, value in CPU_TRAINER_ENV.items()]
    env += [{"name": "HOME", "value": SCRATCH}, {"name": "TMPDIR", "value": f"{SCRATCH}"},
            {"name": "HF_HOME", "value": f"{SCRATCH}/hf"}, {"name": "TRITON_CACHE_DIR", "value": f"{SCRATCH}/triton"},
            *extra_env]
    container = {
        "name": WORKLOAD_CONTAINERS[stage],
        "image": config.images.trainer if stage in TRAINER_IMAGE_STAGES else config.images.evaluator,
        "imagePullPolicy": config.images.pull_policy,
        "command": command or trainer_command(job, name, workload),
        "env": env,
        "resources": {"limits": limits, "requests": dict(limits)} if limits else {},
        "volumeMounts": [
            {"name": "workload", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH},
            {"name": "shm", "mountPath": "/dev/shm"},
            *storage.mounts(),
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_security_context(),
    }
    if resources.nodes > 1 and stage == "train":
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    tolerations = [t.to_wire() for t in resources.tolerations] or (config.default_tolerations if gpus else [])
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "workload", "configMap": {"name": name}},
            {"name": "scratch", "emptyDir": {"sizeLimit": config.scratch_size}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shared_memory_size}},
            *storage.volumes(config.inputs_size),
        ],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": {**({} if stage in CPU_STAGES else config.default_node_selector), **resources.node_selector},
        "tolerations": tolerations,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
    }
    if storage.fetches:
        spec["initContainers"] = fetch_containers(storage, config, weights=stage not in CPU_STAGES)
    if resources.priority_class_name:
        spec["priorityClassName"] = resources.priority_class_name
    if config.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in config.image_pull_secrets]
    if resources.nodes > 1 and stage == "train":
        spec["subdomain"] = name
    return spec


def training_job(job: FineTuneJob, name: str, workload: TrainerWorkload, config: OperatorConfig,
                 storage: Storage, *, stage: str = "train", pod: dict[str, Any] | None = None) -> dict[str, Any]:
    """The batch/v1 Job of a stage (by default training, with the trainer's pod)."""
    nodes = job.spec.resources.nodes if stage == "train" else 1
    container = WORKLOAD_CONTAINERS[stage]
    pod_labels = {**labels(job, stage), "tuneloop.dev/workload": name}
    spec: dict[str, Any] = {
        "backoffLimit": config.backoff_limit,
        "activeDeadlineSeconds": config.active_deadline_seconds,
        # Preemption and node drains are not the trainer's fault: retry without counting them.
        # Exit code 1 is the trainer's own verdict (bad data, bad spec), or a fetch's (no such S3
        # object, access denied): retrying cannot help. An unreachable S3 endpoint exits 3 and is retried.
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Ignore", "onExitCodes": {"containerName": container, "operator": "In",
                                                 "values": [CHECKPOINTED_EXIT_CODE]}},
            *({"action": "FailJob", "onExitCodes": {"containerName": failing, "operator": "In", "values": [1]}}
              for failing in [container, *storage.fetch_container_names()]),
        ]},
        "template": {"metadata": {"labels": pod_labels},
                     "spec": pod or pod_spec(job, name, workload, config, storage)},
    }
    if nodes > 1:
        spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
    if config.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    meta = metadata(job, name, stage)
    if queue := queue_name(job, config):
        # Kueue admits the Job as a whole (all pods of a multi-node Indexed Job together) by unsuspending it.
        spec["suspend"] = True
        meta["labels"][QUEUE_LABEL] = queue
        if job.spec.resources.workload_priority_class_name:
            meta["labels"][PRIORITY_CLASS_LABEL] = job.spec.resources.workload_priority_class_name
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def rendezvous_service(job: FineTuneJob, name: str) -> dict[str, Any]:
    """Headless Service giving the Indexed Job's pods stable DNS names for torchrun's rendezvous."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(job, name, "train"),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"tuneloop.dev/workload": name},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]},
    }


def training_objects(job: FineTuneJob, name: str, config: OperatorConfig,
                     inputs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Everything one training workload needs, in creation order (the Job last)."""
    storage = Storage()
    workload = trainer_workload(job, config, storage, (inputs or {}).get("synthetic_uri"))
    objects = [config_map(job, name, workload)]
    if job.spec.resources.nodes > 1:
        objects.append(rendezvous_service(job, name))
    objects.append(training_job(job, name, workload, config, storage))
    return objects


def _tracking(job: FineTuneJob, config: OperatorConfig) -> Tracking | None:
    if not config.mlflow_tracking_uri:
        return None
    return Tracking(tracking_uri=config.mlflow_tracking_uri, run_name=f"{job.metadata.namespace}/{job.metadata.name}",
                    tags=lineage_tags(job, job.metadata.uid or ""))


def _key_env(variable: str, endpoint: Any) -> list[dict[str, Any]]:
    """The endpoint's (judge, teacher) API key from its Secret, as the variable the workload reads."""
    if endpoint is None or endpoint.api_key_secret is None:
        return []
    return [{"name": variable, "valueFrom": {"secretKeyRef": {
        "name": endpoint.api_key_secret.name, "key": endpoint.api_key_secret.key}}}]


def stage_objects(job: FineTuneJob, action: LaunchWorkload, config: OperatorConfig) -> list[dict[str, Any]]:
    """ConfigMap + Job of the evaluate, export or register stage, reading the training output from the same
    volume: evaluate writes its records next to it, export the merged model and GGUF file (trainer image)."""
    storage = Storage()
    training = trainer_workload(job, config, storage)  # the same volumes, model path and output folder
    name, stage = action.name, action.stage
    resolve = storage.path
    if stage == "evaluate":
        general = job.spec.evaluation.general_set
        workload: Any = stage_workloads.evaluator_workload(
            job, action.inputs, model_path=training.model_path, resolve=resolve,
            output_dir=f"{training.output_dir}/evaluation", tracking=_tracking(job, config),
            general_set_path=storage.input_path(general.uri, "general", is_file=True) if general else None)
        program = ["python", "-m", "tuneloop_evaluator"]
        result = f"{workload.output_dir}/result.json"
    elif stage == "export":
        workload = stage_workloads.export_workload(job, action.inputs, model_path=training.model_path,
                                                   resolve=resolve, output_dir=training.output_dir)
        program = ["python", "-m", "tuneloop_trainer.export"]
        result = f"{SCRATCH}/result.json"
    else:
        tracking = _tracking(job, config)
        if tracking is None:
            raise UnsupportedStorage("registration needs the operator's mlflowTrackingUri")
        workload = stage_workloads.register_workload(job, action.inputs, resolve=resolve, tracking=tracking,
                                                     job_uid=job.metadata.uid or "", retry_seconds=120)
        storage.writable_claims.clear()  # registering only reads the adapter:
        storage.fetches.clear()          # no base model or data to fetch
        program = ["python", "-m", "tuneloop_evaluator.register"]
        result = f"{SCRATCH}/result.json"
    command = [*program, "--spec", f"{SPEC_DIR}/workload.json", "--result", result,
               "--termination-log", TERMINATION_LOG]
    pod = pod_spec(job, name, training, config, storage, stage=stage, command=command,
                   extra_env=_key_env(JUDGE_API_KEY_ENV, job.spec.evaluation.judge) if stage == "evaluate" else [])
    return [config_map(job, name, workload, stage),
            training_job(job, name, training, config, storage, stage=stage, pod=pod)]


def data_check_objects(job: FineTuneJob, name: str, config: OperatorConfig) -> list[dict[str, Any]]:
    """ConfigMap + Job of the first stage: the trainer image on a CPU reads every row with the base model's
    tokenizer, before any GPU is requested. It reads the training inputs read-only; pod_spec gives it a
    CPU node and an s3:// model without its weights."""
    storage = Storage()
    training = trainer_workload(job, config, storage)
    storage.writable_claims.clear()
    workload = stage_workloads.data_check_workload(job, training)
    command = ["python", "-m", "tuneloop_trainer.check_data", "--spec", f"{SPEC_DIR}/workload.json",
               "--result", f"{SCRATCH}/result.json", "--termination-log", TERMINATION_LOG]
    pod = pod_spec(job, name, training, config, storage, stage="validate", command=command)
    return [config_map(job, name, workload, "validate"),
            training_job(job, name, training, config, storage, stage="validate", pod=pod)]


def augment_objects(job: FineTuneJob, name: str, config: OperatorConfig) -> list[dict[str, Any]]:
    """ConfigMap + Job of the augment stage: the trainer image on a CPU splits the rows as training will and
    asks the teacher for synthetic training rows, written beside the adapter-to-be; the teacher's key comes
    from its Secret."""
    storage = Storage()
    training = trainer_workload(job, config, storage)
    teacher = job.spec.dataset.augment.teacher if job.spec.dataset.augment else None
    workload = stage_workloads.augment_workload(
        job, training, TEACHER_API_KEY_ENV if teacher is not None and teacher.api_key_secret else None)
    command = ["python", "-m", "tuneloop_trainer.augment", "--spec", f"{SPEC_DIR}/workload.json",
               "--result", f"{SCRATCH}/result.json", "--termination-log", TERMINATION_LOG]
    pod = pod_spec(job, name, training, config, storage, stage="augment", command=command,
                   extra_env=_key_env(TEACHER_API_KEY_ENV, teacher))
    return [config_map(job, name, workload, "augment"),
            training_job(job, name, training, config, storage, stage="augment", pod=pod)]


def workload_objects(job: FineTuneJob, action: LaunchWorkload, config: OperatorConfig) -> list[dict[str, Any]]:
    """Everything a stage's workload needs, in creation order (the Job last)."""
    if action.stage == "validate":
        return data_check_objects(job, action.name, config)
    if action.stage == "augment":
        return augment_objects(job, action.name, config)
    if action.stage == "train":
        return training_objects(job, action.name, config, action.inputs)
    return stage_objects(job, action, config)
