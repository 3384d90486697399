# Mid-training pipeline: download -> extract -> merge -> tokenize -> count -> mix -> train -> convert -> soup.
# `make` or `make help` lists the targets. Site settings (PBS_GROUP, PBS_QUEUE, TOKENIZER_MODEL, ...)
# belong in a git-ignored local.mk beside this file, or on the command line.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
.SUFFIXES:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
-include $(REPO)/local.mk

# ---------------------------------------------------------------------------------------------
# Knobs (override on the command line or in local.mk). None names a group, queue or cluster path.
# ---------------------------------------------------------------------------------------------
EXP_DIR ?= $(REPO)/exp
SCHEDULER ?= local
DEPEND ?=
PBS_GROUP ?=
PBS_QUEUE ?=
PBS_RTYPE ?=
WALLTIME ?=
NODES ?= 1
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
DATASET ?= dolmino-mix-1124
TASK ?= v4-dolmino-mix-1124
PARAM ?= 7.7b_v4_3.5t_tokenizer_v3.1
SIZE ?= 50B
SEED ?= 42
SEEDS ?= 42 42069 666
TOKENIZER_MODEL ?=
TOKENIZER_NAME ?= v3.1
MEGATRON_PATH ?=
ENV_DIR ?=
PYTHON ?= python3
PYTEST_ARGS ?= -q
DEMO_DIR ?= $(EXP_DIR)/demo

SCHEDULERS := local pbs
$(if $(filter $(SCHEDULER),$(SCHEDULERS)),,$(error SCHEDULER must be one of: $(SCHEDULERS) (got '$(SCHEDULER)')))
# $(call require_int,VAR): VAR must be a whole number (leading zeros refused)
require_int = $(if $(shell [[ '$($(1))' =~ ^(0|[1-9][0-9]*)$$ ]] && echo y),,$(error $(1) must be a whole number (got '$($(1))')))
$(call require_int,NODES)$(if $(filter 0,$(NODES)),$(error NODES must be at least 1))
$(call require_int,SEED)
$(call require_int,JOBS)
$(if $(strip $(EXP_DIR)),,$(error EXP_DIR must not be empty))
override EXP_DIR := $(abspath $(EXP_DIR))
override DEMO_DIR := $(abspath $(DEMO_DIR))

VENV := $(REPO)/.venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed

# One submission mechanism for every job: scripts/submit.py runs a pbs/ template here or with qsub.
SUBMIT = $(PY) $(REPO)/scripts/submit.py --scheduler $(SCHEDULER) --exp-dir $(EXP_DIR) \
	--group '$(PBS_GROUP)' --queue '$(PBS_QUEUE)' --rtype '$(PBS_RTYPE)' --depend '$(DEPEND)' \
	--nodes $(NODES) --parallel $(JOBS)
# $(call walltime,DEFAULT): WALLTIME if given, else the step's default
walltime = $(or $(WALLTIME),$(1))
NOT_BUILT = @echo "make $@: not built yet (see the open issues)" >&2; exit 2

.PHONY: help
help: ## list the targets and the main knobs
	@echo "Usage: make <target> [VAR=value ...]   (site settings go in local.mk)"
	@echo
	@grep -hE '^[a-zA-Z][a-zA-Z0-9_-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Knobs: EXP_DIR=$(EXP_DIR) SCHEDULER=$(SCHEDULER) DATASET=$(DATASET) TASK=$(TASK)"
	@echo "       PARAM=$(PARAM) SIZE=$(SIZE) SEED=$(SEED) NODES=$(NODES) DEPEND=$(DEPEND)"
	@echo "       PBS_GROUP PBS_QUEUE PBS_RTYPE WALLTIME TOKENIZER_MODEL MEGATRON_PATH ENV_DIR (no defaults)"

# ---------------------------------------------------------------------------------------------
# Set-up and checks
# ---------------------------------------------------------------------------------------------
.PHONY: setup test lock
setup: $(VENV_STAMP) ## create .venv with the pinned requirements (idempotent)

$(VENV_STAMP): $(REPO)/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(REPO)/requirements.txt
	touch $@

test: $(VENV_STAMP) ## run the test suite (sets up .venv first when needed)
	cd $(REPO) && $(PY) -m pytest $(PYTEST_ARGS) tests

lock: ## re-resolve requirements.in into the pinned requirements.txt (needs the network)
	rm -rf $(REPO)/.venv-lock && $(PYTHON) -m venv $(REPO)/.venv-lock
	$(REPO)/.venv-lock/bin/pip install --quiet -r $(REPO)/requirements.in
	{ echo "# Generated from requirements.in by 'make lock' (pip freeze of a fresh venv). Do not edit by hand."; \
	  $(REPO)/.venv-lock/bin/pip freeze | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/'; } > $(REPO)/requirements.txt
	rm -rf $(REPO)/.venv-lock

.PHONY: demo bench status
# every demo step runs locally on the sample; each line is one pipeline target
DEMO_MAKE = $(MAKE) --no-print-directory EXP_DIR=$(DEMO_DIR) SCHEDULER=local DATASET=dolmino-mix-1124
demo: $(VENV_STAMP) ## run the whole pipeline on a generated dolmino-shaped sample under DEMO_DIR
	$(PY) $(REPO)/scripts/demo_data.py --output $(DEMO_DIR)/dolmino-mix-1124
	$(DEMO_MAKE) extract merge
	$(DEMO_MAKE) status

BENCH_ARGS ?=
bench: $(VENV_STAMP) ## benchmarks, printed side by side with their references
	cd $(REPO) && for bench in scripts/bench_*.py; do $(PY) "$$bench" $(BENCH_ARGS); done

status: $(VENV_STAMP) ## table of the pipeline's stages and submitted jobs
	$(PY) $(REPO)/scripts/status.py --exp-dir $(EXP_DIR) --dataset $(DATASET) --tokenizer-name $(TOKENIZER_NAME) \
		--scheduler $(SCHEDULER)

# ---------------------------------------------------------------------------------------------
# Data: download -> extract -> merge -> tokenize -> count -> mix
# ---------------------------------------------------------------------------------------------
.PHONY: download extract merge tokenize clean-intermediate count mix
download: $(VENV_STAMP) ## fetch DATASET from the Hugging Face hub into EXP_DIR/<dataset>
	$(NOT_BUILT)

extract: $(VENV_STAMP) ## decompress the raw files into EXP_DIR/<dataset>-extracted
	$(NOT_BUILT)

merge: $(VENV_STAMP) ## concatenate extracted files into grouped JSONL (<dataset>-extracted-merged)
	$(NOT_BUILT)

clean-intermediate: $(VENV_STAMP) ## remove extracted and merged trees once every tokenized output is complete
	$(NOT_BUILT)

tokenize: $(VENV_STAMP) ## tokenize merged files into Megatron .bin/.idx (<dataset>-<tok>-tokenized)
	$(NOT_BUILT)

count: $(VENV_STAMP) ## exact token counts from .idx files -> tasks/<TASK>/train_data.all.sh
	$(NOT_BUILT)

mix: $(VENV_STAMP) ## mixture list tasks/<TASK>/train_data_<SIZE>.sh plus a report
	$(NOT_BUILT)

# ---------------------------------------------------------------------------------------------
# Training: env -> init -> train (per seed) -> convert -> soup
# ---------------------------------------------------------------------------------------------
.PHONY: env env-check args init ckpt-info train train-seeds chain convert soup-config soup report
env: $(VENV_STAMP) ## install the training environment (Megatron-LM, TE, apex, flash-attn) into ENV_DIR
	$(NOT_BUILT)

env-check: $(VENV_STAMP) ## check that ENV_DIR can run the jobs (versions, GPUs, imports)
	$(NOT_BUILT)

args: $(VENV_STAMP) ## print the Megatron arguments of a run (TASK PARAM SIZE SEED)
	$(NOT_BUILT)

init: $(VENV_STAMP) ## prepare a run directory from the pretrained checkpoint (BASE_CKPT)
	$(NOT_BUILT)

ckpt-info: $(VENV_STAMP) ## describe a Megatron checkpoint without Megatron (CKPT)
	$(NOT_BUILT)

train: $(VENV_STAMP) ## submit one training run (TASK PARAM SIZE SEED NODES [DEPEND])
	$(NOT_BUILT)

train-seeds: $(VENV_STAMP) ## submit one training run per seed in SEEDS
	$(NOT_BUILT)

chain: $(VENV_STAMP) ## submit train -> convert per seed, then soup, chained with afterok
	$(NOT_BUILT)

convert: $(VENV_STAMP) ## convert a run's Megatron checkpoint to Hugging Face format
	$(NOT_BUILT)

soup-config: $(VENV_STAMP) ## write merge/<NAME>.yaml averaging the seed runs
	$(NOT_BUILT)

soup: $(VENV_STAMP) ## merge the runs of MERGE=merge/<name>.yaml with mergekit and verify
	$(NOT_BUILT)

report: $(VENV_STAMP) ## loss / throughput plots and a summary of a run's training logs
	$(NOT_BUILT)
