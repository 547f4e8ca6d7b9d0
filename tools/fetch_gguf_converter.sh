#!/usr/bin/env bash
# Fetches llama.cpp's Hugging Face -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and
# its own gguf-py) as llama.cpp ships it inside the llama-cpp-python source distribution on PyPI: a pinned
# version, checked by sha256, nothing compiled. The export workload (tuneloop_trainer.export) runs it;
# the trainer image holds the same files in /opt/llama.cpp-convert. Later runs find the cache and
# return at once. Prints the converter's path (the value for TUNELOOP_GGUF_CONVERTER).
#   TUNELOOP_CACHE (default ~/.cache/tuneloop): where the tree goes.
#   PYTHON (default .venv/bin/python, else python3): whose pip downloads the sdist.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEST=${TUNELOOP_CACHE:-$HOME/.cache/tuneloop}/llama-cpp-python-$VERSION
TREE=llama_cpp_python-$VERSION/vendor/llama.cpp
CONVERTER=$DEST/convert_hf_to_gguf.py

if [ -f "$DEST/.complete" ]; then
  echo "$CONVERTER"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: --dest "$work" "llama-cpp-python==$VERSION" \
    2> >(grep -v "^WARNING: Location 'file:" >&2) >&2
sdist=$work/llama_cpp_python-$VERSION.tar.gz
echo "$SHA256  $sdist" | sha256sum --check --quiet - >&2 || {
  echo "fetch_gguf_converter: $sdist does not have the pinned sha256 $SHA256" >&2
  exit 1
}
tar -xzf "$sdist" -C "$work" "$TREE/convert_hf_to_gguf.py" "$TREE/conversion" "$TREE/gguf-py" "$TREE/LICENSE"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$work/$TREE" "$DEST"
touch "$DEST/.complete"
echo "$CONVERTER"
