"""spec.dataset.augment: synthetic training rows from a teacher model, for small datasets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneloop.api.common import WireModel
from tuneloop.api.evaluation import SecretKeyRef
from tuneloop.api.fields import EnvName, HttpUrl, Name, Seed, Text

AugmentMode = Literal["generate", "paraphrase"]


class TeacherSpec(WireModel):
    """The model that writes synthetic rows, behind any OpenAI-compatible endpoint (as the judge)."""

    url: HttpUrl = Field(description="Base URL of the OpenAI-compatible API, e.g. http://teacher.llm.svc:8000/v1.")
    model: Name = Field(description="Model name the endpoint serves.")
    api_key_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the API key (cluster), under the judge's rules. Never put a key in the spec.")
    api_key_env: EnvName | None = Field(None, description="Environment variable holding the API key (local runs).")
    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature: variety against faithfulness.")
    max_tokens: int = Field(512, ge=16, le=8192, description="Token limit of each reply.")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight.")
    timeout_seconds: float = Field(60, gt=0, le=600, description="Per request.")
    max_retries: int = Field(4, ge=0, le=10, description="Retries per request, with exponential backoff.")
    local: bool = Field(False, description=(
        "Local runs only: `tuneloop run --local` starts `transformers serve` on the url's 127.0.0.1 port with "
        "`model` from the model catalog (e.g. smollm2-135m-instruct), and stops it when the run ends. "
        "Refused in a cluster."))


class AugmentSpec(WireModel):
    """Expand a small training split with rows a teacher writes from it. Synthetic rows pass the same checks
    and cleaning as real ones, are deduplicated against real rows and each other, are tagged synthetic, and
    never enter the validation or test splits."""

    teacher: TeacherSpec
    target_rows: int = Field(ge=1, le=1_000_000, description=(
        "Training rows wanted, real and synthetic together; a split that already has them gets none."))
    max_share: float = Field(0.5, gt=0, le=0.9, description=(
        "Largest share of the training rows that may be synthetic."))
    mode: AugmentMode = Field("generate", description=(
        "generate: the teacher writes a new request and its answer from a few real rows; paraphrase: it "
        "rewrites one real request and the real answer is kept."))
    instructions: Text | None = Field(None, description=(
        "How to vary the rows, in words, e.g. 'other customers, other account numbers, the same JSON keys'."))
    examples_per_request: int = Field(3, ge=1, le=16, description="Real rows shown to the teacher in each request.")
    max_requests: int | None = Field(None, ge=1, le=1_000_000, description=(
        "Requests at most; default three per synthetic row wanted. Rejected replies count."))
    seed: Seed = Field(0, description="Seed of which real rows each request shows.")


RejectReason = Literal["unparseable", "invalid", "lost-facts", "cleaned", "duplicate", "near-test", "failed-request"]


class AugmentationStats(WireModel):
    """What the augment stage asked for and kept (status.augmentation)."""

    wanted: int = Field(description="Synthetic rows wanted: targetRows minus the real training rows, within maxShare.")
    requests: int = Field(0, description="Requests sent to the teacher.")
    accepted: int = Field(0, description="Synthetic rows kept for training.")
    rejected: dict[RejectReason, int] = Field(default_factory=dict, description=(
        "Replies not kept, by reason: unparseable (no row in it), invalid (fails the row checks), lost-facts (a "
        "paraphrase that drops a number of the request, or rambles to over 3 times its length), cleaned "
        "(removed by dataset.cleaning), duplicate (of a real or an earlier synthetic row), near-test (near a "
        "test or regression row), failed-request (the teacher did not answer)."))
    examples: list[str] = Field(default_factory=list, max_length=10, description="A few rejections, with their reason.")
    teacher: str | None = Field(None, description="model @ url.")
    seconds: float | None = Field(None, description="Wall-clock seconds of the augment workload.")
    uri: str | None = Field(None, description="Where the synthetic rows were written (JSONL, tagged synthetic).")
    summary: str | None = Field(None, description='One line, e.g. "40 of 40 synthetic rows from 71 requests".')

    def describe(self) -> str:
        """The summary line: the workload's log, the stage's condition and event, the reports."""
        if not self.wanted:
            return "no synthetic row wanted: the training split already has dataset.augment.targetRows"
        rejected = ", ".join(f"{count} {reason}" for reason, count in sorted(self.rejected.items()) if count)
        return (f"{self.accepted} of {self.wanted} synthetic rows kept from {self.requests} teacher requests"
                + (f" (rejected: {rejected})" if rejected else ""))
