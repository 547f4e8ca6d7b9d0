"""A real LLM judge for tests: SmolLM2-135M-Instruct from the model catalog, served by `transformers serve`
on 127.0.0.1 (a free port) through the code `tuneloop run --local` uses (tuneloop.runtime.local_judge)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openai_server import closed_port
from tuneloop.api.evaluation import JudgeSpec
from tuneloop.runtime.local_judge import serving_local_judge

JUDGE_MODEL = "smollm2-135m-instruct"


@contextmanager
def local_judge(log_path: Path, **fields: Any) -> Iterator[JudgeSpec]:
    """A JudgeSpec whose url and model reach the running server (the model is named by its folder's path)."""
    spec = JudgeSpec(url=f"http://127.0.0.1:{closed_port()}/v1", model=JUDGE_MODEL, local=True, **fields)
    # One thread: the tests share two cores with other processes (see transformers_server).
    with serving_local_judge(spec, log_path, threads=1) as served:
        yield served
