# ncood: two commands on a fresh machine.
#   make demo   runs `ncood run` on the embedded default (Fashion-MNIST, offline)
#   make test   runs the test suite
# Each creates .venv if missing and installs what it needs.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch 2.14.1 + torchvision 0.29.1 are the pair that installs from this machine's disk
# (PyPI's torchvision does not import beside the CPU-only torch 2.13.0 file).
TORCH   := torch==2.14.1 torchvision==0.29.1
DATA_ROOT ?= $(firstword $(wildcard ../shared/data) $(HOME)/.cache/ncood)

.PHONY: demo test test-fast lint bench mutation install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,timm,explain,faiss]'  # extras too: their tests run, not skip
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	NCOOD_DATA_ROOT=$(DATA_ROOT) $(BIN)/ncood run

test: $(STAMP)
	NCOOD_DATA_ROOT=$(DATA_ROOT) $(BIN)/python -m pytest -q tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: $(STAMP)
	NCOOD_DATA_ROOT=$(DATA_ROOT) $(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Mutation testing (not CI; CPU heavy, docs/testing.md): mutmut mutates detectors/,
# metrics.py and collapse/ ([tool.mutmut] in pyproject.toml) and runs the fast tests that
# cover each mutant; results stay in mutants/ (`.venv/bin/mutmut results`, `mutmut show
# NAME`). MUTANTS narrows the run to a glob of mutant names, e.g.
#   make mutation MUTANTS='ncood.collapse.metrics.*'
# One BLAS thread: mutmut forks workers, and a forked OpenBLAS thread pool deadlocks.
# On a shared machine: nice -n 19 make mutation MUTATION_JOBS=1 MUTANTS='GLOB [GLOB ...]'
MUTANTS ?=
MUTATION_JOBS ?= 2
mutation: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NCOOD_DATA_ROOT=$(DATA_ROOT) \
	  $(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(BIN)/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json

bench: $(STAMP)
	$(BIN)/python benchmarks/detectors.py
	$(BIN)/python benchmarks/collapse.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build .pytest_cache runs
