#!/usr/bin/env python3
"""Preflight and submit training runs: one run (make train), one per seed (make train-seeds), or whole
chains init -> train -> convert per seed plus one soup (make chain), chained with afterok.

Every job goes through the job layer (pipeline/scheduler.py) with the Makefile's $(SCHEDULER_FLAGS) (the
conversions through scripts/convert.py submit, with make convert's own checks), so SCHEDULER=local
runs the same templates here, in order. Before anything is submitted, every run is
checked: each data prefix of the mixture list has .bin and .idx (valid header) under EXP_DIR, the
tokenizer model and Megatron's pretrain_gpt.py exist, the global batch splits over NODES x GPUs, the
run is initialised (make init; in a chain its init job comes first), and no live PBS job of the
same run is queued, running or held (FORCE=1 overrides). Job ids go to stdout (the train job's for
submit, the soup's for chain); everything else goes to stderr.

    train.py submit --exp-dir exp --task T --param P --size 50B --seed 42 --scheduler pbs --group g --queue rt_HF --nodes 16
    train.py seeds  ... --seeds "42 666 42069"
    train.py chain  ... --seeds "42 666 42069" [--base-ckpt /path/to/pretrained/checkpoints]
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, fail, run_main
from pipeline.megatron_args import RunSpec, Resolved, resolve
from pipeline.megatron_ckpt import TRACKER, completeness_problems, read_tracker
from pipeline.midtrain import RunLayout, resolve_base
from pipeline.params import load_train_params, param_name
from pipeline.paths import PBS_DIR, REPO_DIR, jobs_file, run_dir
from pipeline.scheduler import qstat_jobs
from pipeline.run_options import add_run_arguments, convert_request_from_argv, spec_from_args, write_resolved

TRAIN_TEMPLATE = PBS_DIR / "train.pbs"
STEP_TEMPLATE = PBS_DIR / "run_step.pbs"
LIVE_STATES = {"Q", "R", "H", "W", "T", "E", "B", "S", "U", "M"}   # anything but finished (F) or moved (X)
MAX_LISTED = 10
NAME_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")


def job_name(kind: str, spec: RunSpec) -> str:
    name = NAME_CHARS.sub("_", f"{kind}-{spec.task}-{param_name(spec.param)}-{spec.size}-seed{spec.seed}")
    return name[:236]


# --- checks -----------------------------------------------------------------------------------

def data_problems(resolved: Resolved) -> list[str]:
    from pipeline.indexed import read_header
    missing, broken = [], []
    for prefix in resolved.data_prefixes():
        absent = [ext for ext in (".bin", ".idx") if not Path(f"{prefix}{ext}").is_file()]
        if absent:
            missing.append(f"{prefix} ({' and '.join(absent)} missing)")
            continue
        try:
            read_header(f"{prefix}.idx")
        except PipelineError as exc:
            broken.append(str(exc))
    problems = []
    if missing:
        shown = "\n    ".join(missing[:MAX_LISTED])
        more = f"\n    ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        problems.append(f"{resolved.data_list}: {len(missing)} of {len(resolved.entries)} data prefixes are not "
                        f"tokenized under {resolved.spec.exp}:\n    {shown}{more}")
    problems += broken
    return problems


def environment_problems(resolved: Resolved, env_dir: str) -> list[str]:
    problems = []
    if not resolved.tokenizer.is_file():
        problems.append(f"tokenizer model {resolved.tokenizer}: not found (TOKENIZER_MODEL=<file>)")
    if resolved.megatron is None:
        problems.append("Megatron-LM: set MEGATRON_PATH=<checkout> or ENV_DIR=<environment> (make env)")
    elif not (resolved.megatron / "pretrain_gpt.py").is_file():
        problems.append(f"MEGATRON_PATH {resolved.megatron}: no pretrain_gpt.py there")
    if env_dir and not (Path(env_dir) / "activate.sh").is_file():
        problems.append(f"ENV_DIR {env_dir}: no activate.sh (make env ENV_DIR={env_dir} installs it)")
    return problems


def init_problems(layout: RunLayout, spec: RunSpec) -> list[str]:
    if layout.has_own_checkpoint():
        return []
    if not layout.is_initialised():
        return [f"{layout.root}: not initialised; run make init TASK={spec.task} PARAM={spec.param} "
                f"SIZE={spec.size} SEED={spec.seed} BASE_CKPT=<checkpoints> first (or use make chain)"]
    if layout.starts_from_scratch():
        return []
    iteration = read_tracker(layout.start)
    iter_dir = layout.start / f"iter_{iteration:07d}" if isinstance(iteration, int) else layout.start / "release"
    dangling = [p.name for p in iter_dir.iterdir() if p.is_symlink() and not p.exists()] if iter_dir.is_dir() else []
    if not iter_dir.is_dir():
        return [f"{iter_dir}: missing; re-run make init FORCE=1"]
    if dangling:
        return [f"{iter_dir}: {len(dangling)} shard links point nowhere (was the source checkpoint moved?): "
                f"{', '.join(dangling[:3])}; re-run make init FORCE=1 BASE_CKPT=<its new place>"]
    return [f"incomplete start checkpoint: {p}" for p in completeness_problems(iter_dir)]


def train_jobs(exp: Path, run: Path) -> list[str]:
    """The ids of every PBS train job submitted for `run`, newest first, from EXP_DIR/jobs.jsonl."""
    path = jobs_file(exp)
    if not path.is_file():
        return []
    found: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path}:{number}: not JSON, skipped", file=sys.stderr)
            continue
        if entry.get("scheduler") == "pbs" and Path(entry.get("template", "")).name == TRAIN_TEMPLATE.name \
                and (entry.get("variables") or {}).get("RUN_DIR") == str(run) and entry.get("job_id"):
            found.append(entry["job_id"])
    return list(dict.fromkeys(reversed(found)))


def live_job(exp: Path, run: Path) -> tuple[str, str] | None:
    """(id, state) of the newest live train job of `run`: every job of the run is asked about, since an
    older one may still run after a later, forced one has finished."""
    job_ids = train_jobs(exp, run)
    states = qstat_jobs(job_ids, f"check for a live train job of {run} (FORCE=1 skips the check)")
    for job_id in job_ids:
        state = states.get(job_id, {}).get("job_state")
        if state in LIVE_STATES:
            return job_id, state
    return None


# --- submission ---------------------------------------------------------------------------------

@dataclass
class Submitter:
    opts: argparse.Namespace

    @property
    def pbs(self) -> bool:
        return self.opts.scheduler == "pbs"

    def submit(self, template: Path, name: str, variables: dict[str, str], *, depend: str = "", nodes: int = 1,
               walltime: str = "", queue: str = "") -> str | None:
        """Submit through the job layer; returns the job id under PBS (None locally, where it has run by now)."""
        from pipeline.scheduler import SchedulerOptions, make_job, submit
        job = make_job(template, name, variables, self.opts.exp, depend=depend, nodes=nodes, walltime=walltime)
        options = SchedulerOptions(self.opts.scheduler, self.opts.group, queue or self.opts.queue, self.opts.rtype,
                                   self.opts.parallel)
        status, job_id = submit(job, options, self.opts.exp)
        if status != 0:
            fail(f"{template.name} job {name} failed (exit {status})")
        return job_id


def afterok(*ids: str | None) -> str:
    ids = [i for i in ids if i]
    return f"afterok:{':'.join(ids)}" if ids else ""


def join_depend(*clauses: str) -> str:
    return ",".join(c for c in clauses if c)


def normalized_depend(depend: str) -> str:
    if not depend.strip():
        return ""
    from pipeline.scheduler import normalize_depend
    return normalize_depend(depend) or ""


def optional_vars(args: argparse.Namespace) -> dict[str, str]:
    """The knobs a job needs only when set (the template has defaults for the rest)."""
    pairs = {"DATA_LIST": args.data_list and str(Path(args.data_list).absolute()),
             "TOKENIZER_MODEL": args.tokenizer_model and str(Path(args.tokenizer_model).absolute()),
             "ENV_DIR": args.env_dir and str(Path(args.env_dir).absolute()),
             "MEGATRON_PATH": args.megatron_path and str(Path(args.megatron_path).absolute()),
             "WANDB_ENTITY": args.wandb_entity, "WANDB_PROJECT": args.wandb_project,
             "GPUS_PER_NODE": args.gpus_per_node, "LAUNCHER": args.launcher_knob, "MASTER_PORT": args.master_port,
             "TRAIN_PYTHON": args.train_python}
    return {k: v for k, v in pairs.items() if v}


def param_value(param: str) -> str:
    """PARAM as a job gets it: a name, or an absolute path to a params YAML."""
    return str(Path(param).absolute()) if param.endswith((".yaml", ".yml")) else param


def run_vars(spec: RunSpec, args: argparse.Namespace) -> dict[str, str]:
    return {"TASK": spec.task, "PARAM": param_value(spec.param), "SIZE": spec.size, "SEED": str(spec.seed),
            "RUN_DIR": str(spec.run_dir), **optional_vars(args)}


def world_size(args: argparse.Namespace) -> int:
    return args.nodes * int(args.gpus_per_node or 8)


def check_run(args: argparse.Namespace, seed: int, *, need_init: bool) -> Resolved:
    """Resolve the run's arguments and run every preflight check; fails listing all problems."""
    spec = spec_from_args(args, seed)
    problems: list[str] = []
    try:
        resolved = resolve(spec)
    except PipelineError as exc:
        fail(f"seed {seed}: {exc}")
    try:
        resolved.params.check_world_size(world_size(args), f"NODES={args.nodes} x GPUS_PER_NODE="
                                         f"{args.gpus_per_node or '8 (default)'}")
    except PipelineError as exc:
        problems.append(str(exc))
    problems += data_problems(resolved)
    problems += environment_problems(resolved, args.env_dir)
    if need_init:
        problems += init_problems(spec.layout, spec)
    if args.scheduler == "pbs" and not args.force:
        live = live_job(spec.exp, spec.run_dir)
        if live:
            problems.append(f"{spec.run_dir}: job {live[0]} of this run is still live (state {live[1]}); a second "
                            f"one would train the same folder at once. FORCE=1 submits anyway")
    if problems:
        fail(f"preflight for {spec.run_dir} failed:\n  - " + "\n  - ".join(problems))
    return resolved


def record_and_submit_train(sub: Submitter, args: argparse.Namespace, resolved: Resolved, depend: str) -> str | None:
    spec = resolved.spec
    write_resolved(resolved, "submission" if sub.pbs else "local run")
    print(f"train: {spec.run_dir}: {resolved.total_tokens:,} tokens -> {resolved.train_iters} iterations from step 0"
          f" on {args.nodes} node(s); arguments in {spec.layout.args_txt}", file=sys.stderr)
    return sub.submit(TRAIN_TEMPLATE, job_name("train", spec), run_vars(spec, args), depend=depend,
                      nodes=args.nodes, walltime=args.walltime)


def do_submit(args: argparse.Namespace, seeds: list[int]) -> int:
    checked = [check_run(args, seed, need_init=True) for seed in seeds]   # all checked before any submission
    sub = Submitter(args)
    for resolved in checked:
        job = record_and_submit_train(sub, args, resolved, args.depend)
        if job:
            print(job)
    return 0


def init_step_args(args: argparse.Namespace, seed: int) -> list[str]:
    step = ["--exp-dir", str(args.exp), "--task", args.task, "--param", param_value(args.param),
            "--size", args.size, "--seed", str(seed)]
    if args.base_ckpt:
        step += ["--base-ckpt", str(Path(args.base_ckpt).absolute())]
    if args.base_iter is not None:
        step += ["--base-iter", str(args.base_iter)]
    if args.force:
        step.append("--force")
    return step


def check_base(args: argparse.Namespace, seed: int, spec: RunSpec) -> str:
    """The start's source must be there now (pretrained) or be produced by a live job (earlier stage).

    Returns an afterok clause on the earlier stage's live train job, if any."""
    params = load_train_params(args.param)
    if params.start.kind == "pretrained":
        if not args.base_ckpt:
            if spec.layout.is_initialised():
                return ""
            fail(f"BASE_CKPT is not set: the pretrained checkpoints folder to start {spec.run_dir} from")
        resolve_base(args.base_ckpt, args.base_iter if args.base_iter is not None else params.start.iteration)
        return ""
    earlier = Path(args.base_ckpt) if args.base_ckpt else \
        run_dir(args.exp, params.start.run.task, params.start.run.param, params.start.run.size, seed)
    if args.scheduler == "pbs":
        live = live_job(args.exp, earlier)
        if live:
            print(f"chain: seed {seed} starts after {live[0]}, the earlier stage's live train job", file=sys.stderr)
            return afterok(live[0])
    if (earlier / "checkpoints" / TRACKER).is_file() or (earlier / TRACKER).is_file() or args.depend:
        return ""
    fail(f"{earlier}: the earlier stage has no checkpoint yet and no live train job; train it first, or pass "
         f"DEPEND=afterok:<its job ids> (BASE_CKPT=<dir> starts from elsewhere)")


def convert_argv(args: argparse.Namespace, seed: int, iteration: int, depend: str) -> list[str]:
    """scripts/convert.py submit's command line for one seed's final checkpoint (make convert's checks)."""
    return ["submit", "--exp-dir", str(args.exp), "--task", args.task, "--param", param_value(args.param),
            "--size", args.size, "--seed", str(seed), "--data-list", args.data_list,
            "--tokenizer-model", args.tokenizer_model, "--env-dir", args.env_dir, "--megatron-path", args.megatron_path,
            "--launcher", args.launcher, "--iter", str(iteration), *args.convert_opt,
            "--scheduler", args.scheduler, "--group", args.group, "--queue", args.queue, "--cpu-queue", args.cpu_queue,
            "--rtype", args.rtype, "--depend", depend, "--nodes", "1", "--parallel", str(args.parallel),
            "--walltime", args.convert_walltime, "--gpus-per-node", args.gpus_per_node,
            "--launcher-knob", args.launcher_knob or "auto", "--master-port", args.master_port]


def convert_problems(argv: list[str]) -> list[str]:
    """make convert's own checks of a conversion whose checkpoint a pending job will make."""
    from pipeline.convert_job import check_inputs
    _, problems = check_inputs(convert_request_from_argv(argv[1:]), pending=True)
    return problems


def run_capturing(cmd: list[str], pbs: bool, what: str) -> str | None:
    """Run a submitting command; under PBS its stdout is the job id (returned), locally the job's output."""
    result = subprocess.run(cmd, stdout=subprocess.PIPE if pbs else None, text=True)
    if result.returncode != 0:
        fail(f"{what} failed (exit {result.returncode})")
    lines = result.stdout.strip().splitlines() if pbs else []
    return lines[-1] if lines else None


def do_chain(args: argparse.Namespace, seeds: list[int]) -> int:
    from pipeline.soup import default_name, parse_ingredients

    sub = Submitter(args)
    user_depend = normalized_depend(args.depend)
    plans = []
    for seed in seeds:     # everything is checked before anything is submitted
        resolved = check_run(args, seed, need_init=False)
        earlier = check_base(args, seed, resolved.spec)
        problems = convert_problems(convert_argv(args, seed, resolved.train_iters, "afterok:0"))
        if problems:
            fail(f"make convert would refuse {resolved.spec.run_dir}:\n  - " + "\n  - ".join(problems))
        plans.append((resolved, earlier))
    final_iters = {r.train_iters for r, _ in plans}
    if len(final_iters) != 1:
        fail(f"the seeds' runs end at different iterations {sorted(final_iters)}; make soup-config per run instead")
    final = final_iters.pop()

    # the soup's config names the converted checkpoints the chain will produce (iter_<final>)
    specs = parse_ingredients(" ".join(map(str, seeds)), args.size, None)
    name = args.soup_name or default_name(args.task, param_name(args.param), specs)
    merge_dir = Path(args.merge_dir).absolute() if args.merge_dir else REPO_DIR / "merge"
    merge = merge_dir / f"{name}.yaml"
    scripts = REPO_DIR / "scripts"
    # soup_config.py validates what it writes; mergekit's own check runs in the soup job (loading mergekit
    # here would cost seconds for a config this chain generated itself)
    result = subprocess.run([sys.executable, str(scripts / "soup_config.py"), "--exp-dir", str(args.exp),
                             "--task", args.task, "--param", param_name(args.param), "--size", args.size,
                             "--seeds", " ".join(map(str, seeds)), "--iter", str(final), "--name", name,
                             "--merge-dir", str(merge_dir), "--allow-pending"], stdout=sys.stderr)
    if result.returncode != 0:
        fail(f"soup-config for {name} failed (exit {result.returncode})")

    converts = []
    for resolved, earlier in plans:
        spec = resolved.spec
        init_job = sub.submit(STEP_TEMPLATE, job_name("init", spec),
                              {"STEP": "init_run", "STEP_ARGS": shlex.join(init_step_args(args, spec.seed))},
                              depend=join_depend(user_depend, earlier), walltime=args.init_walltime,
                              queue=args.cpu_queue)
        if not sub.pbs and init_problems(spec.layout, spec):
            fail("\n".join(init_problems(spec.layout, spec)))
        train_job = record_and_submit_train(sub, args, resolved, afterok(init_job))
        convert_job = run_capturing([sys.executable, str(scripts / "convert.py"),
                                     *convert_argv(args, spec.seed, final, afterok(train_job))],
                                    sub.pbs, f"submitting the conversion of {spec.run_dir}")
        converts.append(convert_job)
        if sub.pbs:
            print(f"chain: seed {spec.seed}: init {init_job} -> train {train_job} -> convert {convert_job}",
                  file=sys.stderr)
    soup_vars = dict(v.split("=", 1) for v in args.soup_var if "=" in v and v.split("=", 1)[1])
    soup_job = sub.submit(PBS_DIR / "soup.pbs", f"soup-{name}"[:236], {"MERGE": str(merge), **soup_vars},
                          depend=afterok(*converts), walltime=args.soup_walltime, queue=args.cpu_queue)
    if soup_job:
        print(f"chain: soup {soup_job} after {', '.join(converts)}", file=sys.stderr)
        print(soup_job)
    return 0


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
    chain.add_argument("--init-walltime", default="0:30:00", help="init job walltime")
    chain.add_argument("--convert-walltime", default="04:00:00", help="convert job walltime (CONVERT_WALLTIME)")
    chain.add_argument("--soup-walltime", default="04:00:00", help="soup job walltime (SOUP_WALLTIME)")
    chain.add_argument("--cpu-queue", default="", help="CPU_QUEUE for the init and soup jobs (default: --queue)")
    chain.add_argument("--soup-name", default="", help="SOUP_NAME: merge/<name>.yaml (default TASK_PARAM_SIZE)")
    chain.add_argument("--merge-dir", default="", help="MERGE_DIR for the soup config (default: merge/)")
    chain.add_argument("--soup-var", action="append", default=[], metavar="NAME=VALUE",
                       help="extra variable for the soup job (VERIFY, CUDA, SHARD_SIZE); repeatable")
    # the Makefile's $(SCHEDULER_FLAGS), as scripts/submit.py takes them
    sched = parser.add_argument_group("scheduler (as scripts/submit.py)")
    sched.add_argument("--scheduler", choices=("local", "pbs"), default="local", help="SCHEDULER")
    sched.add_argument("--group", default="", help="PBS_GROUP")
    sched.add_argument("--queue", default="", help="PBS_QUEUE")
    sched.add_argument("--rtype", default="", help="PBS_RTYPE")
    sched.add_argument("--depend", default="", help="DEPEND: of the train job (submit, seeds) or of each "
                       "seed's first job (chain)")
    sched.add_argument("--nodes", type=int, default=1, help="NODES of the train job")
    sched.add_argument("--parallel", type=int, default=1, help="JOBS (local array parallelism)")
    args = parser.parse_args(argv)
    from pipeline.paths import exp_dir
    args.exp = exp_dir(args.exp_dir)
    args.exp_dir = str(args.exp)
    if args.nodes < 1:
        fail(f"NODES={args.nodes}: must be at least 1")
    if args.scheduler == "pbs" and args.action != "preflight":
        for knob, value in (("PBS_GROUP", args.group), ("PBS_QUEUE", args.queue)):
            if not value:
                fail(f"{knob} is not set: SCHEDULER=pbs needs it (on the command line or in local.mk)")
    if args.gpus_per_node and not re.fullmatch(r"[1-9][0-9]*", args.gpus_per_node):
        fail(f"GPUS_PER_NODE={args.gpus_per_node!r}: expected a positive whole number")
    # the launcher the arguments are resolved for now; the job resolves them again for what it finds
    if args.launcher_knob in ("mpi", "torchrun"):
        args.launcher = args.launcher_knob
    else:
        args.launcher = "mpi" if args.scheduler == "pbs" or shutil.which("mpirun") else "torchrun"
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
    if args.action == "chain":
        return do_chain(args, seeds)
    return do_submit(args, seeds)


if __name__ == "__main__":
    run_main(main)
