#!/usr/bin/env python3
"""Preflight and submit training runs: one run (make train), one per seed (make train-seeds), or whole
chains init -> train -> convert per seed plus one soup (make chain; then an eval job with --eval-opt), chained
with afterok.

The checks are pipeline/preflight.py's, the submissions pipeline/train_jobs.py's (through the job layer,
pipeline/scheduler.py). Job ids go to stdout (the train jobs' for submit and seeds, the soup's for chain);
everything else goes to stderr.

    train.py submit --exp-dir exp --task T --param P --size 50B --seed 42 --scheduler pbs --group g --queue rt_HF --nodes 16
    train.py seeds  ... --seeds "42 666 42069"
    train.py chain  ... --seeds "42 666 42069" [--base-ckpt /path/to/pretrained/checkpoints]
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys

from pipeline.errors import fail, run_main
from pipeline.preflight import check_run
from pipeline.run_options import add_run_arguments, spec_from_args
from pipeline.scheduler import add_scheduler_arguments, scheduler_options
from pipeline.train_jobs import chain, submit_runs


def parse_seeds(text: str) -> list[int]:
    seeds = text.split()
    if not seeds or not all(re.fullmatch(r"0|[1-9][0-9]*", s) for s in seeds):
        fail(f"SEEDS={text!r}: expected whole numbers separated by spaces")
    if len(set(seeds)) != len(seeds):
        fail(f"SEEDS={text!r}: a seed is listed twice")
    return [int(s) for s in seeds]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("submit", "seeds", "chain", "preflight"),
                        help="submit: one run (--seed); seeds: one run per seed; chain: init -> train -> convert "
                             "per seed, then soup; preflight: only the checks")
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, default=None, help="SEED (submit, preflight)")
    parser.add_argument("--seeds", default="", help="SEEDS, space-separated (seeds, chain)")
    parser.add_argument("--gpus-per-node", default="", help="GPUS_PER_NODE (default: the job counts them; 8)")
    parser.add_argument("--launcher-knob", default="", choices=("", "auto", "mpi", "torchrun"),
                        help="LAUNCHER for the job: auto (mpirun when on PATH, else torchrun), mpi, torchrun")
    parser.add_argument("--master-port", default="", help="MASTER_PORT (default: from the job id)")
    parser.add_argument("--walltime", default="", help="train job walltime HH:MM:SS")
    parser.add_argument("--force", action="store_true", help="FORCE=1: submit despite a live job; re-init")
    parser.add_argument("--base-ckpt", default="", help="BASE_CKPT for the chain's init jobs")
    parser.add_argument("--base-iter", type=int, default=None, help="BASE_ITER for the chain's init jobs")
    chain = parser.add_argument_group("chain")
    chain.add_argument("--convert-opt", action="append", default=[], metavar="--OPTION=VALUE",
                       help="an option for scripts/convert.py submit (--converter=, --hf-tokenizer-dir=, ...); "
                            "repeatable")
    chain.add_argument("--init-walltime", default="", help="INIT_WALLTIME of the init jobs")
    chain.add_argument("--convert-walltime", default="", help="CONVERT_WALLTIME of the convert jobs")
    chain.add_argument("--soup-walltime", default="", help="SOUP_WALLTIME of the soup job")
    chain.add_argument("--cpu-queue", default="", help="CPU_QUEUE for the init and soup jobs (default: --queue)")
    chain.add_argument("--soup-name", default="", help="SOUP_NAME: merge/<name>.yaml (default TASK_PARAM_SIZE)")
    chain.add_argument("--soup-config-dir", default="", help="SOUP_CONFIG_DIR for the soup config (default: merge/)")
    chain.add_argument("--soup-var", action="append", default=[], metavar="NAME=VALUE",
                       help="extra variable for the soup job (SOUP_VERIFY, SOUP_CUDA, SOUP_SHARD_SIZE); repeatable")
    chain.add_argument("--eval-opt", action="append", default=[], metavar="--OPTION=VALUE",
                       help="an option of scripts/eval.py submit (--suite=, --eval-text=, ...): an eval job of the "
                            "base, the seeds and the soup after the soup; repeatable")
    # the Makefile's $(SCHEDULER_FLAGS); DEPEND is of the train job (submit, seeds) or of each seed's first job
    add_scheduler_arguments(parser.add_argument_group("scheduler"), with_exp_dir=False)
    args = parser.parse_args(argv)
    from pipeline.paths import exp_dir
    args.exp = exp_dir(args.exp_dir)
    args.exp_dir = str(args.exp)
    if args.nodes < 1:
        fail(f"NODES={args.nodes}: must be at least 1")
    if args.action != "preflight":
        for knob in scheduler_options(args).missing_knobs():
            fail(f"{knob} is not set: SCHEDULER={args.scheduler} needs it (on the command line or in local.mk)")
    if args.gpus_per_node and not re.fullmatch(r"[1-9][0-9]*", args.gpus_per_node):
        fail(f"GPUS_PER_NODE={args.gpus_per_node!r}: expected a positive whole number")
    # the launcher the arguments are resolved for now; the job resolves them again for what it finds
    if args.launcher_knob in ("mpi", "torchrun"):
        args.launcher = args.launcher_knob
    else:
        args.launcher = "mpi" if args.scheduler != "local" or shutil.which("mpirun") else "torchrun"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.action in ("submit", "preflight"):
        if args.seed is None:
            fail(f"{args.action}: --seed (SEED=) is needed")
        seeds = [args.seed]
    else:
        seeds = parse_seeds(args.seeds)
    if args.action == "preflight":
        check_run(args, seeds[0], need_init=True)
        print(f"preflight ok: {spec_from_args(args, seeds[0]).run_dir}", file=sys.stderr)
        return 0
    job_ids = [chain(args, seeds)] if args.action == "chain" else submit_runs(args, seeds)
    for job_id in filter(None, job_ids):
        print(job_id)
    return 0


if __name__ == "__main__":
    run_main(main)
