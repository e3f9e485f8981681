# Developer shortcuts. Every target assumes the project venv is active:
#   python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e '.[test,all]'
# (README.md, "First commands on a fresh machine"; docs/contributing.md).

PYTHON ?= python

.DEFAULT_GOAL := help
.PHONY: help test test-quick lint format aot bench

help: ## list the targets (the default)
	@echo "bcrn_fast developer targets (run inside the activated venv: . .venv/bin/activate)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-11s %s\n", $$1, $$2}'

test: ## the whole suite, as CI runs it (tests + benchmarks; slow under the Triton interpreter)
	$(PYTHON) -m pytest tests benchmarks -q -p no:cacheprovider --durations=25

test-quick: ## the inner loop: tests/ without the slow ones (BCRN_QUICK=1), stop at the first failure
	BCRN_QUICK=1 $(PYTHON) -m pytest tests -q -x -p no:cacheprovider

lint: ## ruff check and ruff format --check (what CI runs)
	ruff check . && ruff format --check .

format: ## ruff format, then ruff check --fix
	ruff format . && ruff check --fix .

aot: ## ahead-of-time compile every Triton kernel config for sm_80/86/89/90, 2 shapes (no GPU needed)
	$(PYTHON) -m bcrn_fast.aot --quick

bench: ## quick benchmark: reference vs fused model on whatever device is here
	bcrn-fast bench --quick
