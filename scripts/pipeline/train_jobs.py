"""Submitting training runs: one run (make train), one per seed (make train-seeds), or whole chains
init -> train -> convert per seed plus one soup (make chain), chained with afterok.

Every job goes through the job layer (pipeline/scheduler.py), so SCHEDULER=local runs the same templates
here, in order. Every run passes pipeline/preflight.py's checks, and a chain's conversions make convert's
own, before anything is submitted.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import fail
from pipeline.megatron_args import Resolved, RunSpec
from pipeline.params import param_name
from pipeline.paths import MERGE_DIR, PBS_DIR
from pipeline.preflight import TRAIN_TEMPLATE, check_base, check_run, init_problems
from pipeline.run_options import convert_job_options, write_resolved
from pipeline.scheduler import afterok, join_depend, make_job, normalize_depend, scheduler_options, submit

STEP_TEMPLATE = PBS_DIR / "run_step.pbs"
NAME_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")


def job_name(kind: str, spec: RunSpec) -> str:
    name = NAME_CHARS.sub("_", f"{kind}-{spec.task}-{param_name(spec.param)}-{spec.size}-seed{spec.seed}")
    return name[:236]


@dataclass
class Submitter:
    opts: argparse.Namespace

    @property
    def queued(self) -> bool:
        """Jobs go to PBS or Slurm and have ids; locally each has run by the time submit returns."""
        return self.opts.scheduler != "local"

    def submit(self, template: Path, name: str, variables: dict[str, str], *, depend: str = "", nodes: int = 1,
               walltime: str = "", queue: str = "") -> str | None:
        """Submit through the job layer; returns the job id (None locally, where it has run by now)."""
        job = make_job(template, name, variables, self.opts.exp, depend=depend, nodes=nodes, walltime=walltime)
        status, job_id = submit(job, scheduler_options(self.opts, queue=queue), self.opts.exp)
        if status != 0:
            fail(f"{template.name} job {name} failed (exit {status})")
        return job_id


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


def record_and_submit_train(sub: Submitter, args: argparse.Namespace, resolved: Resolved, depend: str) -> str | None:
    spec = resolved.spec
    write_resolved(resolved, "submission" if sub.queued else "local run")
    print(f"train: {spec.run_dir}: {resolved.total_tokens:,} tokens -> {resolved.train_iters} iterations from step 0"
          f" on {args.nodes} node(s); arguments in {spec.layout.args_txt}", file=sys.stderr)
    return sub.submit(TRAIN_TEMPLATE, job_name("train", spec), run_vars(spec, args), depend=depend,
                      nodes=args.nodes, walltime=args.walltime)


def submit_runs(args: argparse.Namespace, seeds: list[int]) -> list[str]:
    """make train / train-seeds: every run checked, then one train job each; their ids under PBS."""
    checked = [check_run(args, seed, need_init=True) for seed in seeds]
    sub = Submitter(args)
    return [job for job in (record_and_submit_train(sub, args, resolved, args.depend) for resolved in checked) if job]


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


def convert_options(args: argparse.Namespace, seed: int, iteration: int, depend: str) -> argparse.Namespace:
    """make convert's options for one seed's final checkpoint, with the chain's --convert-opt ones."""
    return convert_job_options([
        "--exp-dir", str(args.exp), "--task", args.task, "--param", param_value(args.param),
        "--size", args.size, "--seed", str(seed), "--data-list", args.data_list,
        "--tokenizer-model", args.tokenizer_model, "--env-dir", args.env_dir, "--megatron-path", args.megatron_path,
        "--train-python", args.train_python, "--launcher", args.launcher, "--iter", str(iteration),
        *args.convert_opt, "--scheduler", args.scheduler, "--group", args.group, "--queue", args.queue,
        "--cpu-queue", args.cpu_queue, "--rtype", args.rtype, "--account", args.account,
        "--partition", args.partition, "--slurm-gpus-per-node", args.slurm_gpus_per_node, "--depend", depend,
        "--nodes", "1",
        "--parallel", str(args.parallel), "--walltime", args.convert_walltime, "--gpus-per-node", args.gpus_per_node,
        "--launcher-knob", args.launcher_knob or "auto", "--master-port", args.master_port])


def chain(args: argparse.Namespace, seeds: list[int]) -> str | None:
    """make chain: init -> train -> convert per seed, then the soup of them all; the soup job's id under PBS."""
    from pipeline.convert_job import check_inputs
    from pipeline.convert_submit import submit_conversion
    from pipeline.run_options import request
    from pipeline.soup import default_name, parse_ingredients, write_soup_config

    sub = Submitter(args)
    user_depend = normalize_depend(args.depend) or ""
    plans = []
    for seed in seeds:     # everything is checked before anything is submitted
        resolved = check_run(args, seed, need_init=False)
        earlier = check_base(args, seed, resolved.spec)
        _, problems = check_inputs(request(convert_options(args, seed, resolved.train_iters, "afterok:0")),
                                   pending=True)
        if problems:
            fail(f"make convert would refuse {resolved.spec.run_dir}:\n  - " + "\n  - ".join(problems))
        plans.append((resolved, earlier))
    final_iters = {r.train_iters for r, _ in plans}
    if len(final_iters) != 1:
        fail(f"the seeds' runs end at different iterations {sorted(final_iters)}; make soup-config per run instead")
    final = final_iters.pop()

    # the soup's config names the converted checkpoints the chain will produce (iter_<final>); mergekit's own
    # check of it runs in the soup job (loading mergekit here would cost seconds for a config written here)
    seed_list = " ".join(map(str, seeds))
    name = args.soup_name or default_name(args.task, param_name(args.param), parse_ingredients(seed_list, args.size))
    config_dir = Path(args.soup_config_dir).absolute() if args.soup_config_dir else MERGE_DIR
    with contextlib.redirect_stdout(sys.stderr):   # stdout carries only job ids
        config, _ = write_soup_config(args.exp, task=args.task, param=param_name(args.param), size=args.size,
                                      seeds=seed_list, iteration=final, name=name, config_dir=config_dir,
                                      dtype="bfloat16", allow_pending=True)

    converts = []
    for resolved, earlier in plans:
        spec = resolved.spec
        init_job = sub.submit(STEP_TEMPLATE, job_name("init", spec),
                              {"STEP": "init_run", "STEP_ARGS": shlex.join(init_step_args(args, spec.seed))},
                              depend=join_depend(user_depend, earlier), walltime=args.init_walltime,
                              queue=args.cpu_queue)
        if not sub.queued and init_problems(spec.layout, spec):
            fail("\n".join(init_problems(spec.layout, spec)))
        train_job = record_and_submit_train(sub, args, resolved, afterok(init_job))
        convert_job = submit_conversion(convert_options(args, spec.seed, final, afterok(train_job)))
        converts.append(convert_job)
        if sub.queued:
            print(f"chain: seed {spec.seed}: init {init_job} -> train {train_job} -> convert {convert_job}",
                  file=sys.stderr)
    soup_vars = dict(v.split("=", 1) for v in args.soup_var if "=" in v and v.split("=", 1)[1])
    if args.tokenizer_model:   # the runs' training tokenizer, which the soup's tokenizer check compares with
        soup_vars["TOKENIZER_MODEL"] = str(Path(args.tokenizer_model).absolute())
    soup_job = sub.submit(PBS_DIR / "soup.pbs", f"soup-{name}"[:236], {"SOUP_CONFIG": str(config), **soup_vars},
                          depend=afterok(*converts), walltime=args.soup_walltime, queue=args.cpu_queue)
    if soup_job:
        print(f"chain: soup {soup_job} after {', '.join(converts)}", file=sys.stderr)
    return soup_job
