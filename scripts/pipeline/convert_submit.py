"""Submitting a conversion (make convert, and each conversion of make chain): make convert's checks, the
pbs/convert.pbs job's variables, and the hand-over to the job layer. DRY_RUN=1 prints the steps instead.

`args` holds the options of add_request_arguments plus add_convert_job_arguments (pipeline.run_options).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipeline.convert_job import ConvertRequest, check_inputs, output_dir, plan_text
from pipeline.errors import fail
from pipeline.paths import PBS_DIR, REPO_DIR
from pipeline.run_options import request
from pipeline.scheduler import make_job, scheduler_options, submit

TEMPLATE = PBS_DIR / "convert.pbs"


def job_variables(req: ConvertRequest, args: argparse.Namespace) -> dict[str, str]:
    """pbs/convert.pbs's -v variables (the optional ones only when set)."""
    variables = {"TASK": req.task, "PARAM": str(Path(req.param).absolute()) if req.param.endswith((".yaml", ".yml"))
                 else req.param, "SIZE": req.size, "SEED": str(req.seed), "RUN_DIR": str(req.run_dir),
                 "ITER": req.iteration, "CONVERTER": req.converter, "CONVERT_DTYPE": req.dtype}
    optional = {"HF_TOKENIZER_DIR": req.hf_tokenizer_dir, "VOCAB_SIZE": req.vocab_size and str(req.vocab_size),
                "FORCE": "1" if args.force else "",
                "ENV_DIR": req.env_dir and str(Path(req.env_dir).absolute()),
                "MEGATRON_PATH": req.megatron_path and str(Path(req.megatron_path).absolute()),
                "TOKENIZER_MODEL": req.tokenizer_model and str(Path(req.tokenizer_model).absolute()),
                "DATA_LIST": req.data_list and str(Path(req.data_list).absolute()),
                "GPUS_PER_NODE": args.gpus_per_node, "LAUNCHER": args.launcher_knob, "MASTER_PORT": args.master_port,
                "TRAIN_PYTHON": req.train_python}
    variables.update({k: v for k, v in optional.items() if v})
    return variables


def job_name(req: ConvertRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"convert-{req.task}-{Path(req.param).stem}-{req.size}-seed{req.seed}")
    return name[:236]


def submit_job(req: ConvertRequest, args: argparse.Namespace, *, dry_run: bool) -> tuple[int, str | None]:
    """Hand the conversion job to the job layer: (exit status, job id under PBS)."""
    job = make_job(TEMPLATE, job_name(req), job_variables(req, args), req.exp, depend=args.depend,
                   nodes=args.nodes if req.converter == "megatron" else 1, walltime=args.walltime)
    options = scheduler_options(args, dry_run=dry_run, queue=args.cpu_queue if req.converter == "native" else "")
    sys.stdout.flush()
    return submit(job, options, req.exp)


def world_size(args: argparse.Namespace, req: ConvertRequest) -> int | None:
    if req.converter != "megatron":
        return None
    return args.nodes * int(args.gpus_per_node or 8)


def show_plan(args: argparse.Namespace) -> int:
    """DRY_RUN=1: print the steps and the submission, problems included; submit nothing."""
    req = request(args)
    iteration, problems = check_inputs(req, pending=bool(args.depend.strip()))
    print(plan_text(req, iteration, world_size=world_size(args, req),
                    python=str(REPO_DIR / ".venv" / "bin" / "python")), end="")
    for problem in problems:
        print(f"problem: {problem}")
    print("submit (dry run):")
    status, _ = submit_job(req, args, dry_run=True)
    if problems:
        fail(f"{len(problems)} problem(s) above: make convert would not submit this job")
    return status


def submit_conversion(args: argparse.Namespace) -> str | None:
    """Check, then submit: the job id under PBS, None where it ran here or the output already exists."""
    req = request(args)
    iteration, problems = check_inputs(req, pending=bool(args.depend.strip()))
    if problems:
        fail("make convert: not submitted:\n  " + "\n  ".join(problems))
    if iteration is not None and output_dir(req.run_dir, iteration).exists() and not args.force:
        print(f"{output_dir(req.run_dir, iteration)}: already converted (FORCE=1 converts again)", file=sys.stderr)
        return None
    status, job_id = submit_job(req, args, dry_run=False)
    if status != 0:
        fail(f"the conversion job of {req.run_dir} failed (exit {status})")
    return job_id
