# Two entry points, both self-contained on a fresh machine:
#   make demo   create .venv if missing, install fulcra, run every workflow on embedded data
#   make test   create .venv if missing, install fulcra with its test extras, run the suite
# torch/torchvision are pinned to the wheels that lie on this kind of machine's disk, and passed as
# constraints to every later install so that no dependency can pull another torch build.

VENV      ?= .venv
PYTHON    ?= python3
TORCH     ?= torch==2.14.1 torchvision==0.29.1
EXTRAS    ?= dev
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
STAMP     := $(VENV)/.fulcra-installed-$(EXTRAS)
OUT       ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-portability clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/constraints.txt: | $(PY)
	printf '%s\n' $(TORCH) > $@

$(STAMP): pyproject.toml | $(PY) $(VENV)/constraints.txt
	$(PIP) install $(TORCH)
	$(PIP) install -c $(VENV)/constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fulcra demo --out $(OUT)

LINTED := framework plugins tests benchmarks scripts

# lint and format check, the plugin classes against their kinds' Protocols (mypy), then the suite;
# the slow tests (2-process torchrun checks) fit the budget, so the suite runs them too
test: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) scripts/gen_protocol_checks.py --check
	$(PY) -m mypy tests/typing/protocol_conformance.py
	$(PY) -m pytest -q --timeout=900 --run-slow $(PYTEST_ARGS)

# the suites whose results must not depend on the machine (ops, composite, policies, search steps),
# again under other MKL code paths and with 2 intra-op threads: a result that changes with the BLAS
# kernel or the thread count fails here on any machine, Intel or AMD
PORTABLE_TESTS ?= tests/plugins/augment tests/plugins/slack
test-portability: $(STAMP)
	@set -e; for cbwr in AVX2 COMPATIBLE; do for threads in 1 2; do \
	  echo "== MKL_CBWR=$$cbwr FULCRA_TEST_THREADS=$$threads"; \
	  MKL_CBWR=$$cbwr FULCRA_TEST_THREADS=$$threads $(PY) -m pytest -q -p no:cacheprovider --timeout=900 \
	    $(PORTABLE_TESTS) --deselect tests/plugins/augment/test_machine_independence.py; \
	done; done

clean:
	rm -rf $(VENV) runs .pytest_cache
