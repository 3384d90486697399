#!/usr/bin/env python3
"""Run a pbs/ job template: submit it with qsub (SCHEDULER=pbs) or run it here with bash (local).

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
import concurrent.futures
import json
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import fail, run_main
from pipeline.paths import REPO_DIR, jobs_file, logs_dir
from pipeline.provenance import git_commit, now_iso
from pipeline.scheduler import JOB_ID, LocalJobs, die_with_parent, normalize_depend, run_pbs

VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JOB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,235}$")
WALLTIME = re.compile(r"^\d+:[0-5]\d:[0-5]\d$")
ARRAY = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$")
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+=-]*$")
PARENT_PID = os.getppid()   # who started us (make, train.py): a local job must not outlive it


@dataclass
class Job:
    template: Path
    name: str
    variables: dict[str, str] = field(default_factory=dict)
    array: str | None = None
    depend: str | None = None
    nodes: int = 1
    walltime: str | None = None


def parse_var(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        fail(f"--var {text!r}: expected NAME=VALUE")
    if not VAR_NAME.match(name):
        fail(f"--var {text!r}: {name!r} is not a valid environment variable name")
    if "\n" in value or "\0" in value:
        fail(f"--var {name}: newlines and NUL bytes cannot be passed through qsub -v")
    return name, value


def array_indices(spec: str) -> list[int]:
    match = ARRAY.match(spec)
    if not match:
        fail(f"--array {spec!r}: expected START-END[:STEP][%MAX]")
    start, end, step = int(match[1]), int(match[2]), int(match[3] or 1)
    if end <= start or step < 1:
        # PBS rejects single-element arrays; callers run those as plain jobs
        fail(f"--array {spec!r}: a PBS array needs END > START and STEP >= 1")
    return list(range(start, end + 1, step))


def quote_value(name: str, value: str) -> str:
    """One `NAME=VALUE` item of qsub -v: values with commas, spaces or quotes are quoted for PBS."""
    if SAFE_VALUE.match(value):
        return f"{name}={value}"
    if "'" not in value:
        return f"{name}='{value}'"
    if '"' not in value:
        return f'{name}="{value}"'
    fail(f"--var {name}: a value holding both ' and \" cannot be passed through qsub -v")


def qsub_command(job: Job, group: str, queue: str, rtype: str, log_dir: Path) -> list[str]:
    if not group:
        fail("PBS_GROUP is not set: SCHEDULER=pbs needs your PBS group (-P), e.g. make ... PBS_GROUP=gXXXXXX "
             "or PBS_GROUP in local.mk")
    if not queue:
        fail("PBS_QUEUE is not set: SCHEDULER=pbs needs a queue (-q), e.g. PBS_QUEUE=rt_HF, or R<id> for a "
             "reservation together with PBS_RTYPE")
    if not JOB_NAME.match(job.name):
        fail(f"job name {job.name!r}: PBS wants a letter then up to 235 letters, digits or _.+-")
    variables = dict(job.variables)
    if rtype:
        variables["RTYPE"] = rtype
    cmd = ["qsub", "-N", job.name, "-P", group, "-q", queue, "-l", f"select={job.nodes}"]
    if job.walltime:
        if not WALLTIME.match(job.walltime):
            fail(f"WALLTIME={job.walltime!r}: expected HH:MM:SS")
        cmd += ["-l", f"walltime={job.walltime}"]
    cmd += ["-j", "oe", "-o", f"{log_dir}/"]
    if variables:
        cmd += ["-v", ",".join(quote_value(k, v) for k, v in variables.items())]
    if job.depend:
        cmd += ["-W", f"depend={job.depend}"]
    if job.array:
        array_indices(job.array)
        cmd += ["-J", job.array]
    cmd.append(str(job.template))
    return cmd


def record(exp: Path, entry: dict) -> None:
    path = jobs_file(exp)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:  # one short line per write: appends stay whole
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def submit_pbs(job: Job, args: argparse.Namespace, exp: Path) -> int:
    cmd = qsub_command(job, args.group, args.queue, args.rtype, logs_dir(exp))
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    logs_dir(exp).mkdir(parents=True, exist_ok=True)
    result = run_pbs(cmd, f"submitting {job.template.name} as {job.name}",
                     missing="qsub not found on PATH: SCHEDULER=pbs must run on a PBS login node (or use "
                             "SCHEDULER=local)",
                     after_timeout="The job may have been queued all the same: look with qstat -u $USER before "
                                   "submitting again. ")
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        fail(f"qsub failed (exit {result.returncode}) for {job.template.name}: {message}")
    job_id = result.stdout.strip().splitlines()[-1].strip() if result.stdout.strip() else ""
    if not JOB_ID.match(job_id):
        fail(f"qsub printed {result.stdout!r}, not a job id")
    record(exp, {"time": now_iso(), "scheduler": "pbs", "template": str(job.template), "name": job.name,
                 "variables": job.variables, "depend": job.depend, "array": job.array, "nodes": job.nodes,
                 "job_id": job_id, "git_commit": git_commit(), "command": cmd})
    print(job_id)
    return 0


def _local_env(job: Job, job_id: str, nodefile: Path, index: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(job.variables)
    env.update({"PBS_JOBID": job_id if index is None else job_id.replace("[]", f"[{index}]"),
                "PBS_JOBNAME": job.name, "PBS_O_WORKDIR": os.getcwd(), "PBS_NODEFILE": str(nodefile),
                "PBS_ENVIRONMENT": "PBS_BATCH"})
    if index is not None:
        env["PBS_ARRAY_INDEX"] = str(index)
    else:
        env.pop("PBS_ARRAY_INDEX", None)
    return env


def run_local(job: Job, args: argparse.Namespace, exp: Path) -> int:
    indices = array_indices(job.array) if job.array else [None]
    serial = f"{int(time.time() * 1000) % 10**10}{os.getpid() % 100:02d}"
    job_id = f"{serial}[].local" if job.array else f"{serial}.local"
    cmd = ["bash", str(job.template)]
    if args.dry_run:
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in job.variables.items())
        array_text = f" (for PBS_ARRAY_INDEX in {job.array})" if job.array else ""
        print(f"{env_text} {shlex.join(cmd)}{array_text}".strip())
        return 0
    if job.depend:
        print(f"note: DEPEND={job.depend} ignored locally (local jobs run in order)", file=sys.stderr)
    # a killed make (or train.py) must not leave its job running: the job has a session of its own
    die_with_parent(signal.SIGTERM)
    if os.getppid() != PARENT_PID:
        fail(f"job {job.name}: the process that started submit.py is gone; nothing was run")
    with tempfile.NamedTemporaryFile("w", prefix="pbs_nodefile.", suffix=".txt", delete=False) as nodefile:
        nodefile.write(socket.gethostname() + "\n")
    started = now_iso()
    jobs = LocalJobs()
    try:
        def run_one(index: int | None) -> int | None:
            return jobs.run(cmd, _local_env(job, job_id, Path(nodefile.name), index))

        if len(indices) == 1:
            statuses = {indices[0]: run_one(indices[0])}
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
                futures = [pool.submit(run_one, index) for index in indices]
                try:
                    statuses = {index: future.result() for index, future in zip(indices, futures)}
                except KeyboardInterrupt:
                    jobs.stop()     # before the pool waits for its threads, which wait for the jobs
                    raise
    except KeyboardInterrupt as exc:   # Ctrl-C, or SIGTERM/SIGHUP (pipeline.errors.Terminated)
        jobs.stop()
        how = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
        record(exp, {"time": started, "end_time": now_iso(), "scheduler": "local", "template": str(job.template),
                     "name": job.name, "variables": job.variables, "array": job.array, "job_id": job_id,
                     "exit_status": 128 + getattr(exc, "signum", signal.SIGINT), "interrupted": how,
                     "git_commit": git_commit()})
        print(f"error: job {job.name} stopped ({how}): its processes were sent SIGTERM", file=sys.stderr)
        raise
    finally:
        os.unlink(nodefile.name)
    failed = {i: s for i, s in statuses.items() if s != 0}
    status = next(iter(failed.values())) if failed else 0
    record(exp, {"time": started, "end_time": now_iso(), "scheduler": "local", "template": str(job.template),
                 "name": job.name, "variables": job.variables, "array": job.array, "job_id": job_id,
                 "exit_status": status, "failed_indices": sorted(i for i in failed if i is not None),
                 "git_commit": git_commit()})
    if failed:
        where = "" if indices == [None] else f" (array indices {', '.join(map(str, sorted(failed)))})"
        print(f"error: job {job.name} from {job.template} failed with exit status {status}{where}",
              file=sys.stderr)
        return status if 0 < status < 256 else 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, help="job template in pbs/")
    parser.add_argument("--name", required=True, help="job name (-N)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="variable for the job (qsub -v); repeatable")
    parser.add_argument("--array", default="", help="array range START-END[:STEP][%%MAX] (qsub -J)")
    parser.add_argument("--depend", default="", help="afterok:ID[:ID], afterany:..., or bare ids (= afterok)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (-l select=N)")
    parser.add_argument("--walltime", default="", help="HH:MM:SS (-l walltime=)")
    parser.add_argument("--scheduler", choices=("local", "pbs"), default="local", help="where the job runs")
    parser.add_argument("--group", default="", help="PBS group (-P); required with --scheduler pbs")
    parser.add_argument("--queue", default="", help="PBS queue (-q); required with --scheduler pbs")
    parser.add_argument("--rtype", default="", help="resource type with a reservation queue (-v RTYPE=)")
    parser.add_argument("--exp-dir", required=True, help="EXP_DIR: logs and jobs.jsonl go here")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                        help="local mode: array indices run at once")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    template = Path(args.template)
    if not template.is_absolute():
        template = (REPO_DIR / template) if (REPO_DIR / template).is_file() else template.resolve()
    if not template.is_file():
        fail(f"{args.template}: job template not found")
    if args.nodes < 1:
        fail(f"NODES={args.nodes}: must be at least 1")
    exp = Path(args.exp_dir).resolve()
    variables = dict(parse_var(v) for v in args.var)
    # every template finds the checkout and EXP_DIR through these, also when qsub'd by hand
    variables = {"REPO_DIR": str(REPO_DIR), "EXP_DIR": str(exp), **variables}
    job = Job(template=template, name=args.name, variables=variables, array=args.array or None,
              depend=normalize_depend(args.depend), nodes=args.nodes, walltime=args.walltime or None)
    if args.scheduler == "pbs":
        return submit_pbs(job, args, exp)
    return run_local(job, args, exp)


if __name__ == "__main__":
    run_main(main)
