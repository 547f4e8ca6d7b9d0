"""vLLM's own checks, run on a CPU: its `vllm serve` argument parser and LoRA configuration (what
a Deployment's command line must pass) and its PEFT adapter check (what an adapter must pass to be
loaded). vLLM 0.10.1.1, the version the chart serves, is installed by `make setup` into
.venv/vllm-cli without its dependencies (a CUDA build cannot run here, but these checks need no
device); the rest of its imports come from the project's virtualenv. It runs in a subprocess with
that folder first on the path, so the tests' own process never imports vLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

VLLM_DIR = Path(__file__).resolve().parents[1] / ".venv" / "vllm-cli"

CHECKS = r'''
import contextlib, io, json, sys
import vllm.platforms
from vllm.platforms.cpu import CpuPlatform
vllm.platforms._current_platform = CpuPlatform()  # this is a CUDA wheel: parsing needs no device
from vllm.config import LoRAConfig
from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.lora.peft_helper import PEFTHelper
from vllm.utils import FlexibleArgumentParser

request = json.load(sys.stdin)
answer = {"commands": [], "adapters": []}
for argv in request["commands"]:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        validate_parsed_serve_args(args)
        if args.enable_lora:
            LoRAConfig(max_lora_rank=args.max_lora_rank, max_loras=args.max_loras)
        answer["commands"].append({"error": None, "args": {
            key: value for key, value in vars(args).items() if isinstance(value, (str, int, float, bool, list, type(None)))}})
    except SystemExit:
        answer["commands"].append({"error": stderr.getvalue().strip().splitlines()[-1]})
    except (ValueError, TypeError) as error:
        answer["commands"].append({"error": f"{type(error).__name__}: {error}"})
for adapter in request["adapters"]:
    try:
        helper = PEFTHelper.from_local_dir(adapter["path"], max_position_embeddings=None)
        helper.validate_legal(LoRAConfig(max_lora_rank=adapter["maxLoraRank"], max_loras=1,
                                         bias_enabled=adapter["biasEnabled"]))
        answer["adapters"].append(None)
    except ValueError as error:
        answer["adapters"].append(str(error))
print(json.dumps(answer, default=str))
'''


def vllm_checks(commands: list[list[str]] = (), adapters: list[tuple] = ()) -> dict[str, list[Any]]:
    """For each `vllm serve` argument list: {"error": None, "args": parsed} or {"error": message}; for
    each (adapter folder, maxLoraRank[, --enable-lora-bias given]): None or vLLM's reason to refuse it."""
    if not (VLLM_DIR / ".installed").exists():
        message = f"vLLM's parser is not installed in {VLLM_DIR}: run `make setup`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    request = {"commands": [list(command) for command in commands],
               "adapters": [{"path": str(path), "maxLoraRank": rank, "biasEnabled": bool(bias and bias[0])}
                            for path, rank, *bias in adapters]}
    env = {**os.environ, "PYTHONPATH": str(VLLM_DIR), "VLLM_LOGGING_LEVEL": "ERROR", "VLLM_TARGET_DEVICE": "cpu"}
    process = subprocess.run([sys.executable, "-c", CHECKS], input=json.dumps(request), capture_output=True,
                             text=True, env=env, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])
