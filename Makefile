# castream: `make demo` exports and serves the shipped default model; `make test` runs the whole suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Two installs: what serving and exporting need (the demo), and everything (training, tests, lint, benchmarks).
# Both take the serving packages at the versions the images pin, so the tests run what the containers run.
PINS := deploy/requirements-serve.txt
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed
CHECKPOINT := checkpoints/default/castream.pt
# The demo's last step; a test replaces it with a readiness check.
SERVE ?= $(BIN)/python -m service

.PHONY: demo test lint train export serve bench clean chromium wrk containers

$(SERVE_STAMP): pyproject.toml $(PINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(PINS) -e '.[export,serve]'
	touch $(SERVE_STAMP)

$(STAMP): pyproject.toml $(PINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(PINS) -e '.[train,serve,dev]'
	touch $(STAMP) $(SERVE_STAMP)

models/castream.onnx: $(CHECKPOINT) | $(SERVE_STAMP)
	$(BIN)/python -m export.to_onnx --checkpoint $(CHECKPOINT)

# The bench times int8 itself, side by side with fp32; the export's own speed check would refuse the file on a busy CPU.
models/castream-int8.onnx: $(CHECKPOINT) | $(STAMP)
	$(BIN)/python -m export.to_onnx --checkpoint $(CHECKPOINT) --int8 --min-speedup 0 --out models/castream-int8.onnx

# Retrains the shipped model from scratch into runs/default/ with the options it recorded, and compares the metrics.
train: | $(STAMP)
	$(BIN)/python -m training.reproduce

export: models/castream.onnx

serve: models/castream.onnx
	@echo "Serving models/castream.onnx on http://localhost:8000 (upload page: http://localhost:8000/)"
	@echo "Try: curl -s -F file=@path/to/image.png 'http://localhost:8000/classify?top_k=3'"
	CASTREAM_MODEL_PATH=models/castream.onnx CASTREAM_PORT=8000 $(SERVE)

demo: serve

# Every figure in one run (about 40 minutes on 2 cores, a 10-minute soak included; loopback only): rewrites
# BENCHMARKS.md, its plot and benchmarks/results.json. Run it on an otherwise idle machine.
bench: models/castream.onnx models/castream-int8.onnx wrk | $(STAMP)
	$(BIN)/python -m benchmarks.report --model models/castream.onnx --int8-model models/castream-int8.onnx

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser test of the service's page drives Debian's chromium; install it once where it is missing.
chromium:
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# The load benchmark drives the service from outside with Debian's wrk; install it once where it is missing.
wrk:
	@command -v wrk >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk)

# The images for real (root): starts a Docker engine where none runs (deploy/offline/docker-engine.sh), provides the
# base image where no registry answers (deploy/offline/standin-base.sh), builds and runs the CPU image with a tiny
# model, with Prometheus scraping it. Part of the slow suites below.
containers: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/deploy

# Slow suites (long end-to-end runs) join the default run in CI, or with `make test SLOW=1`.
test: $(STAMP) lint chromium wrk
	$(BIN)/python -m pytest $(if $(or $(CI),$(SLOW)),,-m "not slow")

clean:
	rm -rf runs models .pytest_cache
