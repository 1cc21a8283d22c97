# castream: `make demo` builds and serves the default model; `make test` runs the whole suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint train export serve bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,serve,dev]'
	touch $(STAMP)

runs/default/castream.pt: | $(STAMP)
	$(BIN)/python -m training.fit

models/castream.onnx: runs/default/castream.pt
	$(BIN)/python -m export.to_onnx

train: runs/default/castream.pt

export: models/castream.onnx

serve: models/castream.onnx
	$(BIN)/python -m service

demo: serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest

clean:
	rm -rf runs models .pytest_cache
