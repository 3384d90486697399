"""The job layer: a pbs/ template with its variables, submitted with qsub (SCHEDULER=pbs), with sbatch
(SCHEDULER=slurm: the same template; pbs/common.sh maps Slurm's job variables to the PBS ones) or run here
with bash (SCHEDULER=local: pipeline/local_jobs.py); the jobs.jsonl record, DEPEND parsing and the generic
step job's command line. The states of submitted jobs are read by pipeline/job_states.py.

A scheduler that hangs must not hang make: every qsub, qstat, sbatch, squeue or sacct call gives up after
PBS_TIMEOUT seconds (environment; default 120) with a message saying what was asked and what to check.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import fail
from pipeline.paths import jobs_file, logs_dir
from pipeline.provenance import git_commit, now_iso

DEFAULT_TIMEOUT_S = 120.0
SCHEDULERS = ("local", "pbs", "slurm")
# PBS: 123.pbs1, 123[].pbs1 (a whole array), 123[4].pbs1 (one index), server suffix optional; Slurm: 123, 123_4
JOB_ID = re.compile(r"^\d+(\[\d*\]|_\d+)?(\.[A-Za-z0-9_.-]+)?$")
DEPEND_TYPES = ("afterok", "afterany", "afternotok")


def normalize_depend(depend: str) -> str | None:
    """'afterok:1.pbs1:2.pbs1' stays; a bare id list ('1.pbs1 2.pbs1', '1:2', '1,2') means afterok."""
    depend = depend.strip()
    if not depend:
        return None
    clauses = []
    if any(depend.startswith(f"{kind}:") for kind in DEPEND_TYPES):
        for clause in depend.split(","):
            kind, _, ids = clause.partition(":")
            if kind not in DEPEND_TYPES or not ids:
                fail(f"DEPEND={depend!r}: clause {clause!r} is not <{'|'.join(DEPEND_TYPES)}>:ID[:ID...]")
            clauses.append((kind, ids.split(":")))
    else:
        clauses.append(("afterok", re.split(r"[\s,:]+", depend)))
    for _, ids in clauses:
        for job_id in ids:
            if not JOB_ID.match(job_id):
                fail(f"DEPEND={depend!r}: {job_id!r} is not a job id (PBS: 123.pbs1 or 123[].pbs1; Slurm: 123)")
    return ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in clauses)


def afterok(*ids: str | None) -> str:
    """The DEPEND clause 'afterok:ID:ID' on the given job ids ('' when there are none: local jobs have no id)."""
    ids = [i for i in ids if i]
    return f"afterok:{':'.join(ids)}" if ids else ""


def join_depend(*clauses: str) -> str:
    return ",".join(c for c in clauses if c)


def timeout_s() -> float:
    text = os.environ.get("PBS_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        fail(f"PBS_TIMEOUT={text!r}: expected a number of seconds > 0")
    return value


def run_pbs(cmd: list[str], what: str, missing: str = "", after_timeout: str = "",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a scheduler's client command (qsub, qstat, sbatch, squeue, sacct) with the time limit; its
    output is captured as text."""
    limit = timeout_s()
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL,
                              env=env)
    except FileNotFoundError:
        fail(missing or f"{cmd[0]} not found on PATH: the scheduler's commands run on its login node")
    except subprocess.TimeoutExpired:
        fail(f"{cmd[0]} did not answer within {limit:g} s ({what}); the scheduler may be down or overloaded. "
             f"{after_timeout}PBS_TIMEOUT=<seconds> waits longer")


# ---------------------------------------------------------------------------------------------
# The generic job (pbs/run_step.pbs): one pipeline script, its arguments passed as text
# ---------------------------------------------------------------------------------------------
STEP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def step_command(step: str, step_args: str, python: str, scripts_dir: Path) -> list[str]:
    """argv of `scripts/<step>.py` with STEP_ARGS split as a shell splits words (quotes group) but
    never evaluated: no expansion, no command substitution, nothing of it runs as code."""
    if not STEP_NAME.match(step) or step == "run_step" or not (scripts_dir / f"{step}.py").is_file():
        fail(f"STEP={step!r}: not a script of {scripts_dir} (lower-case letters, digits and _)")
    try:
        args = shlex.split(step_args)
    except ValueError as exc:
        fail(f"STEP_ARGS={step_args!r}: cannot be split into arguments ({exc})")
    return [python, str(scripts_dir / f"{step}.py"), *args]


# ---------------------------------------------------------------------------------------------
# Jobs: one pbs/ template with its variables, submitted with qsub or run here with bash (scripts/submit.py)
# ---------------------------------------------------------------------------------------------
@dataclass
class SchedulerOptions:
    """What every submission needs besides the job (the Makefile's scheduler knobs)."""
    scheduler: str = "local"
    group: str = ""                 # PBS_GROUP (-P)
    queue: str = ""                 # PBS_QUEUE (-q)
    rtype: str = ""                 # PBS_RTYPE
    parallel: int = 1               # local: array indices at once
    dry_run: bool = False
    account: str = ""               # SLURM_ACCOUNT (--account)
    partition: str = ""             # SLURM_PARTITION (--partition)
    gpus_per_node: str = ""         # SLURM_GPUS_PER_NODE (--gpus-per-node), for partitions that want it

    @property
    def queued(self) -> bool:
        """Jobs go to a batch scheduler and have ids (not run here)."""
        return self.scheduler != "local"

    def missing_knobs(self) -> list[str]:
        required = {"pbs": (("PBS_GROUP", self.group), ("PBS_QUEUE", self.queue)),
                    "slurm": (("SLURM_ACCOUNT", self.account), ("SLURM_PARTITION", self.partition))}
        return [knob for knob, value in required.get(self.scheduler, ()) if not value]


def add_scheduler_arguments(parser, *, default_parallel: int = 1, with_exp_dir: bool = True) -> None:
    """The Makefile's $(SCHEDULER_FLAGS), as every submitting script takes them."""
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="local", help="SCHEDULER: where the job runs")
    if with_exp_dir:
        parser.add_argument("--exp-dir", required=True, help="EXP_DIR: logs and jobs.jsonl go here")
    parser.add_argument("--group", default="", help="PBS_GROUP (-P); required with --scheduler pbs")
    parser.add_argument("--queue", default="", help="PBS_QUEUE (-q); required with --scheduler pbs")
    parser.add_argument("--rtype", default="", help="PBS_RTYPE: resource type with a reservation queue")
    parser.add_argument("--account", default="", help="SLURM_ACCOUNT; required with --scheduler slurm")
    parser.add_argument("--partition", default="", help="SLURM_PARTITION; required with --scheduler slurm")
    parser.add_argument("--slurm-gpus-per-node", default="", help="SLURM_GPUS_PER_NODE (--gpus-per-node)")
    parser.add_argument("--depend", default="", help="DEPEND: afterok:ID[:ID], afterany:..., or bare ids (= afterok)")
    parser.add_argument("--nodes", type=int, default=1, help="NODES")
    parser.add_argument("--parallel", type=int, default=default_parallel, help="local mode: array indices run at once")


def scheduler_options(args, *, dry_run: bool = False, queue: str = "") -> SchedulerOptions:
    """The options of parsed add_scheduler_arguments flags; `queue` (CPU_QUEUE) replaces the queue under
    PBS and the partition under Slurm."""
    options = SchedulerOptions(args.scheduler, args.group, args.queue, args.rtype, args.parallel, dry_run,
                               args.account, args.partition, args.slurm_gpus_per_node)
    if queue and options.scheduler == "slurm":
        options.partition = queue
    elif queue:
        options.queue = queue
    return options


VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JOB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,235}$")
WALLTIME = re.compile(r"^\d+:[0-5]\d:[0-5]\d$")
ARRAY = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$")
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+=-]*$")
# who started this process (make, train.py, via scripts/submit.py): a local job must not outlive it
PARENT_PID = os.getppid()


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


# shell-quoted word lists that a job splits (shlex) and never evaluates: qsub gets them re-quoted as shlex.join
# does, with quotes only around the words that need them (the Makefile quotes every word), since qsub -v
# cannot carry a quote
SHELL_WORDS = ("STEP_ARGS", "PLAN_ARGS")


def quote_value(name: str, value: str) -> str:
    """One `NAME=VALUE` item of qsub -v: a value with commas or spaces goes in single quotes. PBS's qsub cannot
    carry a quote or a backslash inside a value (OpenPBS 23.06 turns quotes into backslashes, doubles
    backslashes and drops the variables after it), so such a value is refused rather than garbled."""
    if SAFE_VALUE.match(value):
        return f"{name}={value}"
    bad = [c for c in ("'", '"', "\\") if c in value]
    if bad:
        fail(f"--var {name}={value!r}: qsub -v cannot pass {' or '.join(bad)} inside a value (PBS garbles it); "
             "use a value without quotes or backslashes (an argument with spaces or shell characters gets quotes "
             "in STEP_ARGS): SCHEDULER=slurm and local pass any value")
    return f"{name}='{value}'"


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
    for name in SHELL_WORDS:
        if name in variables:
            try:
                variables[name] = shlex.join(shlex.split(variables[name]))
            except ValueError:
                pass        # the job's own split of it says what is wrong
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


def submit_pbs(job: Job, args: "SchedulerOptions", exp: Path) -> str:
    """qsub the job; returns its id (empty for a dry run, which prints the command)."""
    cmd = qsub_command(job, args.group, args.queue, args.rtype, logs_dir(exp))
    if args.dry_run:
        print(shlex.join(cmd))
        return ""
    return submit_batch(job, exp, cmd, "pbs")


BATCH_NAMES = {"pbs": ("PBS", "qstat -u $USER"), "slurm": ("Slurm", "squeue --me")}


def submit_batch(job: Job, exp: Path, cmd: list[str], scheduler: str, env: dict[str, str] | None = None) -> str:
    """Run a submission command (qsub, sbatch) whose stdout ends with the job id; record the job."""
    tool, (name, look) = cmd[0], BATCH_NAMES[scheduler]
    logs_dir(exp).mkdir(parents=True, exist_ok=True)
    result = run_pbs(cmd, f"submitting {job.template.name} as {job.name}", env=env,
                     missing=f"{tool} not found on PATH: SCHEDULER={scheduler} must run on a {name} login node "
                             f"(or use SCHEDULER=local)",
                     after_timeout=f"The job may have been queued all the same: look with {look} before "
                                   "submitting again. ")
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        fail(f"{tool} failed (exit {result.returncode}) for {job.template.name}: {message}")
    lines = result.stdout.strip().splitlines()
    job_id = lines[-1].split(";")[0].strip() if lines else ""   # sbatch --parsable: ID or ID;CLUSTER
    if not JOB_ID.match(job_id):
        fail(f"{tool} printed {result.stdout!r}, not a job id")
    record(exp, {"time": now_iso(), "scheduler": scheduler, "template": str(job.template), "name": job.name,
                 "variables": job.variables, "depend": job.depend, "array": job.array, "nodes": job.nodes,
                 "job_id": job_id, "git_commit": git_commit(), "command": cmd})
    return job_id


JOB_IDENTITY = ("PBS_JOBID", "PBS_ARRAY_INDEX", "PBS_JOBNAME", "PBS_NODEFILE", "PBS_O_WORKDIR", "PBS_ENVIRONMENT")


def sbatch_command(job: Job, options: SchedulerOptions, log_dir: Path) -> list[str]:
    """sbatch's command line. The variables travel in sbatch's environment (--export=ALL, Slurm's default),
    so a value with commas, quotes or spaces reaches the job as it is."""
    for knob in options.missing_knobs():
        fail(f"{knob} is not set: SCHEDULER=slurm needs it (on the command line or in local.mk)")
    if not JOB_NAME.match(job.name):
        fail(f"job name {job.name!r}: wanted a letter then up to 235 letters, digits or _.+-")
    if "%" in str(log_dir):
        fail(f"{log_dir}: sbatch reads % in an output path as a pattern; use an EXP_DIR without %")
    cmd = ["sbatch", "--parsable", "--job-name", job.name, "--account", options.account,
           "--partition", options.partition, "--nodes", str(job.nodes), "--export", "ALL"]
    if job.walltime:
        if not WALLTIME.match(job.walltime):
            fail(f"WALLTIME={job.walltime!r}: expected HH:MM:SS")
        cmd += ["--time", job.walltime]
    if options.gpus_per_node:
        if not re.fullmatch(r"[1-9][0-9]*", options.gpus_per_node):
            fail(f"SLURM_GPUS_PER_NODE={options.gpus_per_node!r}: expected a positive whole number")
        cmd += ["--gpus-per-node", options.gpus_per_node]
    cmd += ["--output", f"{log_dir}/{job.name}-{'%A_%a' if job.array else '%j'}.out"]
    if job.depend:
        cmd.append(f"--dependency={job.depend}")
    if job.array:
        array_indices(job.array)
        cmd.append(f"--array={job.array}")
    cmd.append(str(job.template))
    return cmd


def submit_slurm(job: Job, options: SchedulerOptions, exp: Path) -> str:
    """sbatch the job; returns its id (empty for a dry run, which prints the command)."""
    cmd = sbatch_command(job, options, logs_dir(exp))
    if options.dry_run:
        print(shlex.join(["env", *(f"{k}={v}" for k, v in job.variables.items()), *cmd]))
        return ""
    # a job id from the environment of this process (make run inside a job) must not pass for the new job's
    env = {k: v for k, v in os.environ.items() if k not in JOB_IDENTITY} | job.variables
    return submit_batch(job, exp, cmd, "slurm", env)


def make_job(template: str | Path, name: str, variables: dict[str, str], exp: Path, *, array: str = "",
             depend: str = "", nodes: int = 1, walltime: str = "") -> Job:
    """A job of a pbs/ template (a path, or relative to the checkout), with REPO_DIR and EXP_DIR added."""
    from pipeline.paths import REPO_DIR
    path = Path(template)
    if not path.is_absolute():
        path = (REPO_DIR / path) if (REPO_DIR / path).is_file() else path.resolve()
    if not path.is_file():
        fail(f"{template}: job template not found")
    if nodes < 1:
        fail(f"NODES={nodes}: must be at least 1")
    # every template finds the checkout and EXP_DIR through these, also when qsub'd by hand
    variables = {"REPO_DIR": str(REPO_DIR), "EXP_DIR": str(exp), **variables}
    return Job(template=path, name=name, variables=variables, array=array or None,
               depend=normalize_depend(depend), nodes=nodes, walltime=walltime or None)


def submit(job: Job, options: SchedulerOptions, exp: Path) -> tuple[int, str | None]:
    """Submit `job` to PBS or Slurm (its id, recorded in jobs.jsonl) or run it here: (exit status, job id or None)."""
    if options.scheduler == "pbs":
        return 0, submit_pbs(job, options, exp) or None
    if options.scheduler == "slurm":
        return 0, submit_slurm(job, options, exp) or None
    from pipeline.local_jobs import run_local   # it imports this module
    return run_local(job, options, exp), None
