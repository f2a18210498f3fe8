# covjax: the two commands of the README.
#   make demo  -- create .venv, install, run the main job on the embedded synthetic data
#   make test  -- create .venv, install, lint, run every test, build the docs (runs the notebooks)
#   make docs  -- build the documentation site into docs/_build/html (executes the notebooks)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-numerics lint bench docs clean

# --no-compile: Python byte-compiles the modules it imports on first use; pip would
# compile every module of every package (most of TensorFlow's are never imported).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.main $(DEMO_FLAGS)

lint: $(STAMP)
	$(PY) -m ruff check .

# The docs build executes the three notebooks: a failing cell fails it, so this is their test.
# Both share one persistent XLA compilation cache (a temporary one unless
# JAX_COMPILATION_CACHE_DIR is set): the notebooks compile many of the programs the
# tests compiled (the depth network at its test size), which saves the docs build
# about 50 CPU seconds. Both compile with the tests' XLA flags (less LLVM
# optimisation, tests/fast_compile.py); the cache's keys include the flags.
test: $(STAMP) lint
	@set -e; cache="$${JAX_COMPILATION_CACHE_DIR:-}"; \
	if [ -z "$$cache" ]; then cache=$$(mktemp -d); trap 'rm -rf "$$cache"' EXIT; fi; \
	export JAX_COMPILATION_CACHE_DIR="$$cache"; \
	export XLA_FLAGS="$$($(PY) tests/fast_compile.py)"; \
	echo "pytest and the docs build share the XLA compilation cache $$cache (XLA_FLAGS=$$XLA_FLAGS)"; \
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 tests; \
	$(MAKE) docs

# A fresh environment (-E) every time, so every page's warnings show (and fail) on every build.
docs: $(STAMP)
	$(PY) -m sphinx -b html -E -W --keep-going -q docs docs/_build/html

# The numerically sensitive tests under two other XLA:CPU configurations (one core; AVX2),
# both with XLA's default optimisation (make test compiles with less: tests/fast_compile.py).
NUMERIC_TESTS := tests/test_aggregators.py tests/test_pcgrad.py tests/test_gradvac.py tests/test_cagrad.py \
	tests/test_imtl.py tests/test_nash_mtl.py tests/test_aligned_mtl.py tests/test_upgrad.py tests/test_db_mtl.py \
	tests/test_solvers.py tests/test_gradnorm.py tests/test_mgda.py tests/test_loss_groups.py \
	tests/test_factorized.py tests/test_gradients.py tests/test_loss_schemes.py tests/test_cov.py \
	tests/test_base.py tests/test_sharding.py tests/test_loss_values.py tests/test_wrappers.py \
	tests/test_solvers_vs_peers.py tests/test_conv.py tests/test_aggregator_properties.py \
	tests/test_fairgrad.py tests/test_dualproj.py tests/test_krum.py tests/test_sdmgrad.py tests/test_modo.py \
	tests/test_cr_mogm.py tests/test_pcd.py tests/test_trimmed_mean.py tests/test_graddrop.py \
	tests/test_conflict_free.py tests/test_moco.py tests/test_excess_mtl.py tests/test_stch.py \
	tests/test_pbi.py tests/test_cosmos.py tests/test_lbpinn.py tests/test_lr_annealing.py \
	tests/test_ntk_weighting.py tests/test_cross_gramian.py tests/test_program.py
test-numerics: $(STAMP)
	COVJAX_TESTS_FULL_OPTIMISATION=1 taskset -c 0 $(PY) -m pytest -q -n 0 $(NUMERIC_TESTS)
	COVJAX_TESTS_FULL_OPTIMISATION=1 XLA_FLAGS=--xla_cpu_max_isa=AVX2 $(PY) -m pytest -q -n 0 $(NUMERIC_TESTS)

bench: $(STAMP)
	$(PY) -m experiments.benchmarks.weighting_overhead

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build docs/api
