#!/usr/bin/env python3
"""Convert a run's Megatron checkpoint to Hugging Face format (make convert), and the job's helpers.

    convert.py plan   RUN... --iter latest --converter megatron --hf-tokenizer-dir DIR   # DRY_RUN=1: the steps
    convert.py submit RUN... [SCHEDULER FLAGS]   # checks, then submits pbs/convert.pbs (pipeline/scheduler.py)
    convert.py locate RUN...                     # (job) run folder, iteration, output folder; one per line
    convert.py step1-args RUN... --tmp DIR       # (job) pretrain_gpt.py's arguments for step 1, one per line
    convert.py record DIR --converter megatron ...   # (job) provenance JSON inside a converted folder
    convert.py check DIR                         # config.json and every safetensors shard load

RUN... names the run as make does: --exp-dir --task --param --size --seed (plus --data-list,
--tokenizer-model, --env-dir, --megatron-path where the run's Megatron arguments need them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.atomic import write_json, write_text
from pipeline.errors import fail, run_main
from pipeline.convert_job import (CONVERTERS, DTYPES, ConvertRequest, check_inputs, conversion_args, output_dir,
                                  plan_text, step1_resolved)
from pipeline.paths import PBS_DIR, REPO_DIR
from pipeline.provenance import provenance
from pipeline.run_options import add_request_arguments, request
from pipeline.scheduler import SchedulerOptions, make_job, submit

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
    import re
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"convert-{req.task}-{Path(req.param).stem}-{req.size}-seed{req.seed}")
    return name[:236]


def submit_job(req: ConvertRequest, args: argparse.Namespace, *, dry_run: bool) -> int:
    """Hand the conversion job to the job layer; prints its id under PBS (for DEPEND chains)."""
    queue = args.cpu_queue if req.converter == "native" and args.cpu_queue else args.queue
    job = make_job(TEMPLATE, job_name(req), job_variables(req, args), req.exp, depend=args.depend,
                   nodes=args.nodes if req.converter == "megatron" else 1, walltime=args.walltime)
    options = SchedulerOptions(args.scheduler, args.group, queue, args.rtype, args.parallel, dry_run)
    sys.stdout.flush()
    status, job_id = submit(job, options, req.exp)
    if job_id:
        print(job_id)
    return status


def world_size(args: argparse.Namespace, req: ConvertRequest) -> int | None:
    if req.converter != "megatron":
        return None
    return args.nodes * int(args.gpus_per_node or 8)


def do_plan(args: argparse.Namespace, *, submit: bool) -> int:
    req = request(args)
    pending = bool(args.depend.strip())
    iteration, problems = check_inputs(req, pending=pending)
    if not submit:  # DRY_RUN=1: show everything, problems included, and submit nothing
        print(plan_text(req, iteration, world_size=world_size(args, req),
                        python=str(REPO_DIR / ".venv" / "bin" / "python")), end="")
        for problem in problems:
            print(f"problem: {problem}")
        print("submit (dry run):")
        status = submit_job(req, args, dry_run=True)
        if problems:
            fail(f"{len(problems)} problem(s) above: make convert would not submit this job")
        return status
    if problems:
        fail("make convert: not submitted:\n  " + "\n  ".join(problems))
    if iteration is not None and output_dir(req.run_dir, iteration).exists() and not args.force:
        print(f"{output_dir(req.run_dir, iteration)}: already converted (FORCE=1 converts again)", file=sys.stderr)
        return 0
    status = submit_job(req, args, dry_run=False)
    if status != 0:
        fail(f"the conversion job of {req.run_dir} failed (exit {status})")
    return 0


def do_locate(args: argparse.Namespace) -> int:
    """For the job: fail on any problem; print run folder, iteration and output folder."""
    req = request(args)
    if args.run_dir and Path(args.run_dir).absolute() != req.run_dir:
        fail(f"RUN_DIR={args.run_dir}: TASK PARAM SIZE SEED give the run folder {req.run_dir}")
    iteration, problems = check_inputs(req)
    if problems:
        fail("cannot convert:\n  " + "\n  ".join(problems))
    print(req.run_dir)
    print(iteration)
    print(output_dir(req.run_dir, iteration))
    return 0


def do_step1_args(args: argparse.Namespace) -> int:
    resolved = step1_resolved(request(args), Path(args.tmp), args.world_size)
    if args.env_out:
        write_text(args.env_out, resolved.environment_lines())
    sys.stdout.write("".join(f"{a}\n" for a in conversion_args(resolved.args)))
    return 0


def do_record(args: argparse.Namespace) -> int:
    from pipeline.hf_convert import RECORD_FILE
    folder = Path(args.folder)
    step1 = Path(args.step1_args).read_text().splitlines() if args.step1_args else None
    write_json(folder / RECORD_FILE, provenance(
        converter=args.converter, source=args.source, iteration=args.iteration, megatron_path=args.megatron_path,
        hf_tokenizer_dir=args.hf_tokenizer_dir or None, dtype=args.dtype, step1_args=step1,
        steps=json.loads(args.steps) if args.steps else None))
    return 0


def do_check(args: argparse.Namespace) -> int:
    from pipeline.hf_convert import check_hf_folder
    check_hf_folder(args.folder, load_config=not args.no_transformers)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "print the steps the job will run (DRY_RUN=1) and the submission, run nothing"),
                       ("submit", "check, then submit pbs/convert.pbs through scripts/submit.py")):
        p = sub.add_parser(name, help=text)
        add_request_arguments(p)
        p.add_argument("--scheduler", choices=("local", "pbs"), default="local", help="SCHEDULER")
        p.add_argument("--group", default="", help="PBS_GROUP (-P)")
        p.add_argument("--queue", default="", help="PBS_QUEUE (-q) of the Megatron (GPU) job")
        p.add_argument("--cpu-queue", default="", help="CPU_QUEUE: queue of the native (CPU) job (default PBS_QUEUE)")
        p.add_argument("--rtype", default="", help="PBS_RTYPE")
        p.add_argument("--depend", default="", help="DEPEND: the checkpoint is then not looked for now")
        p.add_argument("--nodes", type=int, default=1, help="NODES of the Megatron job (step 1)")
        p.add_argument("--parallel", type=int, default=1, help="JOBS (local array parallelism; unused)")
        p.add_argument("--walltime", default="", help="job walltime HH:MM:SS")
        p.add_argument("--gpus-per-node", default="", help="GPUS_PER_NODE (default: counted by the job, else 8)")
        p.add_argument("--launcher-knob", choices=("auto", "mpi", "torchrun"), default="auto",
                       help="LAUNCHER of step 1")
        p.add_argument("--master-port", default="", help="MASTER_PORT of step 1")
        p.add_argument("--force", action="store_true", help="FORCE=1: convert again over an existing output")
    p = sub.add_parser("locate", help="(job) check and print run folder, iteration, output folder")
    add_request_arguments(p)
    p.add_argument("--run-dir", default="", help="RUN_DIR the job was given (must match)")
    p = sub.add_parser("step1-args", help="(job) pretrain_gpt.py's arguments of step 1, one per line")
    add_request_arguments(p)
    p.add_argument("--tmp", required=True, help="the job's temporary folder (torch_dist/ in, torch/ out)")
    p.add_argument("--world-size", type=int, default=None, help="GPUs of step 1 (checks the batch splits)")
    p.add_argument("--env-out", default="", help="write the job's environment changes for this Megatron here")
    p = sub.add_parser("record", help="(job) write the provenance JSON into a converted folder")
    p.add_argument("folder", help="the converted folder")
    p.add_argument("--converter", choices=CONVERTERS, required=True, help="which converter wrote it")
    p.add_argument("--source", required=True, help="the Megatron iteration folder converted")
    p.add_argument("--iteration", type=int, required=True, help="its iteration")
    p.add_argument("--megatron-path", default="", help="MEGATRON_PATH used")
    p.add_argument("--hf-tokenizer-dir", default="", help="HF_TOKENIZER_DIR used")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype written")
    p.add_argument("--step1-args", default="", help="file with step 1's arguments, one per line")
    p.add_argument("--steps", default="", help="JSON list of the commands run")
    p = sub.add_parser("check", help="config.json and every safetensors shard of a converted folder load")
    p.add_argument("folder", help="Hugging Face model folder")
    p.add_argument("--no-transformers", action="store_true", help="do not load config.json with transformers")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command in ("plan", "submit"):
        if args.nodes < 1:
            fail(f"NODES={args.nodes}: must be at least 1")
        return do_plan(args, submit=args.command == "submit")
    return {"locate": do_locate, "step1-args": do_step1_args, "record": do_record, "check": do_check}[args.command](args)


if __name__ == "__main__":
    run_main(main)
