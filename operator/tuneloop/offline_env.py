"""The environment every workload runs in, in a pod or on this machine: Hugging Face libraries read
only local files, and no library reports usage. The images set it too (a test holds them to it)."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false",
}


def go_offline() -> None:
    """A workload's first act: OFFLINE_ENV wherever its launcher left a variable unset."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
