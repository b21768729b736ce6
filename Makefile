# recexp — `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build by default. GPU machines: make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-slow bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with torch (CPU unless TORCH_INDEX says otherwise) and recexp
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

run: install ## the default experiment: Pop and BPR on random and cold_item splits of ml-100k
	$(PY) -m recexp -m experiment=quickstart hydra.sweep.dir=outputs/quickstart

test: install ## fast test suite (CPU, well under 15 minutes)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install ## slow end-to-end checks (published BPR range, LightGCN, real-model training)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: install ## time the pipeline and model fits; writes outputs/bench/bench.json
	$(PY) -m recexp.bench --out outputs/bench --models $(or $(BENCH_MODELS),pop,bpr,text_tower)

clean: ## remove outputs/ and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache
