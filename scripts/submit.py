#!/usr/bin/env python3
"""Run a pbs/ job template: submit it with qsub (SCHEDULER=pbs) or sbatch (slurm), or run it here with bash
(local). The job layer itself (submission, local runs, jobs.jsonl, job states) is pipeline/scheduler.py; this
is its command.

Every make target that runs a job goes through this script, so both schedulers see the very same
template and variables. Under PBS it prints the job id alone on stdout (for DEPEND chains) and
appends a record to $EXP_DIR/jobs.jsonl; locally it emulates the PBS environment, runs every
array index with bounded parallelism, and exits with the job's status. A local job dies with this
process: Ctrl-C, SIGTERM, SIGHUP or the death of whatever started submit.py (make) are passed on
to the job's process group.

    submit.py --template pbs/extract.pbs --name extract-x --var DATASET=x --array 0-7 \\
              --scheduler pbs --group G --queue rt_HC --depend 123.pbs1
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.errors import run_main
from pipeline.scheduler import add_scheduler_arguments, make_job, parse_var, scheduler_options, submit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, help="job template in pbs/")
    parser.add_argument("--name", required=True, help="job name (-N)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="variable for the job (qsub -v); repeatable")
    parser.add_argument("--array", default="", help="array range START-END[:STEP][%%MAX] (qsub -J)")
    parser.add_argument("--walltime", default="", help="HH:MM:SS (-l walltime=)")
    add_scheduler_arguments(parser, default_parallel=os.cpu_count() or 1)
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exp = Path(args.exp_dir).resolve()
    variables = dict(parse_var(v) for v in args.var)
    job = make_job(args.template, args.name, variables, exp, array=args.array, depend=args.depend,
                   nodes=args.nodes, walltime=args.walltime)
    status, job_id = submit(job, scheduler_options(args, dry_run=args.dry_run), exp)
    if job_id:
        print(job_id)   # alone on stdout: DEPEND chains read it
    return status


if __name__ == "__main__":
    run_main(main)
