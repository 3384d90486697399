"""The checks a training run passes before any job of it is submitted (make train, train-seeds, chain).

Each data prefix of the mixture list has .bin and .idx (valid header) under EXP_DIR, the tokenizer model
and Megatron's pretrain_gpt.py exist, the global batch splits over NODES x GPUs, the run is initialised
(make init; in a chain its init job comes first), and no live job of the same run is queued, running
or held under PBS or Slurm (FORCE=1 overrides). Every problem is listed at once.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import PipelineError, fail
from pipeline.job_states import job_states
from pipeline.megatron_args import Resolved, RunSpec, resolve
from pipeline.megatron_ckpt import TRACKER, completeness_problems, read_tracker
from pipeline.midtrain import RunLayout, resolve_base
from pipeline.params import load_train_params
from pipeline.paths import PBS_DIR, jobs_file, run_dir
from pipeline.run_options import spec_from_args
from pipeline.scheduler import afterok

TRAIN_TEMPLATE = PBS_DIR / "train.pbs"
MAX_LISTED = 10


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


def train_jobs(exp: Path, run: Path, scheduler: str) -> list[str]:
    """The ids of every train job submitted to `scheduler` for `run`, newest first, from EXP_DIR/jobs.jsonl."""
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
        if entry.get("scheduler") == scheduler and Path(entry.get("template", "")).name == TRAIN_TEMPLATE.name \
                and (entry.get("variables") or {}).get("RUN_DIR") == str(run) and entry.get("job_id"):
            found.append(entry["job_id"])
    return list(dict.fromkeys(reversed(found)))


def live_job(exp: Path, run: Path, scheduler: str) -> tuple[str, str] | None:
    """(id, state) of the newest live train job of `run`: every job of the run is asked about, since an
    older one may still run after a later, forced one has finished."""
    job_ids = train_jobs(exp, run, scheduler)
    states = job_states(scheduler, job_ids, f"check for a live train job of {run} (FORCE=1 skips the check)")
    for job_id in job_ids:
        if job_id in states and states[job_id].live:
            return job_id, states[job_id].text
    return None


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
    if args.scheduler != "local" and not args.force:
        live = live_job(spec.exp, spec.run_dir, args.scheduler)
        if live:
            problems.append(f"{spec.run_dir}: job {live[0]} of this run is still live (state {live[1]}); a second "
                            f"one would train the same folder at once. FORCE=1 submits anyway")
    if problems:
        fail(f"preflight for {spec.run_dir} failed:\n  - " + "\n  - ".join(problems))
    return resolved


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
    if args.scheduler != "local":
        live = live_job(args.exp, earlier, args.scheduler)
        if live:
            print(f"chain: seed {seed} starts after {live[0]}, the earlier stage's live train job", file=sys.stderr)
            return afterok(live[0])
    if (earlier / "checkpoints" / TRACKER).is_file() or (earlier / TRACKER).is_file() or args.depend:
        return ""
    fail(f"{earlier}: the earlier stage has no checkpoint yet and no live train job; train it first, or pass "
         f"DEPEND=afterok:<its job ids> (BASE_CKPT=<dir> starts from elsewhere)")
