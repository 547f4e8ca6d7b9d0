"""What a run and a model version say about where they came from: tag names and their values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import tuneloop

if TYPE_CHECKING:
    from tuneloop.api.finetunejob import FineTuneJob

NAMESPACE_TAG = "tuneloop.dev/namespace"
FINETUNEJOB_TAG = "tuneloop.dev/finetunejob"
JOB_UID_TAG = "tuneloop.dev/job-uid"
JOB_TAG = "tuneloop.dev/job"
BASE_MODEL_TAG = "tuneloop.dev/base-model"
DATASET_SHA256_TAG = "tuneloop.dev/dataset-sha256"
TUNELOOP_VERSION_TAG = "tuneloop.dev/tuneloop-version"
GATE_TAG = "tuneloop.dev/gate"
GATE_CHECKS_TAG = "tuneloop.dev/gate-checks"
MAX_TAG_VALUE = 5000  # what every MLflow store accepts


def lineage_tags(job: FineTuneJob, job_uid: str) -> dict[str, str]:
    """The FineTuneJob, its base model as the spec named it (catalog name or URI), and this Tuneloop."""
    return {NAMESPACE_TAG: job.metadata.namespace, FINETUNEJOB_TAG: job.metadata.name, JOB_UID_TAG: job_uid,
            BASE_MODEL_TAG: job.spec.base_model.display(), TUNELOOP_VERSION_TAG: tuneloop.__version__}
