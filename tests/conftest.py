"""Shared test fixtures. Everything is built locally: no test downloads a model or a tokenizer."""

from __future__ import annotations

import pytest

from tiny_model import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random Llama saved like a real model (config, safetensors, tokenizer)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
