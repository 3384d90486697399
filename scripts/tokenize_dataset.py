#!/usr/bin/env python3
"""The tokenize stage of a dataset (make tokenize): plan what is not up to date, submit it, run one entry.

    tokenize_dataset.py submit --exp-dir EXP --dataset dolmino-mix-1124 --tokenizer-name v3.1 \\
        --tokenizer-type Llama2Tokenizer --tokenizer-model llm-jp-tokenizer-100k.ver3.1.model [SCHEDULER FLAGS]
    -> plans, then submits pbs/tokenize.pbs (an array of one index per file to do); the job id on stdout
    tokenize_dataset.py plan ...   -> stdout: "<entries to do> <plan file>" ("0 -" when all is up to date)
    tokenize_dataset.py run --plan <plan file> --index N [--workers W]     (one PBS array index)
    tokenize_dataset.py run-all --exp-dir EXP --plan-args "..."            (the job submitted while the
                                                                            merge of DEPEND is pending)

Every merged file listed by merge's done.json becomes <dataset>-<name>-tokenized/<path>_text_document.*;
see scripts/pipeline/tokenize_stage.py for the sentinels and what "up to date" means.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pipeline.errors import fail, run_main
from pipeline.merging import merged_outputs
from pipeline.tokenization import ON_BAD, TOKENIZER_TYPES, TokenizerSpec
from pipeline.scheduler import add_scheduler_arguments, scheduler_options
from pipeline.tokenize_stage import (env_workers, make_plan, run_every_item, run_plan_item, submit_plan,
                                     submit_when_merged)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. dolmino-mix-1124")
    parser.add_argument("--tokenizer-name", required=True, help="TOKENIZER_NAME: names the output folder")
    parser.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES,
                        help="Megatron tokenizer class whose documents are reproduced")
    parser.add_argument("--tokenizer-model", required=True,
                        help="TOKENIZER_MODEL: SentencePiece model (or HF folder)")
    parser.add_argument("--no-bos", action="store_true", help="Llama2Tokenizer without BOS (newer upstream layout)")
    parser.add_argument("--no-eod", action="store_true", help="do not append EOD (default: --append-eod, as LLM-jp)")
    parser.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY", help="keys to tokenize")
    parser.add_argument("--on-bad-line", choices=ON_BAD, default="error",
                        help="bad JSON line: stop with file:line (error) or skip and count it (skip)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="write the plan of outputs to (re)make; print '<count> <plan file>'")
    plan.add_argument("--exp-dir", required=True, type=Path, help="EXP_DIR")
    submit = sub.add_parser("submit", help="plan, then submit pbs/tokenize.pbs for what is to do (make tokenize)")
    add_scheduler_arguments(submit)
    submit.add_argument("--walltime", default="", help="TOKENIZE_WALLTIME (HH:MM:SS) of the job")
    submit.add_argument("--workers", type=int, default=0, help="TOKENIZE_WORKERS: tokenizer processes per file "
                        "(0 = every core the job has)")
    for each in (plan, submit):
        add_plan_arguments(each)
    every = sub.add_parser("run-all", help="plan, then tokenize every entry in turn (the job submitted while "
                           "merge has not finished)")
    every.add_argument("--exp-dir", required=True, type=Path, help="EXP_DIR")
    every.add_argument("--plan-args", required=True, help="the plan's options, shell-quoted (PLAN_ARGS)")
    every.add_argument("--workers", type=int, default=0, help="tokenizer processes; 0 = every core this job has")
    run = sub.add_parser("run", help="tokenize one entry of a plan (one PBS array index)")
    run.add_argument("--plan", required=True, type=Path, help="plan file written by `plan`")
    run.add_argument("--index", required=True, type=int, help="entry of the plan ($PBS_ARRAY_INDEX)")
    run.add_argument("--workers", type=int, default=0, help="tokenizer processes; 0 = every core this job has")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def plan_argv(args: argparse.Namespace) -> list[str]:
    """The plan options of `args` as a command line (what the deferred job plans with)."""
    argv = ["--dataset", args.dataset, "--tokenizer-name", args.tokenizer_name, "--tokenizer-type",
            args.tokenizer_type, "--tokenizer-model", str(Path(args.tokenizer_model).absolute()),
            "--on-bad-line", args.on_bad_line, "--json-keys", *args.json_keys]
    return argv + ["--no-bos"] * args.no_bos + ["--no-eod"] * args.no_eod


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "run-all":
        planner = argparse.ArgumentParser(prog="PLAN_ARGS")
        add_plan_arguments(planner)
        try:
            plan_args = shlex.split(args.plan_args)
        except ValueError as exc:
            fail(f"PLAN_ARGS={args.plan_args!r}: cannot be split into arguments ({exc})")
        args = argparse.Namespace(**vars(args), **vars(planner.parse_args(plan_args)))
    if args.command == "submit" and args.depend.strip() and merged_outputs(Path(args.exp_dir).resolve(),
                                                                           args.dataset) is None:
        print(f"tokenize: the merge of {args.dataset} has not finished: one job plans and tokenizes after "
              f"DEPEND={args.depend}", file=sys.stderr)
        status, job_id = submit_when_merged(Path(args.exp_dir).resolve(), args.dataset, args.tokenizer_name,
                                            plan_argv(args), workers=args.workers, walltime=args.walltime,
                                            depend=args.depend, nodes=args.nodes, options=scheduler_options(args))
        if job_id:
            print(job_id)
        return status
    if args.command in ("plan", "submit", "run-all"):
        exp = Path(args.exp_dir).resolve()
        spec = TokenizerSpec(args.tokenizer_type, args.tokenizer_model, bos=not args.no_bos,
                             append_eod=not args.no_eod)
        plan = make_plan(exp, args.dataset, args.tokenizer_name, spec, tuple(args.json_keys), args.on_bad_line)
        done = plan.total - len(plan.todo)
        stale = f" ({plan.stale} stale)" if plan.stale else ""
        print(f"tokenize: {plan.total} outputs, {done} up to date, {len(plan.todo)} to do{stale}", file=sys.stderr)
        if args.command == "plan":
            print(f"{len(plan.todo)} {plan.path or '-'}")
            return 0
        if args.command == "run-all":
            for line in run_every_item(plan, env_workers(args.workers)):
                print(f"tokenize: {line}")
            return 0
        if not plan.todo:
            print(f"make tokenize: every output of {args.dataset} is up to date")
            return 0
        status, job_id = submit_plan(plan, exp, args.dataset, args.tokenizer_name, workers=args.workers,
                                     walltime=args.walltime, depend=args.depend, nodes=args.nodes,
                                     options=scheduler_options(args))
        if job_id:
            print(job_id)   # alone on stdout: DEPEND chains read it
        return status
    print(f"tokenize: {run_plan_item(args.plan, args.index, env_workers(args.workers), not args.quiet)}")
    return 0


if __name__ == "__main__":
    run_main(main)
