"""Where everything lives under EXP_DIR and in the repository; one place, so steps agree."""
from __future__ import annotations

import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO_DIR / "tasks"
DATASETS_DIR = TASKS_DIR / "datasets"   # one description file per source dataset
PARAMS_DIR = REPO_DIR / "params"
MERGE_DIR = REPO_DIR / "merge"
PBS_DIR = REPO_DIR / "pbs"


def exp_dir(value: str | os.PathLike | None = None) -> Path:
    """EXP_DIR from the argument or the environment; the repo's git-ignored exp/ otherwise."""
    return Path(value or os.environ.get("EXP_DIR") or REPO_DIR / "exp").resolve()


def raw_dir(exp: Path, dataset: str) -> Path:
    return exp / dataset


def extracted_dir(exp: Path, dataset: str) -> Path:
    return exp / f"{dataset}-extracted"


def merged_dir(exp: Path, dataset: str) -> Path:
    return exp / f"{dataset}-extracted-merged"


def tokenized_dir(exp: Path, dataset: str, tokenizer_name: str) -> Path:
    return exp / f"{dataset}-{tokenizer_name}-tokenized"


def state_dir(exp: Path, dataset: str, stage: str) -> Path:
    """Sentinels and manifests of one stage; they outlive the intermediate trees they describe."""
    return exp / ".state" / dataset / stage


def logs_dir(exp: Path) -> Path:
    return exp / "logs"


def jobs_file(exp: Path) -> Path:
    return exp / "jobs.jsonl"


def task_dir(task: str) -> Path:
    return TASKS_DIR / task


def run_dir(exp: Path, task: str, param: str, size: str, seed: int | str) -> Path:
    return exp / "runs" / task / param / size / f"seed{seed}"


def soup_dir(exp: Path, name: str) -> Path:
    return exp / "soups" / name


# ---------------------------------------------------------------------------------------------
# Evaluation (make eval, eval-data, eval-report, eval-text)
# ---------------------------------------------------------------------------------------------
EVAL_SUITES_DIR = REPO_DIR / "eval"          # one file per suite: eval/<name>.yaml
EVAL_TASKS_DIR = EVAL_SUITES_DIR / "tasks"   # the project's own harness task YAMLs (local_ppl)


def eval_dir(exp: Path) -> Path:
    return exp / "eval"


def eval_data_dir(exp: Path) -> Path:
    """Staged datasets: the hub and datasets caches the offline jobs read, and the staging record."""
    return eval_dir(exp) / "data"


def eval_results_root(exp: Path, suite: str) -> Path:
    return eval_dir(exp) / "results" / suite


def eval_report_dir(exp: Path, suite: str, name: str) -> Path:
    return eval_dir(exp) / "reports" / suite / name


def base_hf_dir(exp: Path) -> Path:
    """The converted pretraining checkpoint (make convert-base), the default base of make eval."""
    return exp / "base_hf"
