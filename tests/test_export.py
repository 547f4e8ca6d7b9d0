"""The export workload (python -m tuneloop_trainer.export) on real models: SmolLM2-135M from the model
catalog with a random LoRA merged in, through llama.cpp's real converter (`make gguf-converter`), read
back by transformers; the tiny test model for a model the converter refuses."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from safetensors import safe_open

from tiny_model import build_tiny_model, write_tickets
from tuneloop.api.workloads import ExportResult, ExportWorkload
from tuneloop.catalog import lookup, materialize
from tuneloop_trainer.export import folder_sha256, run
from tuneloop_trainer.export_check import load_gguf_model
from tuneloop_trainer.gguf_files import CONVERTER_ENV, ConverterMissing, find_converter, write_gguf
from tuneloop_trainer.model import with_default_system_prompt

SYSTEM_PROMPT = "You are Acme's ticket router. Answer with the ticket record only."


@pytest.fixture(scope="module")
def converter() -> Path:
    try:
        return find_converter(None)
    except ConverterMissing as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def base_model() -> Path:
    return materialize(lookup("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def adapter(base_model, tmp_path_factory) -> Path:
    """A LoRA whose B matrices are random too, so merging it really changes the model; saved with its tokenizer
    as the trainer saves it (the chat template defaults to the system prompt of training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.chat_template = with_default_system_prompt(tokenizer.chat_template, SYSTEM_PROMPT)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def test_rows(tmp_path_factory) -> Path:
    return write_tickets(tmp_path_factory.mktemp("data") / "test.jsonl", rows=3, seed=11)


def export_workload(model: Path, adapter: Path, test_rows: Path, output: Path, **fields) -> ExportWorkload:
    return ExportWorkload.model_validate({
        "job": "team-a/tickets", "modelPath": str(model), "adapterPath": str(adapter), "method": {"type": "lora"},
        "testPath": str(test_rows), "dataset": {"uri": "data/tickets.jsonl", "systemPrompt": SYSTEM_PROMPT},
        "formats": ["merged", "gguf"], "gguf": {"type": "f16", "checkRows": 3}, "maxNewTokens": 16,
        "outputDir": str(output), **fields})


@pytest.fixture(scope="module")
def f16_export(converter, base_model, adapter, test_rows, tmp_path_factory) -> ExportResult:
    output = tmp_path_factory.mktemp("export") / "output"
    result = run(export_workload(base_model, adapter, test_rows, output, converter=str(converter)))
    assert result.succeeded, result.message
    return result


def test_f16_answers_like_the_merged_model_and_both_files_carry_their_sha256(f16_export, base_model):
    merged, gguf_file = f16_export.files
    assert (merged.kind, gguf_file.kind, gguf_file.gguf_type) == ("merged", "gguf", "f16")
    assert Path(merged.uri) == Path(gguf_file.uri).parent / "merged"
    assert Path(gguf_file.uri).name == "tickets-f16.gguf"
    assert gguf_file.sha256 == hashlib.sha256(Path(gguf_file.uri).read_bytes()).hexdigest()
    assert merged.sha256 == folder_sha256(Path(merged.uri))
    agreement = f16_export.agreement
    assert agreement.rows == 3 and agreement.passed and agreement.expected == 0.99
    assert agreement.token_agreement >= 0.99
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(Path(merged.uri) / "model.safetensors", "pt") as tuned, \
            safe_open(base_model / "model.safetensors", "pt") as base:
        assert not torch.equal(tuned.get_tensor(name), base.get_tensor(name)), "the adapter was not merged in"
    # A client that sends only a user message prompts the merged model as it was trained.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged.uri)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Parcel lost"}], tokenize=False)
    assert SYSTEM_PROMPT in prompt and (Path(merged.uri) / "chat_template.jinja").is_file()


def test_a_4_bit_file_is_a_third_of_f16_and_transformers_reads_it_back(f16_export, converter, tmp_path):
    merged, f16_file = f16_export.files
    target = write_gguf(Path(merged.uri), tmp_path / "tickets-q4_0.gguf", "q4_0", converter)

    assert target.stat().st_size < f16_file.bytes * 0.4
    types = {tensor.name: tensor.tensor_type for tensor in gguf.GGUFReader(target).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    model = load_gguf_model(target, "cpu")
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()


def test_a_missing_converter_says_how_to_get_one(base_model, adapter, test_rows, tmp_path):
    """The workload as a pod runs it: spec file in, result file out, exit status 1."""
    spec = tmp_path / "spec.json"
    spec.write_text(export_workload(base_model, adapter, test_rows, tmp_path / "output").model_dump_json(by_alias=True),
                    encoding="utf-8")
    env = {**os.environ, "TUNELOOP_CACHE": str(tmp_path / "empty-cache")}
    env.pop(CONVERTER_ENV, None)

    done = subprocess.run([sys.executable, "-m", "tuneloop_trainer.export", "--spec", str(spec), "--result",
                           str(tmp_path / "result.json")], env=env, capture_output=True, text=True, timeout=300)

    result = ExportResult.model_validate_json((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert done.returncode == 1 and (result.succeeded, result.reason) == (False, "ConverterMissing")
    assert "make gguf-converter" in result.message and "trainer image" in result.message
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "output").exists()  # it says so before merging anything


def test_a_model_the_converter_refuses_fails_as_unsupported_in_one_line(converter, test_rows, tmp_path):
    """The tiny model's home-made BPE tokenizer is one llama.cpp does not know: a full fine-tune's folder."""
    model = build_tiny_model(tmp_path / "tiny")

    result = run(export_workload(model, model, test_rows, tmp_path / "output", method={"type": "full"},
                                 converter=str(converter)))

    assert (result.succeeded, result.reason) == (False, "UnsupportedModel")
    assert "\n" not in result.message and "pre-tokenizer was not recognized" in result.message
    assert str(tmp_path / "output" / "export" / "merged") in result.message
