# castream: `make demo` builds and serves the default model; `make test` runs the whole suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint train export serve bench clean chromium containers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,serve,dev]'
	touch $(STAMP)

runs/default/castream.pt: | $(STAMP)
	$(BIN)/python -m training.fit

models/castream.onnx: runs/default/castream.pt
	$(BIN)/python -m export.to_onnx

# The bench times int8 itself, side by side with fp32; the export's own speed check would refuse the file on a busy CPU.
models/castream-int8.onnx: runs/default/castream.pt
	$(BIN)/python -m export.to_onnx --int8 --min-speedup 0 --out models/castream-int8.onnx

train: runs/default/castream.pt

export: models/castream.onnx

serve: models/castream.onnx
	@echo "Serving models/castream.onnx on http://localhost:8000 (upload page: http://localhost:8000/)"
	@echo "Try: curl -s -F file=@path/to/image.png 'http://localhost:8000/classify?top_k=3'"
	CASTREAM_MODEL_PATH=models/castream.onnx CASTREAM_PORT=8000 $(BIN)/python -m service

demo: serve

# Every speed figure in one run (under 15 minutes on 2 cores, loopback only): rewrites BENCHMARKS.md, its plot and
# benchmarks/results.json. Run it on an otherwise idle machine.
bench: models/castream.onnx models/castream-int8.onnx | $(STAMP)
	$(BIN)/python -m benchmarks.report --model models/castream.onnx --int8-model models/castream-int8.onnx

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser test of the service's page drives Debian's chromium; install it once where it is missing.
chromium:
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# The images for real (root): starts a Docker engine where none runs (deploy/offline/docker-engine.sh), provides the
# base image where no registry answers (deploy/offline/standin-base.sh), builds and runs the CPU image with a tiny
# model, with Prometheus scraping it. Part of the slow suites below.
containers: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/deploy

# Slow suites (long end-to-end runs) join the default run in CI, or with `make test SLOW=1`.
test: $(STAMP) lint chromium
	$(BIN)/python -m pytest $(if $(or $(CI),$(SLOW)),,-m "not slow")

clean:
	rm -rf runs models .pytest_cache
