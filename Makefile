# make demo — set up everything and run the main job
# make test — set up everything and run the test suite
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.fedge-installed

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { echo "installing mosquitto (Debian package)"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; }
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
	  { echo "installing chromium (Debian package, for the dashboard's browser test)"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned to the CPU build; a GPU host installs its CUDA build first (README).
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cloud,edge,dev]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m simulations.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy cloud edge shared simulations

bench: $(STAMP)
	@# Peer runtimes for edge_inference.py; the constraint keeps the pinned torch.
	$(PY) -m pip install -q -e ".[bench]" "torch==2.13.0"
	$(PY) benchmarks/quantization.py
	$(PY) benchmarks/edge_inference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
