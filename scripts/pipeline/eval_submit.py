"""make eval (and make chain's eval job): every check before any job, the plan file, one array job.

Refused before submission, one line each: an unknown task (with the closest names), a missing or incomplete
model folder, a model without tokenizer files, a suite file with an unknown key, a dataset not staged,
EVAL_TEXT missing or without a `text` field, a GPU suite run here with no GPU, EVAL_BACKEND=vllm without
vLLM. Models already evaluated with the same key (pipeline/eval_results.py) are left out; when none is left,
nothing is submitted. The plan (EXP_DIR/eval/plans/<suite>-<time>.json) lists the models; pbs/eval.pbs
evaluates the one of its array index (pipeline/eval_job.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.errors import fail
from pipeline.eval_data import staging_problems
from pipeline.eval_job import BACKENDS, eval_text_record
from pipeline.eval_models import experiment_models, fingerprint, folder_models, model_problems
from pipeline.eval_results import already_evaluated, evaluation_key, result_dir
from pipeline.eval_suite import check_task_names, harness_version, load_suite
from pipeline.paths import PBS_DIR, eval_dir, exp_dir
from pipeline.scheduler import add_scheduler_arguments, make_job, scheduler_options, submit

TEMPLATE = PBS_DIR / "eval.pbs"
EVAL_ENVS = ("pipeline", "training")
BATCH_SIZE = re.compile(r"^(auto(:[1-9][0-9]*)?|[1-9][0-9]*)$")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """make eval's knobs (also make chain's, through --eval-opt)."""
    parser.add_argument("--suite", default="", help="EVAL_SUITE: eval/<name>.yaml or a suite file")
    parser.add_argument("--models", default="", help="EVAL_MODELS: Hugging Face folders to evaluate instead of "
                        "the experiment's base, seeds and soup (space-separated)")
    parser.add_argument("--eval-text", default="", help="EVAL_TEXT: the JSONL file local-ppl scores")
    parser.add_argument("--base-hf", default="", help="BASE_HF: the base model folder (default EXP_DIR/base_hf)")
    parser.add_argument("--backend", default="hf", help="EVAL_BACKEND: hf or vllm")
    parser.add_argument("--eval-env", default="pipeline", help="EVAL_ENV: pipeline (.venv) or training (ENV_DIR)")
    parser.add_argument("--env-dir", default="", help="ENV_DIR (EVAL_ENV=training)")
    parser.add_argument("--batch-size", default="auto", help="EVAL_BATCH_SIZE: auto, auto:N or a number")
    parser.add_argument("--tokenizer-model", default="", help="TOKENIZER_MODEL: the training tokenizer, for the "
                        "tokenizer check")
    parser.add_argument("--task", default="", help="TASK")
    parser.add_argument("--param", default="", help="PARAM")
    parser.add_argument("--size", default="", help="SIZE")
    parser.add_argument("--seeds", default="", help="SEEDS (SEED, SIZE:SEED, either with @ITER)")
    parser.add_argument("--iter", default="", help="ITER: the seeds' iteration (default: the latest converted)")
    parser.add_argument("--soup-name", default="", help="SOUP_NAME")
    parser.add_argument("--walltime", default="", help="EVAL_WALLTIME of the job")
    parser.add_argument("--eval-queue", default="", help="EVAL_QUEUE (default: PBS_QUEUE / SLURM_PARTITION)")
    parser.add_argument("--force", action="store_true", help="FORCE=1: evaluate again models already evaluated")
    parser.add_argument("--eval-jobs", type=int, default=1, help="EVAL_JOBS: models evaluated at once here "
                        "(SCHEDULER=local)")


def eval_options(argv: list[str]) -> argparse.Namespace:
    """Options for make chain's eval job: --eval-opt values plus the chain's scheduler flags."""
    parser = argparse.ArgumentParser(prog="make chain (eval)")
    add_eval_arguments(parser)
    add_scheduler_arguments(parser)
    return parser.parse_args(argv)


def _eval_python_has(args: argparse.Namespace, distribution: str, module: str) -> bool:
    """Whether the Python the job evaluates with has a package (without running that Python)."""
    if args.eval_env == "training":
        venv = Path(args.env_dir).absolute() / "venv"
        return any(venv.glob(f"lib/python3*/site-packages/{distribution}-*.dist-info"))
    return importlib.util.find_spec(module) is not None


def eval_harness_version(args: argparse.Namespace) -> str:
    """The lm-eval version the job will run (the job checks it again with that Python)."""
    if args.eval_env == "training":
        found = sorted(Path(args.env_dir).absolute().glob("venv/lib/python3*/site-packages/lm_eval-*.dist-info"))
        return found[-1].name[len("lm_eval-"):-len(".dist-info")]
    return harness_version()


def _here_has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def prepare(args: argparse.Namespace, *, pending_iteration: int | None = None) -> dict:
    """Every check, then the plan of the models to evaluate (an empty list: all were evaluated already)."""
    exp = exp_dir(args.exp_dir)
    suite = load_suite(args.suite)
    if args.backend not in BACKENDS:
        fail(f"EVAL_BACKEND={args.backend!r}: expected one of {', '.join(BACKENDS)}")
    if args.eval_env not in EVAL_ENVS:
        fail(f"EVAL_ENV={args.eval_env!r}: expected one of {', '.join(EVAL_ENVS)}")
    if not BATCH_SIZE.match(args.batch_size):
        fail(f"EVAL_BATCH_SIZE={args.batch_size!r}: expected auto, auto:N or a whole number")
    if args.eval_env == "training":
        if not args.env_dir:
            fail("EVAL_ENV=training evaluates in ENV_DIR's environment: set ENV_DIR")
        if not _eval_python_has(args, "lm_eval", "lm_eval"):
            fail(f"EVAL_ENV=training: {Path(args.env_dir).absolute()}/venv has no lm-eval: run make env "
                 "(its eval_harness step installs it), or use EVAL_ENV=pipeline")
    if args.backend == "vllm" and not _eval_python_has(args, "vllm", "vllm"):
        where = f"{args.env_dir}/venv" if args.eval_env == "training" else sys.executable
        fail(f"EVAL_BACKEND=vllm: vLLM is not installed in the Python the job evaluates with ({where}); the "
             "pipeline pins no vLLM: install it there yourself, or use EVAL_BACKEND=hf")
    check_task_names(suite, exp / ".cache")
    text = None
    if suite.reads_text:
        if not args.eval_text:
            fail(f"EVAL_TEXT is not set: suite {suite.name} scores the JSONL file given as EVAL_TEXT=<file> (a "
                 "\"text\" field per line; make eval-text writes held-out documents of the mixture)")
        text = eval_text_record(Path(args.eval_text).absolute())
    problems = staging_problems(exp, suite)
    if args.models.strip():
        models = folder_models(args.models.split())
    else:
        for knob, value in (("TASK", args.task), ("PARAM", args.param), ("SIZE", args.size), ("SEEDS", args.seeds)):
            if not value.strip():
                fail(f"{knob} is not set: make eval evaluates the base, the seeds and the soup of TASK PARAM SIZE "
                     "SEEDS SOUP_NAME (or the folders of EVAL_MODELS=)")
        from pipeline.params import param_name
        from pipeline.soup import default_name, parse_ingredients, parse_iteration
        soup = args.soup_name or default_name(args.task, param_name(args.param),
                                              parse_ingredients(args.seeds, args.size))
        models = experiment_models(exp, task=args.task, param=param_name(args.param), size=args.size, seeds=args.seeds,
                                   soup_name=soup, base_hf=args.base_hf,
                                   iteration=parse_iteration(args.iter, "ITER"), final_iteration=pending_iteration)
    tokenizer = Path(args.tokenizer_model).absolute() if args.tokenizer_model else None
    for model in models:
        problems += model_problems(model, tokenizer)
    if suite.device == "gpu" and args.scheduler == "local" and not _here_has_gpu():
        problems.append(f"suite {suite.name} needs a GPU (device: gpu in {suite.path}) and SCHEDULER=local runs "
                        "here, where torch sees none: submit it with SCHEDULER=pbs or slurm to a GPU queue")
    if problems:
        fail("make eval: nothing submitted:\n  " + "\n  ".join(problems))
    version = eval_harness_version(args)
    items = []
    for model in models:
        result = result_dir(exp, suite.name, model.folder)
        if not model.pending and not args.force:
            key = evaluation_key(suite=suite.name, suite_fingerprint=suite.fingerprint(), harness_version=version,
                                 model_fingerprint=fingerprint(model.folder, exp / ".cache" / "eval-file-hashes.json"),
                                 backend=args.backend, text_sha256=text and text["sha256"])
            if already_evaluated(result, key):
                print(f"eval: {model.label}: already evaluated on suite {suite.name} (same model files, suite and "
                      f"lm-eval {version}): {result}", file=sys.stderr)
                continue
        items.append({"model": model.to_json(), "result_dir": str(result)})
    return {"force": bool(args.force), "exp_dir": str(exp), "suite": suite.to_json(), "harness_version": version,
            "backend": args.backend, "batch_size": args.batch_size, "eval_env": args.eval_env,
            "env_dir": str(Path(args.env_dir).absolute()) if args.env_dir else "", "eval_text": text,
            "tokenizer_model": str(tokenizer) if tokenizer else "", "models": items}


def submit_plan(plan: dict, args: argparse.Namespace, depend: str = "") -> str | None:
    """Write the plan and submit its array job; the job id under PBS or Slurm (None here, or nothing to do)."""
    if not plan["models"]:
        print(f"eval: nothing to evaluate on suite {plan['suite']['name']}: every model was evaluated already "
              "(FORCE=1 evaluates again)", file=sys.stderr)
        return None
    exp = Path(plan["exp_dir"])
    name = plan["suite"]["name"]
    path = eval_dir(exp) / "plans" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    write_json(path, plan)
    count = len(plan["models"])
    variables = {"EVAL_PLAN": str(path), "EVAL_ENV": plan["eval_env"]}
    if plan["env_dir"]:
        variables["ENV_DIR"] = plan["env_dir"]
    job = make_job(TEMPLATE, f"eval-{name}"[:236], variables, exp, array=f"0-{count - 1}" if count > 1 else "",
                   depend=depend, walltime=args.walltime)
    options = scheduler_options(args, queue=args.eval_queue)
    options.parallel = max(1, args.eval_jobs)   # not JOBS: models evaluated side by side would share one GPU
    labels = ", ".join(m["model"]["label"] for m in plan["models"])
    print(f"eval: suite {name}, {count} model(s): {labels}; plan {path}", file=sys.stderr)
    sys.stdout.flush()
    status, job_id = submit(job, options, exp)
    if status != 0:
        fail(f"the eval job of suite {name} failed (exit {status}); see {exp / 'logs'} and make status")
    return job_id
