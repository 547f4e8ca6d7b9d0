"""A Hugging Face model folder -> one GGUF file, with the converters the field maintains.

f16, q8_0 and f32 come straight from llama.cpp's own convert_hf_to_gguf.py (as shipped in the
llama-cpp-python sdist on PyPI; tools/fetch_gguf_converter.sh, /opt/llama.cpp-convert in the trainer
image). It runs in a subprocess because it must import its own gguf-py, while this process keeps PyPI's
`gguf`, which transformers reads GGUF files with. The 4-bit types are requantised from the f32 file
with PyPI gguf's reference quantiser (gguf.quants, bit-identical to llama.cpp's Q4_0/Q4_1): norms and
other 1-D tensors stay f32 as llama.cpp keeps them. K-quants are out of reach: gguf has no Python
quantiser for them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tuneloop.catalog import cache_root

CONVERTER_ENV = "TUNELOOP_GGUF_CONVERTER"
# Where `make gguf-converter` (tools/fetch_gguf_converter.sh) caches the converter.
FETCHED_CONVERTER = Path("llama-cpp-python-0.3.36") / "convert_hf_to_gguf.py"
CONVERT_TIMEOUT_SECONDS = 3600
DIRECT_TYPES = ("f16", "q8_0", "f32")
REQUANTISED_TYPES = ("q4_0",)
# The last line an exception or a logger.error leaves on stderr: "NotImplementedError: ..." / "ERROR:x:..."
FAILURE_LINE = re.compile(r"^(?:\w+(?:\.\w+)*(?:Error|Exception)\b.*|ERROR:.*)$")


class ConverterMissing(Exception):
    """No convert_hf_to_gguf.py where the workload, the environment or the cache point."""


class UnsupportedModel(Exception):
    """The converter refused the model (architecture, tokenizer): one line of its own words."""


class ConversionFailed(Exception):
    """The converter failed otherwise, or ran past its time."""


def find_converter(configured: str | None) -> Path:
    """The workload's converter, else $TUNELOOP_GGUF_CONVERTER, else the one `make gguf-converter` fetched."""
    candidates = [(configured, "the workload's converter")] if configured else [
        (os.environ.get(CONVERTER_ENV), f"${CONVERTER_ENV}"),
        (str(cache_root() / FETCHED_CONVERTER), "the cache of `make gguf-converter`")]
    for path, _ in candidates:
        if path and Path(path).is_file():
            return Path(path)
    looked = "; ".join(f"{where}: {path or 'unset'}" for path, where in candidates)
    raise ConverterMissing(
        f"llama.cpp's convert_hf_to_gguf.py was not found ({looked}); run `make gguf-converter` "
        f"(tools/fetch_gguf_converter.sh) and set {CONVERTER_ENV} to the path it prints, or use the trainer image, "
        "which has it in /opt/llama.cpp-convert")


def refusal(stderr: str) -> str:
    """The converter's reason in one line: its last exception or ERROR line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    found = [line for line in lines if FAILURE_LINE.match(line)]
    return (found or lines or ["no output"])[-1][:500]


def convert(model_dir: Path, outfile: Path, outtype: str, converter: Path,
            timeout: float = CONVERT_TIMEOUT_SECONDS) -> None:
    """llama.cpp's converter on `model_dir`: f16, q8_0 or f32 into `outfile`."""
    env = {**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")}
    env.pop("NO_LOCAL_GGUF", None)
    command = [sys.executable, str(converter), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise ConversionFailed(f"{converter.name} did not finish converting {model_dir} in {timeout:.0f}s") from error
    if done.returncode == 0 and outfile.is_file():
        return
    reason = refusal(done.stderr)
    if "NotImplementedError" in reason or "not supported" in reason or "not recognized" in reason:
        raise UnsupportedModel(f"llama.cpp's converter cannot convert {model_dir}: {reason}")
    raise ConversionFailed(f"{converter.name} failed on {model_dir} (exit {done.returncode}): {reason}")


def requantise(source: Path, target: Path, gguf_type: str) -> None:
    """An f32 (or f16) GGUF file rewritten with its 2-D weights in `gguf_type` (q4_0, q4_1, q8_0...)."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[gguf_type.upper()]
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, arch=reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{gguf_type.upper()}"])
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if data.ndim <= 1 or not tensor.name.endswith(".weight") or tensor.name.endswith("_norm.weight"):
            writer.add_tensor(tensor.name, data)
            continue
        try:
            writer.add_tensor(tensor.name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        except gguf.QuantError:  # a row width the block size does not divide: llama.cpp falls back the same way
            writer.add_tensor(tensor.name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16),
                              raw_dtype=gguf.GGMLQuantizationType.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf(model_dir: Path, outfile: Path, gguf_type: str, converter: Path,
               timeout: float = CONVERT_TIMEOUT_SECONDS) -> Path:
    """`model_dir` as a `gguf_type` GGUF file at `outfile`, written whole or not at all."""
    partial = outfile.with_name(f".{outfile.name}.partial")
    try:
        if gguf_type in DIRECT_TYPES:
            convert(model_dir, partial, gguf_type, converter, timeout)
        elif gguf_type in REQUANTISED_TYPES:
            full = outfile.with_name(f".{outfile.stem}-f32.gguf.partial")
            try:
                convert(model_dir, full, "f32", converter, timeout)
                requantise(full, partial, gguf_type)
            finally:
                full.unlink(missing_ok=True)
        else:
            raise ValueError(f"GGUF type {gguf_type!r} is none of {DIRECT_TYPES + REQUANTISED_TYPES}")
        partial.replace(outfile)
    finally:
        partial.unlink(missing_ok=True)
    return outfile
