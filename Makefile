# fhb — two commands on a fresh machine: `make demo` (the main job on the bundled fixture) and
# `make test` (the whole suite). Both set up first when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fhb-setup
REF_STAMP := $(VENV)/.fhb-reference
PIP := $(BIN)/python -m pip
PIP_FLAGS := --disable-pip-version-check -q -c constraints.txt
FAIRSEQ := fairseq-fixed==0.12.3.1
# Packages fairseq imports (it is built with --no-deps: its own pins predate Python 3.11).
FAIRSEQ_DEPS := cffi cython hydra-core omegaconf regex sacrebleu tqdm bitarray scikit-learn packaging wheel setuptools

.PHONY: setup setup-reference test test-fast demo bench clean

setup: $(STAMP) $(REF_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) --upgrade pip
	$(PIP) install $(PIP_FLAGS) -e '.[test]'
	touch $@

# The reference implementation for parity tests: fairseq itself (~6 min to build once; pip
# caches the wheel). Only tests and benchmarks use it, never fhb.
$(REF_STAMP): $(STAMP)
	$(PIP) install $(PIP_FLAGS) $(FAIRSEQ_DEPS)
	$(BIN)/python -c "import fairseq" 2>/dev/null || \
		MAX_JOBS=2 $(PIP) install $(PIP_FLAGS) --no-deps --no-build-isolation $(FAIRSEQ)
	touch $@

test: setup
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing failed"; exit 0; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not reference"

demo: $(STAMP)
	$(BIN)/fhb demo

bench: setup
	$(BIN)/python benchmarks/run_all.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) demo-out .pytest_cache
