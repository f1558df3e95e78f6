# Two entry points: `make demo` (sharded DLRM training on synthetic data) and `make test`.
# Both create .venv and install the project on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo docs test test-deps test-fast lint lint-imports bench bench-inference bench-launchers bench-data quality compare scale-model system-deps horovod clean

# Optional system libraries (jemalloc/tcmalloc allocators, numactl). Best effort: skipped without
# root or apt-get; disttrain falls back to the system allocator when they are absent.
system-deps:
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1; then \
		apt-get install -y -q libjemalloc2 google-perftools numactl >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libjemalloc2 google-perftools numactl >/dev/null 2>&1) || true; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,ray,onnx,s3]"
	touch $(STAMP)

demo: $(STAMP) system-deps
	$(BIN)/disttrain launch demo

# Chromium for the report test (it opens the HTML page headless); best effort like system-deps: without root or
# apt-get that test writes the page and skips the browser.
test-deps:
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1) || true; \
	fi

# The manual (docs/, mkdocs.yml) in strict mode: a broken link, a missing anchor or a page left out of the nav
# fails, and `make test` (what CI's .ci/run calls) builds it first.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

test: $(STAMP) test-deps lint-imports docs
	$(BIN)/ruff check disttrain models launchers tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10 tests

# The import contracts of pyproject.toml (layers, no cycles), checked with import-linter on the package as it
# installs: disttrain/models, disttrain/launchers and disttrain/cluster_configs are symlinks to the top-level
# folders, so a plain `lint-imports` in the checkout sees them inside disttrain (the wheel maps them by package-dir).
lint-imports: $(STAMP)
	$(BIN)/lint-imports

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

bench: $(STAMP) system-deps
	$(BIN)/disttrain bench

# Side by side with TorchRec and the reference DLRM (install them first: benchmarks/peers/README.md).
# disttrain (2 ranks, 1 process, fp32, bf16) and TorchRec (table-wise, its pipeline) interleaved; the ratios of
# issue 21. TORCHREC_PYTHON defaults to ../peers/torchrec-venv (benchmarks/peers/README.md) when it exists.
TORCHREC_PYTHON ?= $(wildcard ../peers/torchrec-venv/bin/python)
compare: $(STAMP) system-deps
	$(BIN)/python benchmarks/compare_peers.py --rounds 3 $(if $(TORCHREC_PYTHON),--torchrec-python $(abspath $(TORCHREC_PYTHON))) $(if $(DLRM_SCRIPT),--dlrm-script $(DLRM_SCRIPT))

# Optional: Horovod 0.28.1 built for torch 2.13 (2-5 minutes on 2 cores). The wheel is kept outside the checkout
# (WHEELHOUSE, default ~/.cache/disttrain/wheelhouse), so another clone on this machine installs it at once.
WHEELHOUSE ?= $(HOME)/.cache/disttrain/wheelhouse
horovod: $(STAMP)
	WHEELHOUSE=$(WHEELHOUSE) bash launchers/build_horovod.sh $(BIN)/python

# Inference: fp32 vs bf16 vs int8 (DLRM kaggle, DIEN), DIEN latency, onnxruntime vs PyTorch (Wide&Deep).
bench-inference: $(STAMP) system-deps
	$(BIN)/python benchmarks/inference.py --rounds 3

# The same job under every launcher, one after another (local, torchrun, Ray, Horovod when installed).
bench-launchers: $(STAMP) system-deps
	$(BIN)/python benchmarks/launchers.py

# The planner's cost model against measured runs: 1, 2, 3 ranks here and two nodes in network namespaces
# (root) joined by a token-bucket-limited veth pair.
scale-model: $(STAMP) system-deps
	$(BIN)/python benchmarks/scale_model.py --rate $(or $(RATE),1gbit)

# DLRM on real Criteo rows (../shared/data/criteo-kaggle-8k), and three models on real Avazu rows (no dense column,
# headers in one file of three), each beside scikit-learn logistic regression on the same prepared columns.
QUALITY_DATA ?= ../shared/data/criteo-kaggle-8k
AVAZU_DATA ?= ../shared/data/avazu-9k
quality: $(STAMP)
	$(BIN)/pip install -q -e ".[quality]"
	$(BIN)/python benchmarks/quality_criteo.py --data $(QUALITY_DATA)
	if [ -d $(AVAZU_DATA) ]; then $(BIN)/python benchmarks/quality_avazu.py --data $(AVAZU_DATA); fi

# Criteo preprocessing rows/s beside the reference DLRM's, and the loader against training (DLRM_DIR: a
# facebookresearch/dlrm checkout; see benchmarks/peers/README.md).
DLRM_DIR ?= /work/peers/dlrm
bench-data: $(STAMP) system-deps
	$(BIN)/python benchmarks/criteo_data.py --dlrm-dir $(DLRM_DIR)

clean:
	rm -rf $(VENV) runs build *.egg-info
