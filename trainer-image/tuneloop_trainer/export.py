"""python -m tuneloop_trainer.export --spec SPEC.json --result RESULT.json [--termination-log PATH]

A gated adapter as the files a server outside Tuneloop loads (spec.output.export):
  merged  the adapter merged into its base model (peft merge_and_unload, in float32, saved in the base's
          own dtype), safetensors with the tokenizer, in OUTPUT_DIR/export/merged; a full fine-tune's
          model is saved there as it is;
  gguf    that model through llama.cpp's converter (tuneloop_trainer.gguf_files) into
          OUTPUT_DIR/export/<model>-<type>.gguf, then read back and checked against the merged model on
          the first test rows (tuneloop_trainer.export_check).
Every file comes with its sha256 (a folder: the sha256 of its `sha256sum`-style listing, sorted by
name). A GGUF file below its type's expected agreement is still written and reported, with passed
false: registering it is the operator's call. The result file is written in every case; exit status 0
when everything asked for was written.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tuneloop.api.export import ExportedFile, ExportResults, GgufAgreement
from tuneloop.api.workloads import ExportResult, ExportWorkload
from tuneloop.workload_cli import workload_main
from tuneloop_trainer.gguf_files import ConversionFailed, ConverterMissing, UnsupportedModel, find_converter, write_gguf

log = logging.getLogger("tuneloop_trainer.export")
EXPORT_FOLDER = "export"
MERGED_FOLDER = "merged"


class InvalidModel(Exception):
    """The base model or the adapter cannot be loaded."""


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def folder_sha256(folder: Path) -> str:
    """sha256 of the folder's `sha256sum`-style listing: "<sha256>  <relative path>" per file, sorted by path."""
    files = sorted((path.relative_to(folder).as_posix(), path) for path in folder.rglob("*") if path.is_file())
    listing = "".join(f"{file_sha256(path)}  {name}\n" for name, path in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def exported(kind: str, path: Path, gguf_type: str | None = None) -> ExportedFile:
    if path.is_dir():
        size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
        return ExportedFile(kind=kind, uri=str(path), sha256=folder_sha256(path), bytes=size)
    return ExportedFile(kind=kind, uri=str(path), sha256=file_sha256(path), bytes=path.stat().st_size,
                        gguf_type=gguf_type)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def merged_model(workload: ExportWorkload) -> tuple[Any, Any]:
    """(model with the adapter merged in, tokenizer), on this machine's accelerator, in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneloop.workload_data.chat import load_tokenizer

    adapter = Path(workload.adapter_path)
    try:
        if workload.method.type == "full":
            model = AutoModelForCausalLM.from_pretrained(adapter, dtype="auto")
        else:
            from peft import PeftModel

            dtype = AutoConfig.from_pretrained(workload.model_path).dtype or torch.float32
            base = AutoModelForCausalLM.from_pretrained(workload.model_path, dtype=torch.float32)
            # merged in float32 (a bf16 merge rounds the adapter's small updates away), kept in the base's dtype
            model = PeftModel.from_pretrained(base, adapter).merge_and_unload().to(dtype)
        has_tokenizer = (adapter / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(str(adapter if has_tokenizer else workload.model_path))
    except (OSError, ValueError) as error:
        raise InvalidModel(f"merging {adapter} into {workload.model_path}: {error}") from error
    return model.to(device()).eval(), tokenizer


def save_merged(model: Any, tokenizer: Any, target: Path) -> Path:
    """save_pretrained (safetensors) and the tokenizer into `target`, replacing it whole."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def model_name(workload: ExportWorkload) -> str:
    """The GGUF file's name stem: the FineTuneJob's name."""
    return workload.job.rpartition("/")[2] or "model"


def export(workload: ExportWorkload) -> ExportResult:
    from tuneloop_trainer.export_check import check_prompts, compare

    started = time.monotonic()
    converter = find_converter(workload.converter) if "gguf" in workload.formats else None
    model, tokenizer = merged_model(workload)
    folder = Path(workload.output_dir) / EXPORT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    merged = save_merged(model, tokenizer, folder / MERGED_FOLDER)
    log.info("merged model saved in %s", merged)
    model = model.float()  # the check's reference: the weights as saved, computed like the GGUF file read back
    files = [exported("merged", merged)] if "merged" in workload.formats else []
    agreement: GgufAgreement | None = None
    if converter is not None:
        gguf_type = workload.gguf.type
        gguf_file = folder / f"{model_name(workload)}-{gguf_type}.gguf"
        write_gguf(merged, gguf_file, gguf_type, converter)
        files.append(exported("gguf", gguf_file, gguf_type))
        log.info("%s written (%.0f MB); checking it against the merged model", gguf_file,
                 gguf_file.stat().st_size / 1e6)
        prompts = check_prompts(workload.test_path, workload.dataset.system_prompt, workload.gguf.check_rows,
                                tokenizer)
        agreement = compare(model, tokenizer, gguf_file, prompts, workload.max_new_tokens,
                            workload.gguf.expected_agreement())
    if "merged" not in workload.formats:
        shutil.rmtree(merged)
    return ExportResult(succeeded=True, message=ExportResults(files=files, agreement=agreement).describe(),
                        files=files, agreement=agreement,
                        seconds=round(time.monotonic() - started, 1))


def run(workload: ExportWorkload) -> ExportResult:
    from tuneloop.workload_data.rows import DataError

    try:
        return export(workload)
    except ConverterMissing as error:
        return failure("ConverterMissing", str(error))
    except UnsupportedModel as error:
        return failure("UnsupportedModel", str(error))
    except InvalidModel as error:
        return failure("InvalidModel", str(error))
    except DataError as error:
        return failure("InvalidWorkload", f"testPath: {error}")
    except (ConversionFailed, OSError) as error:
        return failure("ExportFailed", str(error))


def failure(reason: str, message: str) -> ExportResult:
    return ExportResult(succeeded=False, reason=reason, message=message)


def main(argv: list[str] | None = None) -> int:
    return workload_main(argv, "python -m tuneloop_trainer.export", __doc__, ExportWorkload, ExportResult, run,
                         failure, "ExportFailed", log)


if __name__ == "__main__":
    sys.exit(main())
