"""The operator's configuration: what the Helm chart decides for every workload it launches.

Read from a YAML file (`TUNELOOP_CONFIG`, mounted from a ConfigMap by the chart); every field has
a default that works in a plain cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, field_validator, model_validator

from tuneloop.api.common import WireModel
from tuneloop.api.fields import HttpUrl, Quantity
from tuneloop.images import check_registry, mirrored
from tuneloop.retry import FEEDBACK_STATS, JUDGE, KUBERNETES_API, MLFLOW_REST, RetryPolicy


class Images(WireModel):
    operator: str = Field("ghcr.io/tuneloop/operator:0.1.0",
                          description="The operator's own image; the feedback service runs it too.")
    trainer: str = Field("ghcr.io/tuneloop/trainer:0.1.0", description="Trainer image (CUDA).")
    evaluator: str = Field("ghcr.io/tuneloop/evaluator:0.1.0", description="Evaluator image (CUDA).")
    vllm: str = Field("docker.io/vllm/vllm-openai:v0.10.1.1", description="vLLM OpenAI server for ModelDeployments.")
    fetcher: str | None = Field(None, description="Init container of vLLM pods that fetches an MLflow adapter; "
                                                  "unset: the evaluator image, which holds the fetch code.")
    mlflow: str = Field("ghcr.io/tuneloop/mlflow:3.17.2",
                        description="The MLflow tracking server the Helm chart can bundle (listed for mirroring; "
                                    "the operator itself does not launch it).")
    pull_policy: str = "IfNotPresent"

    @property
    def adapter_fetcher(self) -> str:
        return self.fetcher or self.evaluator


NamespacedName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]


class DataCheckResources(WireModel):
    """CPU and memory of the Validating stage's pod (requests = limits); it holds the tokenized dataset."""

    cpu: Quantity = "1"
    memory: Quantity = "4Gi"


class Outbound(WireModel):
    """How the operator calls each outside system: attempts, backoff, deadline, and each request's timeout."""

    kubernetes: RetryPolicy = Field(default_factory=KUBERNETES_API.model_copy,
                                    description="The Kubernetes API: retried on 429, 5xx and connection errors.")
    judge: RetryPolicy = Field(default_factory=JUDGE.model_copy,
                               description="The LLM judge of a ModelDeployment's analysis: the backoff between "
                                           "retries (the JudgeSpec's maxRetries and timeoutSeconds set the rest).")
    mlflow: RetryPolicy = Field(default_factory=MLFLOW_REST.model_copy,
                                description="MLflow's REST API (training progress, aliases, adapter tags).")
    feedback: RetryPolicy = Field(default_factory=FEEDBACK_STATS.model_copy,
                                  description="A feedback service's stats, asked by a FineTuneSchedule.")


class Queueing(WireModel):
    """Kueue: which LocalQueue a FineTuneJob without spec.queueName goes to."""

    default_queue_name: str | None = Field(None, description="LocalQueue for every namespace without its own entry.")
    namespaces: dict[str, str] = Field(default_factory=dict, description="Namespace -> LocalQueue name.")

    def queue_for(self, namespace: str) -> str | None:
        return self.namespaces.get(namespace, self.default_queue_name)


class OperatorConfig(WireModel):
    images: Images = Field(default_factory=Images)
    image_registry: str | None = Field(
        None, description="Private registry (HOST[:PORT][/PATH]) every launched image is pulled from: the same "
                          "repository path, tag and digest under it. A ModelDeployment's own image too.")
    image_pull_secrets: list[str] = Field(default_factory=list)
    catalog: dict[str, str] = Field(
        default_factory=dict, description="Model names -> pvc:// or s3:// Hugging Face-format folders.")
    mlflow_tracking_uri: str | None = None
    default_node_selector: dict[str, str] = Field(default_factory=dict)
    default_tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    scratch_size: str = "50Gi"
    shared_memory_size: str = "16Gi"
    backoff_limit: int = 3
    active_deadline_seconds: int = 7 * 24 * 3600
    ttl_seconds_after_finished: int | None = None
    s3_secret_name: str | None = Field(
        None, description="Secret (in the job's namespace) with the S3 credentials for s3:// inputs; "
                          "unset: the pod's own identity (IRSA and the like) is used.")
    s3_access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", description="Key of the access key id in that Secret.")
    s3_secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", description="Key of the secret key in that Secret.")
    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph RGW); unset: AWS S3.")
    s3_region: str | None = None
    service_url_template: str = Field(
        "http://{service}.{namespace}.svc:{port}",
        description="How the operator reaches a ModelDeployment's Services to analyse them; outside the "
                    "cluster, e.g. the API server's proxy: "
                    "https://api:6443/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy")
    alias_poll_seconds: float = Field(30, gt=0, description="How often a followed MLflow alias is looked up.")
    webhook_port: int = Field(0, ge=0, le=65535, description="Port of the MLflow registry webhook receiver "
                                                             "(POST /mlflow/webhook); 0: off, aliases are polled.")
    max_concurrent_reconciles: int | None = Field(
        None, ge=1, description="Reconcile passes run at once (each object's daemon waits for a free one); "
                                "the others wait their turn. Bounds the operator's memory in a burst; unset: "
                                "no limit.")
    allowed_secrets: list[NamespacedName] = Field(
        default_factory=list, description="Secrets (namespace/name) tenants may name for any Tuneloop use without "
                                          "the tuneloop.dev/secret-usage label (runtime/secrets.py).")
    allowed_urls: list[HttpUrl] = Field(
        default_factory=list, description="Base URLs outside a tenant's namespace that a judge's or a feedback "
                                          "service's url may start with (outbound.py); the tenant's own "
                                          "Services are always allowed.")
    data_check: DataCheckResources = Field(default_factory=DataCheckResources)
    outbound: Outbound = Field(default_factory=Outbound)
    queueing: Queueing = Field(default_factory=Queueing, description="Kueue LocalQueue defaults.")
    termination_grace_seconds: int = Field(
        300, ge=30, le=86400, description=(
            "How long a stopped workload pod (suspended, preempted, drained) has between SIGTERM and SIGKILL: the "
            "trainer saves its checkpoint in that time."))
    cost_per_gpu_hour: float | None = Field(None, ge=0, description=(
        "Price of one GPU-hour: FineTuneJob status, MLflow and reports then show what a run cost."))
    cost_currency: str = Field("USD", max_length=8, description="Currency of costPerGpuHour, as shown.")
    gpu_peak_tflops: float | None = Field(None, gt=0, description=(
        "Peak dense bf16 TFLOPS of one training GPU, for the MFU estimate; unset: looked up by the GPU's name "
        "(H100, H200, A100, L40S, L4), none for others."))
    inputs_size: str = Field("200Gi", description="Size limit of the emptyDir that s3:// inputs are fetched into "
                                                 "(the base model's weights plus the data).")

    @field_validator("image_registry")
    @classmethod
    def _registry_form(cls, registry: str | None) -> str | None:
        return check_registry(registry) if registry else None

    @model_validator(mode="after")
    def _images_under_the_registry(self) -> OperatorConfig:
        if self.image_registry:
            for name in ("operator", "trainer", "evaluator", "vllm", "fetcher", "mlflow"):
                reference = getattr(self.images, name)
                if reference:
                    setattr(self.images, name, mirrored(reference, self.image_registry))
        return self

    def image(self, reference: str) -> str:
        """An image named outside this configuration (a ModelDeployment's spec), as it is pulled."""
        return mirrored(reference, self.image_registry) if self.image_registry else reference


def load_config(path: str | Path | None = None) -> OperatorConfig:
    path = path or os.environ.get("TUNELOOP_CONFIG")
    if not path:
        return OperatorConfig()
    return OperatorConfig.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
