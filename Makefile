# Two entry points: `make demo` (sharded DLRM training on synthetic data) and `make test`.
# Both create .venv and install the project on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/disttrain launch cluster_configs/demo.yaml

test: $(STAMP)
	$(BIN)/ruff check disttrain models launchers tests benchmarks
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/disttrain bench

clean:
	rm -rf $(VENV) runs build *.egg-info
