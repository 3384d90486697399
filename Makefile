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
SLURM_ACCOUNT ?=
SLURM_PARTITION ?=
SLURM_GPUS_PER_NODE ?=
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
TRAIN_PYTHON ?=
PYTHON ?= python3
PYTEST_ARGS ?= -q
DEMO_DIR ?= $(EXP_DIR)/demo

# Every knob reaches a recipe's shell as data, never as code: through $(call q,...) (one single-quoted
# word, whatever it holds), as a number or name checked here with make functions only, or from the
# environment. $(call q,TEXT): TEXT as one shell word; $(call qwords,LIST): each word of LIST quoted alone.
q = '$(subst ','\'',$(1))'
qwords = $(foreach w,$(1),$(call q,$(w)))
# $(call require_int,VAR): VAR must be a whole number (leading zeros refused)
nodigits = $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,$(subst 8,,$(subst 9,,$(1)))))))))))
require_int = $(if $(and $(filter 1,$(words x$($(1))x)),$(strip $($(1))),$(if $(call nodigits,$($(1))),,y),$(if $(filter 0%,$($(1))),$(filter 0,$($(1))),y)),,$(error $(1) must be a whole number (got '$($(1))')))
# $(call require_name,VAR): VAR must be a name of letters, digits and _.+- (it names folders and jobs)
NAME_CHARS := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z \
	0 1 2 3 4 5 6 7 8 9 _ . + -
strip_chars = $(if $(2),$(call strip_chars,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,$(words $(2)),$(2))),$(1))
require_name = $(if $(and $(filter 1,$(words x$($(1))x)),$(strip $($(1))),$(if $(call strip_chars,$($(1)),$(NAME_CHARS)),,y)),,$(error $(1) must be a name of letters, digits and _.+- (got '$($(1))')))
# $(call apath,VAR): VAR's value made absolute; make's path functions split on spaces, so one is refused
apath = $(if $(filter-out 1,$(words x$($(1))x)),$(error $(1)='$($(1))' holds a space or tab: make's path functions cannot take one; use a path without),$(abspath $($(1))))

# knobs renamed so that each name means one thing: a value under an old name would otherwise be ignored
renamed_knob = $(if $(filter command line file override,$(origin $(1))),$(error $(1) was renamed: use $(2)))
$(call renamed_knob,VERIFY,VERIFY_HASHES=1 for make download or SOUP_VERIFY=sample for make soup)
$(call renamed_knob,MERGE,SOUP_CONFIG=<mergekit config>)
$(call renamed_knob,MERGE_DIR,SOUP_CONFIG_DIR=<folder of the soup configs>)
$(call renamed_knob,NAME,SOUP_NAME=<soup name>)
$(call renamed_knob,CUDA,SOUP_CUDA=1)

SCHEDULERS := local pbs slurm
$(if $(filter $(SCHEDULER),$(SCHEDULERS)),,$(error SCHEDULER must be one of: $(SCHEDULERS) (got '$(SCHEDULER)')))
$(call require_int,NODES)$(if $(filter 0,$(NODES)),$(error NODES must be at least 1))
$(call require_int,SEED)
$(call require_int,JOBS)
$(foreach v,DATASET TASK SIZE TOKENIZER_NAME,$(call require_name,$(v)))
$(if $(filter-out 1,$(words x$(REPO)x)),$(error the checkout '$(REPO)' is in a folder whose path holds a space: make cannot handle that; move it))
$(if $(strip $(EXP_DIR)),,$(error EXP_DIR must not be empty))
override EXP_DIR := $(call apath,EXP_DIR)
override DEMO_DIR := $(call apath,DEMO_DIR)
# PBS_TIMEOUT: seconds a qsub or qstat call may take before it is given up with a message
PBS_TIMEOUT ?= 120
$(call require_int,PBS_TIMEOUT)$(if $(filter 0,$(PBS_TIMEOUT)),$(error PBS_TIMEOUT must be at least 1))
export PBS_TIMEOUT

VENV := $(REPO)/.venv
# PIPELINE_PYTHON: run the pipeline's own scripts with this interpreter (its packages already installed, e.g. on
# a GPU machine without network) instead of creating .venv; the local jobs inherit it
PIPELINE_PYTHON ?=
PY := $(or $(PIPELINE_PYTHON),$(VENV)/bin/python)
VENV_STAMP := $(if $(PIPELINE_PYTHON),,$(VENV)/.installed)
export PIPELINE_PYTHON

# One submission mechanism for every job: scripts/submit.py runs a pbs/ template here or with qsub
# (pipeline/scheduler.py); SCHEDULER_FLAGS are what scripts/train.py and convert.py pass on to it.
SCHEDULER_FLAGS = --scheduler $(SCHEDULER) --exp-dir $(call q,$(EXP_DIR)) \
	--group $(call q,$(PBS_GROUP)) --queue $(call q,$(PBS_QUEUE)) --rtype $(call q,$(PBS_RTYPE)) \
	--account $(call q,$(SLURM_ACCOUNT)) --partition $(call q,$(SLURM_PARTITION)) \
	--slurm-gpus-per-node $(call q,$(SLURM_GPUS_PER_NODE)) --depend $(call q,$(DEPEND)) --nodes $(NODES) --parallel $(JOBS)
SUBMIT = $(PY) $(REPO)/scripts/submit.py $(SCHEDULER_FLAGS)
# One walltime per job (HH:MM:SS); a site's limits go in local.mk. WALLTIME=... overrides the job of the
# target run (in make chain: the train jobs). $(call walltime,STEP): WALLTIME if given, else STEP_WALLTIME (quoted).
DOWNLOAD_WALLTIME ?= 48:00:00
EXTRACT_WALLTIME ?= 12:00:00
MERGE_WALLTIME ?= 24:00:00
CLEAN_WALLTIME ?= 02:00:00
TOKENIZE_WALLTIME ?= 12:00:00
ENV_WALLTIME ?= 04:00:00
ENV_CHECK_WALLTIME ?= 00:10:00
INIT_WALLTIME ?= 00:30:00
TRAIN_WALLTIME ?= 168:00:00
CONVERT_WALLTIME ?= 04:00:00
SOUP_WALLTIME ?= 04:00:00
walltime = $(call q,$(or $(WALLTIME),$($(1)_WALLTIME)))

.PHONY: help
help: ## list the targets and the main knobs
	@echo "Usage: make <target> [VAR=value ...]   (site settings go in local.mk)"
	@echo
	@grep -hE '^[a-zA-Z][a-zA-Z0-9_-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'
	@echo
	@echo Knobs: EXP_DIR=$(call q,$(EXP_DIR)) SCHEDULER=$(SCHEDULER) DATASET=$(DATASET) TASK=$(TASK)
	@echo '       'PARAM=$(call q,$(PARAM)) SIZE=$(SIZE) SEED=$(SEED) NODES=$(NODES) DEPEND=$(call q,$(DEPEND))
	@echo "       PBS_GROUP PBS_QUEUE PBS_RTYPE WALLTIME TOKENIZER_MODEL MEGATRON_PATH ENV_DIR (no defaults)"
	@echo "       HF_TOKENIZER_DIR (the Hugging Face tokenizer folder: make hf-tokenizer writes it, convert and soup"
	@echo "       check it against TOKENIZER_MODEL) TOKENIZER_CHECK_DOCS (documents make hf-tokenizer checks too)"

# ---------------------------------------------------------------------------------------------
# Set-up and checks
# ---------------------------------------------------------------------------------------------
.PHONY: setup test lint lock
setup: $(VENV_STAMP) ## create .venv with the pinned requirements (idempotent)

$(VENV_STAMP): $(REPO)/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(REPO)/requirements.txt
	touch $@

test: $(VENV_STAMP) ## run the test suite (sets up .venv first when needed)
	cd $(REPO) && $(PY) -m pytest $(call qwords,$(PYTEST_ARGS)) tests

lint: $(VENV_STAMP) ## ruff on the Python, shellcheck on pbs/ and .ci/run (rules: pyproject.toml, .shellcheckrc)
	cd $(REPO) && $(VENV)/bin/ruff check . && $(VENV)/bin/shellcheck pbs/*.pbs pbs/*.sh .ci/run

lock: ## re-resolve requirements.in into the pinned requirements.txt (needs the network)
	rm -rf $(REPO)/.venv-lock && $(PYTHON) -m venv $(REPO)/.venv-lock
	$(REPO)/.venv-lock/bin/pip install --quiet -r $(REPO)/requirements.in
	{ echo "# Generated from requirements.in by 'make lock' (pip freeze of a fresh venv). Do not edit by hand."; \
	  $(REPO)/.venv-lock/bin/pip freeze | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/'; } > $(REPO)/requirements.txt
	rm -rf $(REPO)/.venv-lock

.PHONY: demo bench status gpu-check
# every demo step runs locally on the sample; each line is one pipeline target
DEMO_MAKE = $(MAKE) --no-print-directory $(call q,EXP_DIR=$(DEMO_DIR)) SCHEDULER=local DATASET=dolmino-mix-1124 TOKENIZER_NAME=demo
# the demo's tokenizer (trained on the sample unless TOKENIZER_MODEL is given) and its Hugging Face folder (built by
# make hf-tokenizer unless HF_TOKENIZER_DIR names a published one, which is checked), carried by the stand-in runs
DEMO_TOKENIZER = $(or $(TOKENIZER_MODEL),$(DEMO_DIR)/tokenizer/demo.model)
DEMO_HF_TOKENIZER = $(or $(HF_TOKENIZER_DIR),$(DEMO_DIR)/tokenizer/hf)
demo: $(VENV_STAMP) ## run the whole pipeline on a generated dolmino-shaped sample under DEMO_DIR
	$(PY) $(REPO)/demo/demo_data.py --output $(call q,$(DEMO_DIR)/dolmino-mix-1124)
	$(DEMO_MAKE) extract merge ALLOW_PARTIAL=1
	$(if $(TOKENIZER_MODEL),,$(PY) $(REPO)/demo/train_tokenizer.py --input $(call q,$(DEMO_DIR)/dolmino-mix-1124-extracted-merged) --output $(call q,$(DEMO_DIR)/tokenizer/demo.model) && )$(DEMO_MAKE) tokenize $(call q,TOKENIZER_MODEL=$(DEMO_TOKENIZER))
	$(DEMO_MAKE) hf-tokenizer $(call q,TOKENIZER_MODEL=$(DEMO_TOKENIZER)) $(call q,HF_TOKENIZER_DIR=$(DEMO_HF_TOKENIZER))
	$(DEMO_MAKE) count mix TASK=demo SIZE=demo PARAM=tiny
	$(PY) $(REPO)/demo/make_tiny_runs.py --exp-dir $(call q,$(DEMO_DIR)) --task demo --param tiny --size demo --seeds "1 2 3" \
		--tokenizer-dir $(call q,$(DEMO_HF_TOKENIZER))
	$(DEMO_MAKE) soup-config soup TASK=demo PARAM=tiny SIZE=demo SEEDS="1 2 3" SOUP_NAME=demo-soup $(call q,SOUP_CONFIG_DIR=$(DEMO_DIR)/merge) \
		$(call q,TOKENIZER_MODEL=$(DEMO_TOKENIZER))
	$(DEMO_MAKE) status

# gpu-check: on a machine with a GPU; MEGATRON_PATH (or ENV_DIR), TOKENIZER_MODEL (default: trained on the sample),
# HF_TOKENIZER_DIR (default: make hf-tokenizer builds it), TRAIN_PYTHON (default: ENV_DIR's venv python, else python3);
# GPU_CHECK_DIR is emptied and rewritten
GPU_CHECK_DIR ?= $(EXP_DIR)/gpu-check
gpu-check: $(VENV_STAMP) ## the training half for real on this machine's GPU: one row per check (minutes)
	@test -n $(call q,$(or $(MEGATRON_PATH),$(ENV_DIR))) || { echo "make gpu-check: set MEGATRON_PATH=<Megatron-LM checkout> (or ENV_DIR)" >&2; exit 2; }
	$(PY) $(REPO)/tests/gpu/gpu_check.py --megatron-path $(call q,$(abspath $(or $(MEGATRON_PATH),$(ENV_DIR)/src/Megatron-LM))) \
		--work-dir $(call q,$(abspath $(GPU_CHECK_DIR))) --tokenizer-model $(call q,$(if $(TOKENIZER_MODEL),$(abspath $(TOKENIZER_MODEL)))) \
		--train-python $(call q,$(TRAIN_PYTHON)) --env-dir $(call q,$(if $(ENV_DIR),$(abspath $(ENV_DIR)))) \
		--hf-tokenizer-dir $(call q,$(if $(HF_TOKENIZER_DIR),$(call apath,HF_TOKENIZER_DIR))) \
		--json $(call q,$(abspath $(GPU_CHECK_DIR)).json)

BENCH_ARGS ?=
bench: $(VENV_STAMP) ## benchmarks, printed side by side with their references
	cd $(REPO) && for bench in bench/bench_*.py; do $(PY) "$$bench" $(call qwords,$(BENCH_ARGS)); done

status: $(VENV_STAMP) ## tables of the pipeline's stages, submitted jobs, training runs and soups
	$(PY) $(REPO)/scripts/status.py --exp-dir $(call q,$(EXP_DIR)) --dataset $(DATASET) \
		--tokenizer-name $(TOKENIZER_NAME) --scheduler $(SCHEDULER)

# ---------------------------------------------------------------------------------------------
# Data: download -> extract -> merge -> tokenize -> count -> mix
# ---------------------------------------------------------------------------------------------
.PHONY: download check-revision extract merge tokenize clean-intermediate count mix data
# download/extract/merge knobs (descriptions: tasks/datasets/<DATASET>.yaml)
INCLUDE ?=
VERIFY_HASHES ?= 0
DOWNLOAD_WORKERS ?= 8
HF_ENDPOINT ?=
EXTRACT_CHUNKS ?= 16
VALIDATE ?= 0
ON_BAD_LINE ?= fail
ALLOW_PARTIAL ?= 0
# INCLUDE: download only files matching these patterns; VERIFY_HASHES=1: check hashes, not only sizes;
# HF_ENDPOINT: a hub mirror (HF_TOKEN is read from the environment or `hf auth login`, never passed on);
# EXTRACT_CHUNKS: array indices of the extract job under SCHEDULER=pbs or slurm (locally: one job, JOBS workers);
# VALIDATE=1: merge checks every line as tokenize will (JSON object, string text, valid UTF-8); ON_BAD_LINE=fail|skip;
# ALLOW_PARTIAL=1: download and extract go on when the pinned revision or the raw tree lacks part of what
# the description's `expect` says exists (a sample, a partial copy).
$(call require_int,DOWNLOAD_WORKERS)$(if $(filter 0,$(DOWNLOAD_WORKERS)),$(error DOWNLOAD_WORKERS must be at least 1))
$(call require_int,EXTRACT_CHUNKS)$(if $(filter 0,$(EXTRACT_CHUNKS)),$(error EXTRACT_CHUNKS must be at least 1))
$(if $(filter $(VERIFY_HASHES),0 1),,$(error VERIFY_HASHES must be 0 or 1 (got '$(VERIFY_HASHES)')))
$(if $(filter $(VALIDATE),0 1),,$(error VALIDATE must be 0 or 1 (got '$(VALIDATE)')))
$(if $(filter $(ON_BAD_LINE),fail skip),,$(error ON_BAD_LINE must be fail or skip (got '$(ON_BAD_LINE)')))
$(if $(filter $(ALLOW_PARTIAL),0 1),,$(error ALLOW_PARTIAL must be 0 or 1 (got '$(ALLOW_PARTIAL)')))
# jobs that go to PBS or Slurm (not run here)
ON_BATCH = $(filter pbs slurm,$(SCHEDULER))
# extract: an array over file chunks under PBS or Slurm (a plain job when there is one chunk), one job here
EXTRACT_CHUNKS_RUN = $(if $(ON_BATCH),$(EXTRACT_CHUNKS),1)
EXTRACT_ARRAY = $(if $(filter-out 1,$(EXTRACT_CHUNKS_RUN)),--array 0-$(shell echo $$(($(EXTRACT_CHUNKS_RUN) - 1))))
# worker processes inside a job: JOBS here, every core of the node under PBS or Slurm
DATA_WORKERS = $(if $(ON_BATCH),auto,$(JOBS))

download: $(VENV_STAMP) ## fetch DATASET from the Hugging Face hub into EXP_DIR/<dataset>
	$(SUBMIT) --template pbs/download.pbs --name download-$(DATASET) --walltime $(call walltime,DOWNLOAD) \
		--var DATASET=$(DATASET) --var $(call q,INCLUDE=$(INCLUDE)) --var VERIFY_HASHES=$(VERIFY_HASHES) \
		--var DOWNLOAD_WORKERS=$(DOWNLOAD_WORKERS) $(if $(HF_ENDPOINT),--var $(call q,HF_ENDPOINT=$(HF_ENDPOINT))) \
		--var ALLOW_PARTIAL=$(ALLOW_PARTIAL)

check-revision: $(VENV_STAMP) ## list what DATASET's newest hub revision has and the pinned one lacks
	$(if $(HF_ENDPOINT),HF_ENDPOINT=$(call q,$(HF_ENDPOINT)) )$(PY) $(REPO)/scripts/check_revision.py --dataset $(DATASET)

extract: $(VENV_STAMP) ## decompress the raw files into EXP_DIR/<dataset>-extracted
	$(SUBMIT) --template pbs/extract.pbs --name extract-$(DATASET) --walltime $(call walltime,EXTRACT) \
		$(EXTRACT_ARRAY) --var DATASET=$(DATASET) --var CHUNKS=$(EXTRACT_CHUNKS_RUN) --var WORKERS=$(DATA_WORKERS) \
		--var ALLOW_PARTIAL=$(ALLOW_PARTIAL)

merge: $(VENV_STAMP) ## concatenate extracted files into grouped JSONL (<dataset>-extracted-merged)
	$(SUBMIT) --template pbs/merge.pbs --name merge-$(DATASET) --walltime $(call walltime,MERGE) \
		--var DATASET=$(DATASET) --var WORKERS=$(DATA_WORKERS) --var VALIDATE=$(VALIDATE) \
		--var ON_BAD_LINE=$(ON_BAD_LINE)

clean-intermediate: $(VENV_STAMP) ## remove extracted and merged trees once every tokenized output is complete
	$(SUBMIT) --template pbs/clean_intermediate.pbs --name clean-$(DATASET) --walltime $(call walltime,CLEAN) \
		--var DATASET=$(DATASET) --var TOKENIZER_NAME=$(TOKENIZER_NAME)

# tokenize: TOKENIZER_MODEL is required (no default); TOKENIZER_TYPE = Megatron's tokenizer class whose
# documents are reproduced; TOKENIZE_ARGS go to the planner (--no-bos, --on-bad-line skip, ...);
# TOKENIZE_WORKERS = tokenizer processes per file (JOBS here; 0 = every core of the node under PBS or Slurm).
# PBS or Slurm: one array index per file that is not up to date; here: one file after another, all cores each.
TOKENIZER_TYPE ?= Llama2Tokenizer
TOKENIZE_ARGS ?=
TOKENIZE_WORKERS ?= $(if $(ON_BATCH),0,$(JOBS))
TOKENIZER_TYPES := Llama2Tokenizer SentencePieceTokenizer HuggingFaceTokenizer
$(if $(filter $(TOKENIZER_TYPE),$(TOKENIZER_TYPES)),,$(error TOKENIZER_TYPE must be one of: $(TOKENIZER_TYPES) (got '$(TOKENIZER_TYPE)')))
$(call require_int,TOKENIZE_WORKERS)
tokenize: $(VENV_STAMP) ## tokenize merged files into Megatron .bin/.idx (<dataset>-<tok>-tokenized)
	@if [ -z $(call q,$(strip $(TOKENIZER_MODEL))) ]; then echo "make tokenize: TOKENIZER_MODEL is not set: give the" \
		"tokenizer model, e.g. TOKENIZER_MODEL=/path/to/llm-jp-tokenizer-100k.ver3.1.model (or in local.mk)" >&2; exit 2; fi
	$(PY) $(REPO)/scripts/tokenize_dataset.py submit $(SCHEDULER_FLAGS) --dataset $(DATASET) \
		--tokenizer-name $(TOKENIZER_NAME) --tokenizer-type $(TOKENIZER_TYPE) \
		--tokenizer-model $(call q,$(call apath,TOKENIZER_MODEL)) --walltime $(call walltime,TOKENIZE) \
		--workers $(TOKENIZE_WORKERS) $(call qwords,$(TOKENIZE_ARGS))

# count/mix: TASK_OUT writes the lists and reports elsewhere than tasks/<TASK>/ (mix then reads the
# all-list there too); ALL_LIST makes mix read another all-list: PATH, or TASK=PATH for another task
# of a union (space-separated)
TASK_OUT ?=
ALL_LIST ?=
# count and mix are file rules, so `make -n mix` shows the chain. count reruns whenever this EXP_DIR holds
# tokenized data of TOKENIZER_NAME (cheap, and an unchanged list keeps its bytes and mtime); without any, an
# existing list is used as it is (a login node that has only the lists). mix always reruns (PARAM, SIZE).
TASK_DIR = $(if $(TASK_OUT),$(call apath,TASK_OUT),$(REPO)/tasks/$(TASK))
$(if $(findstring :,$(TASK_OUT)$(EXP_DIR)),$(error TASK_OUT and EXP_DIR cannot hold a colon: make reads it as a rule))
ALL_LIST_FILE = $(TASK_DIR)/train_data.all.sh
MIX_LIST_FILE = $(TASK_DIR)/train_data_$(SIZE).sh
TASK_CONFIG = $(wildcard $(REPO)/tasks/$(TASK)/mixture.yaml)
TOKENIZED_HERE = $(wildcard $(EXP_DIR)/.state/*/tokenize-$(TOKENIZER_NAME)/done.json)
.PHONY: rerun
count: $(ALL_LIST_FILE) ## exact token counts from .idx files -> tasks/<TASK>/train_data.all.sh
mix: $(MIX_LIST_FILE) ## mixture list tasks/<TASK>/train_data_<SIZE>.sh plus a report (counts first)

$(ALL_LIST_FILE): $(VENV_STAMP) $(TASK_CONFIG) $(if $(TOKENIZED_HERE),rerun)
	$(PY) $(REPO)/scripts/count.py --exp-dir $(call q,$(EXP_DIR)) --task $(TASK) --tokenizer-name $(TOKENIZER_NAME) \
		$(if $(TASK_OUT),--out-dir $(call q,$(TASK_OUT)))

$(MIX_LIST_FILE): $(VENV_STAMP) $(TASK_CONFIG) $(if $(ALL_LIST),,$(ALL_LIST_FILE)) rerun
	$(PY) $(REPO)/scripts/mix.py --task $(TASK) --size $(SIZE) --param $(call q,$(PARAM)) \
		$(if $(TASK_OUT),--out-dir $(call q,$(TASK_OUT))) $(foreach list,$(ALL_LIST),--all-list $(call q,$(list)))

.PHONY: data
data: ## extract -> merge -> tokenize -> count -> mix, one after another here (SCHEDULER=local)
	@if [ $(SCHEDULER) != local ]; then echo "make data runs the steps one after another on this machine; under" \
		"SCHEDULER=$(SCHEDULER) submit make extract, merge and tokenize one by one (tokenize plans from what merge" \
		"wrote), then run make count mix" >&2; exit 2; fi
	$(MAKE) --no-print-directory extract
	$(MAKE) --no-print-directory merge
	$(MAKE) --no-print-directory tokenize
	$(MAKE) --no-print-directory mix

# ---------------------------------------------------------------------------------------------
# Training: env -> init -> train (per seed) -> convert -> soup
# ---------------------------------------------------------------------------------------------
.PHONY: env env-check args init ckpt-info train train-seeds chain hf-tokenizer convert soup-config soup report
# env / env-check: ENV_CONFIG holds the pins; DRY_RUN=1 prints the installer's commands and runs nothing;
# ENV_PYTHON checks that interpreter instead of ENV_DIR's venv; ENV_CHECK_ARGS e.g. --no-gpu on a login node
ENV_CONFIG ?= $(REPO)/params/environment.toml
DRY_RUN ?=
ENV_PYTHON ?=
ENV_CHECK_ARGS ?=
ENV_SETUP_DRY = $(PY) $(REPO)/scripts/env_setup.py --env-dir $(call q,$(call apath,ENV_DIR)) \
	--config $(call q,$(call apath,ENV_CONFIG)) --dry-run
ENV_SETUP_JOB = $(SUBMIT) --template pbs/setup_env.pbs --name setup-env --walltime $(call walltime,ENV) \
	--var $(call q,ENV_DIR=$(call apath,ENV_DIR)) --var $(call q,ENV_CONFIG=$(call apath,ENV_CONFIG))
# quoted words; under PBS or Slurm they travel as one shell-quoted STEP_ARGS that pbs/run_step.pbs splits, never evaluates
ENV_CHECK_FLAGS = $(call q,--env-dir=$(call apath,ENV_DIR)) $(call q,--python=$(ENV_PYTHON)) \
	$(call q,--config=$(call apath,ENV_CONFIG)) $(call q,--megatron-path=$(call apath,MEGATRON_PATH)) \
	$(call q,--tokenizer-model=$(call apath,TOKENIZER_MODEL)) $(call qwords,$(ENV_CHECK_ARGS))
env: $(VENV_STAMP) ## install the training environment (Megatron-LM, TE, apex, flash-attn) into ENV_DIR
	@test -n $(call q,$(ENV_DIR)) || { echo "make env: set ENV_DIR=/path/to/environment (or ENV_DIR in local.mk)" >&2; exit 2; }
	$(if $(filter 1,$(DRY_RUN)),$(ENV_SETUP_DRY),$(ENV_SETUP_JOB))

env-check: $(VENV_STAMP) ## check that ENV_DIR can run the jobs (versions, GPUs, imports)
	$(if $(ON_BATCH),$(SUBMIT) --template pbs/run_step.pbs --name env-check \
		--walltime $(call walltime,ENV_CHECK) --var STEP=env_check --var $(call q,STEP_ARGS=$(ENV_CHECK_FLAGS)), \
		cd $(REPO) && $(PY) scripts/env_check.py $(ENV_CHECK_FLAGS))

# args/init/train/train-seeds/chain: DATA_LIST reads another mixture list than tasks/<TASK>/train_data_<SIZE>.sh;
# BASE_CKPT (+ BASE_ITER) is the checkpoint a run starts from (a checkpoints folder, an iter_NNNNNNN folder or
# an earlier run's folder; _curriculum params default to their earlier stage's run); FORCE=1 replaces a start
# or submits despite a live job of the run; GPUS_PER_NODE (default: counted by the job, else 8); LAUNCHER
# auto|mpi|torchrun; MASTER_PORT; wandb logging when WANDB_PROJECT (and WANDB_ENTITY) is set; ARGS_MODE
# train|convert for make args; CKPT is what make ckpt-info reads. chain: CPU_QUEUE (init and soup jobs;
# default PBS_QUEUE), INIT_WALLTIME, CONVERT_WALLTIME, SOUP_WALLTIME; the convert and soup knobs below apply to its jobs.
DATA_LIST ?=
BASE_CKPT ?=
BASE_ITER ?=
FORCE ?=
GPUS_PER_NODE ?=
LAUNCHER ?= auto
MASTER_PORT ?=
WANDB_ENTITY ?=
WANDB_PROJECT ?=
ARGS_MODE ?= train
CKPT ?=
CPU_QUEUE ?=
$(if $(BASE_ITER),$(call require_int,BASE_ITER))
# the run and its inputs, as scripts/train_args.py and scripts/train.py take them
TRAIN_RUN = --exp-dir $(call q,$(EXP_DIR)) --task $(TASK) --param $(call q,$(PARAM)) --size $(SIZE) \
	--data-list $(call q,$(DATA_LIST)) --tokenizer-model $(call q,$(TOKENIZER_MODEL)) --env-dir $(call q,$(ENV_DIR)) \
	--megatron-path $(call q,$(MEGATRON_PATH)) --wandb-entity $(call q,$(WANDB_ENTITY)) \
	--wandb-project $(call q,$(WANDB_PROJECT)) --train-python $(call q,$(TRAIN_PYTHON))
TRAIN_JOB = --gpus-per-node $(call q,$(GPUS_PER_NODE)) --launcher-knob $(call q,$(LAUNCHER)) \
	--master-port $(call q,$(MASTER_PORT)) \
	--walltime $(call walltime,TRAIN) $(if $(filter 1,$(FORCE)),--force)
TRAIN = $(PY) $(REPO)/scripts/train.py
args: $(VENV_STAMP) ## print the Megatron arguments of a run (TASK PARAM SIZE SEED), one per line
	@$(PY) $(REPO)/scripts/train_args.py $(TRAIN_RUN) --seed $(SEED) --mode $(call q,$(ARGS_MODE)) \
		--launcher $(if $(filter torchrun,$(LAUNCHER)),torchrun,mpi)

init: $(VENV_STAMP) ## prepare a run directory from the pretrained checkpoint (BASE_CKPT)
	$(PY) $(REPO)/scripts/init_run.py --exp-dir $(call q,$(EXP_DIR)) --task $(TASK) --param $(call q,$(PARAM)) \
		--size $(SIZE) --seed $(SEED) --base-ckpt $(call q,$(BASE_CKPT)) $(if $(BASE_ITER),--base-iter $(BASE_ITER)) \
		$(if $(filter 1,$(FORCE)),--force)

ckpt-info: $(VENV_STAMP) ## describe a Megatron checkpoint without Megatron (CKPT)
	@test -n $(call q,$(CKPT)) || { echo "make ckpt-info: set CKPT=<checkpoints folder, iter_NNNNNNN folder or run folder>" >&2; exit 2; }
	$(PY) $(REPO)/scripts/ckpt_info.py --ckpt $(call q,$(CKPT))

train: $(VENV_STAMP) ## submit one training run (TASK PARAM SIZE SEED NODES [DEPEND])
	$(TRAIN) submit $(TRAIN_RUN) --seed $(SEED) $(TRAIN_JOB) $(SCHEDULER_FLAGS)

train-seeds: $(VENV_STAMP) ## submit one training run per seed in SEEDS
	$(TRAIN) seeds $(TRAIN_RUN) --seeds $(call q,$(SEEDS)) $(TRAIN_JOB) $(SCHEDULER_FLAGS)

chain: $(VENV_STAMP) ## submit init -> train -> convert per seed, then soup, chained with afterok
	$(TRAIN) chain $(TRAIN_RUN) --seeds $(call q,$(SEEDS)) $(TRAIN_JOB) $(SCHEDULER_FLAGS) --base-ckpt $(call q,$(BASE_CKPT)) \
		$(if $(BASE_ITER),--base-iter $(BASE_ITER)) --cpu-queue $(call q,$(CPU_QUEUE)) \
		--init-walltime $(call q,$(INIT_WALLTIME)) --convert-walltime $(call q,$(CONVERT_WALLTIME)) \
		--soup-walltime $(call q,$(SOUP_WALLTIME)) \
		--convert-opt=$(call q,--converter=$(CONVERTER)) --convert-opt=$(call q,--hf-tokenizer-dir=$(HF_TOKENIZER_DIR)) \
		--convert-opt=$(call q,--vocab-size=$(VOCAB_SIZE)) --convert-opt=$(call q,--dtype=$(CONVERT_DTYPE)) \
		--soup-name $(call q,$(SOUP_NAME)) --soup-config-dir $(call q,$(SOUP_CONFIG_DIR)) \
		--soup-var $(call q,SOUP_VERIFY=$(SOUP_VERIFY)) --soup-var $(call q,SOUP_CUDA=$(SOUP_CUDA)) \
		--soup-var $(call q,SOUP_SHARD_SIZE=$(SOUP_SHARD_SIZE))

# hf-tokenizer: the Hugging Face tokenizer folder of TOKENIZER_MODEL, written to HF_TOKENIZER_DIR (default
# EXP_DIR/hf-tokenizer/<TOKENIZER_NAME>) after its check id for id against SentencePiece (the probe set, plus the
# documents of TOKENIZER_CHECK_DOCS: JSONL or text files); FORCE=1 rebuilds. A folder it did not write (a published
# one) is only checked, never written to, and used as given when it passes.
TOKENIZER_CHECK_DOCS ?=
HF_TOKENIZER_OUT = $(or $(HF_TOKENIZER_DIR),$(EXP_DIR)/hf-tokenizer/$(TOKENIZER_NAME))
hf-tokenizer: $(VENV_STAMP) ## Hugging Face tokenizer folder of TOKENIZER_MODEL, checked id for id (HF_TOKENIZER_DIR)
	@if [ -z $(call q,$(strip $(TOKENIZER_MODEL))) ]; then echo "make hf-tokenizer: TOKENIZER_MODEL is not set: give the" \
		"SentencePiece model, e.g. TOKENIZER_MODEL=/path/to/llm-jp-tokenizer-100k.ver3.1.model" >&2; exit 2; fi
	$(PY) $(REPO)/scripts/hf_tokenizer.py --tokenizer-model $(call q,$(call apath,TOKENIZER_MODEL)) \
		--output $(call q,$(call apath,HF_TOKENIZER_OUT))$(foreach f,$(TOKENIZER_CHECK_DOCS), --documents $(call q,$(f)))$(if $(filter 1,$(FORCE)), --force)

# convert: CONVERTER=megatron (the three Megatron-LM steps on GPUs; MEGATRON_PATH or ENV_DIR) or native
# (scripts/convert_to_hf.py on a CPU node, CPU_QUEUE if set); ITER=N or latest (the default, read when the job
# starts); HF_TOKENIZER_DIR = the Hugging Face tokenizer folder copied into the output (the Megatron saver needs
# it; native takes VOCAB_SIZE instead); CONVERT_DTYPE bf16|fp32; DRY_RUN=1 prints the steps; FORCE=1 redoes.
CONVERTER ?= megatron
HF_TOKENIZER_DIR ?=
VOCAB_SIZE ?=
CONVERT_DTYPE ?= bf16
convert: $(VENV_STAMP) ## convert a run's Megatron checkpoint to Hugging Face format (ITER, CONVERTER)
	$(PY) $(REPO)/scripts/convert.py $(if $(filter 1,$(DRY_RUN)),plan,submit) $(TRAIN_RUN) --seed $(SEED) \
		--launcher $(if $(filter torchrun,$(LAUNCHER)),torchrun,mpi) --iter $(call q,$(or $(ITER),latest)) \
		--converter $(call q,$(CONVERTER)) --hf-tokenizer-dir $(call q,$(HF_TOKENIZER_DIR)) \
		--vocab-size $(call q,$(VOCAB_SIZE)) --dtype $(call q,$(CONVERT_DTYPE)) --cpu-queue $(call q,$(CPU_QUEUE)) \
		--walltime $(call walltime,CONVERT) --gpus-per-node $(call q,$(GPUS_PER_NODE)) \
		--launcher-knob $(call q,$(LAUNCHER)) --master-port $(call q,$(MASTER_PORT)) \
		$(if $(filter 1,$(FORCE)),--force) $(SCHEDULER_FLAGS)

# soup-config: SEEDS items are SEED, SIZE:SEED (runs of several sizes) or either with @ITER; ITER is the
# iteration of every ingredient (default: the latest converted); SOUP_NAME names SOUP_CONFIG_DIR/<SOUP_NAME>.yaml
# and EXP_DIR/soups/<SOUP_NAME>/ (default TASK_PARAM_SIZES); SOUP_DTYPE is the merge dtype. soup: SOUP_CONFIG is
# the config (default SOUP_CONFIG_DIR/SOUP_NAME.yaml); SOUP_VERIFY=sample checks a subset of tensors (full:
# every one); SOUP_CUDA=1 merges on a GPU (use a GPU queue); SOUP_SHARD_SIZE is parameters per output shard;
# TOKENIZER_MODEL: the runs' training tokenizer (default: what their train_args.json or conversion records name),
# which the ingredients' and the soup's tokenizer must encode as.
SOUP_SPACE := $(subst ,, )
soup_sizes = $(sort $(foreach s,$(SEEDS),$(if $(findstring :,$(s)),$(firstword $(subst :, ,$(s))),$(SIZE))))
SOUP_NAME ?= $(TASK)_$(PARAM)_$(subst $(SOUP_SPACE),+,$(soup_sizes))
SOUP_CONFIG_DIR ?= $(REPO)/merge
SOUP_CONFIG ?= $(SOUP_CONFIG_DIR)/$(SOUP_NAME).yaml
ITER ?=
SOUP_VERIFY ?= full
SOUP_CUDA ?= 0
SOUP_DTYPE ?= bfloat16
SOUP_SHARD_SIZE ?= 5B
soup_job_args = --verify $(call q,$(SOUP_VERIFY)) --cuda $(call q,$(SOUP_CUDA)) --shard-size $(call q,$(SOUP_SHARD_SIZE)) \
	--tokenizer-model $(call q,$(if $(TOKENIZER_MODEL),$(call apath,TOKENIZER_MODEL)))
soup-config: $(VENV_STAMP) ## write merge/<SOUP_NAME>.yaml averaging the seed runs
	$(PY) $(REPO)/scripts/soup_config.py --exp-dir $(call q,$(EXP_DIR)) --task $(TASK) --param $(call q,$(PARAM)) \
		--size $(SIZE) --seeds $(call q,$(SEEDS)) --iter $(call q,$(ITER)) --name $(call q,$(SOUP_NAME)) \
		--config-dir $(call q,$(SOUP_CONFIG_DIR)) --dtype $(call q,$(SOUP_DTYPE)) $(if $(DEPEND),--allow-pending)

# under PBS or Slurm the config and ingredients are checked before submission (only the config while DEPEND is pending)
soup: $(VENV_STAMP) ## merge the runs of SOUP_CONFIG=merge/<name>.yaml with mergekit and verify
	$(if $(ON_BATCH),$(PY) $(REPO)/scripts/soup.py --config $(call q,$(call apath,SOUP_CONFIG)) \
		--exp-dir $(call q,$(EXP_DIR)) $(soup_job_args) --check-only $(if $(DEPEND),--pending))
	$(SUBMIT) --template pbs/soup.pbs --name $(call q,soup-$(basename $(notdir $(call apath,SOUP_CONFIG)))) \
		--walltime $(call walltime,SOUP) --var $(call q,SOUP_CONFIG=$(call apath,SOUP_CONFIG)) \
		--var $(call q,SOUP_VERIFY=$(SOUP_VERIFY)) --var $(call q,SOUP_CUDA=$(SOUP_CUDA)) \
		--var $(call q,SOUP_SHARD_SIZE=$(SOUP_SHARD_SIZE)) \
		$(if $(TOKENIZER_MODEL),--var $(call q,TOKENIZER_MODEL=$(call apath,TOKENIZER_MODEL)))

# report: RUN_DIR=<run folder(s)> given on the command line wins; else TASK PARAM SIZE with SEEDS when
# SEEDS is given on the command line (one plot, a line per seed), else SEED. SEQ_LENGTH overrides the
# logs' argument dump; REPORT_NAME names the EXP_DIR/reports/<name>/ folder of a several-run report.
SEQ_LENGTH ?=
REPORT_NAME ?=
report_runs = $(if $(filter command line,$(origin RUN_DIR)),$(RUN_DIR))
report_seeds = $(if $(filter command line,$(origin SEEDS)),$(SEEDS),$(SEED))
report: $(VENV_STAMP) ## loss / throughput plots and a summary of a run's training logs
	$(PY) $(REPO)/scripts/report.py --exp-dir $(call q,$(EXP_DIR)) $(if $(report_runs),--run-dir $(call qwords,$(report_runs)),\
		--task $(TASK) --param $(call q,$(PARAM)) --size $(SIZE) --seeds $(call qwords,$(report_seeds))) \
		$(if $(SEQ_LENGTH),--seq-length $(call q,$(SEQ_LENGTH))) $(if $(REPORT_NAME),--name $(call q,$(REPORT_NAME)))
