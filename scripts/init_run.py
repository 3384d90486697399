#!/usr/bin/env python3
"""Prepare a run folder's start checkpoint from a pretrained (or earlier-stage) checkpoint (make init).

Builds `<run>/start/iter_<N>/`: the source's shard files symlinked (nothing copied), plus a legacy
common.pt with iteration, consumed samples and scheduler step set to 0 (weights and Adam moments kept),
the tracker and init.json (provenance). The run then trains from step 0 over exactly its mixture
(why: scripts/pipeline/midtrain.py). The source checkpoint is never modified. Re-running with the same
source does nothing; another source needs --force.

    init_run.py --exp-dir exp --task v4-dolmino-mix-1124 --param 7.7b_v4_3.5t_tokenizer_v3.1 --size 50B \\
                --seed 42 --base-ckpt /path/to/pretrain/checkpoints          # iteration: params' start (432581)
    init_run.py ... --param 7.7b_v4_3.5t_tokenizer_v3.1_curriculum --task v4-megamath-pro-max --size 80B
                # no --base-ckpt: the final checkpoint of the earlier stage's run of the same seed
    init_run.py ... --param tiny --base-ckpt scratch     # random weights: pretrain a base with the same targets
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import fail, run_main
from pipeline.midtrain import SCRATCH, RunLayout, init_run, init_scratch
from pipeline.params import load_train_params, param_name
from pipeline.paths import exp_dir, run_dir


def base_for(exp: Path, param_name: str, seed: int, base_ckpt: str, base_iter: int | None) -> tuple[Path, int | None, bool]:
    """(source, iteration, source is an earlier run) from --base-ckpt/--base-iter and the params' start."""
    params = load_train_params(param_name)
    start = params.start
    if start.kind == "run":
        source = Path(base_ckpt) if base_ckpt else run_dir(exp, start.run.task, start.run.param, start.run.size, seed)
        return source, base_iter, True
    if not base_ckpt:
        fail(f"BASE_CKPT is not set: the pretrained checkpoints folder to start from ({params.path} starts from "
             f"the pretrained model{f', iteration {start.iteration}' if start.iteration else ''})")
    return Path(base_ckpt), base_iter if base_iter is not None else start.iteration, False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", default=None, help="EXP_DIR (runs/ lives here)")
    parser.add_argument("--task", required=True, help="TASK of the run")
    parser.add_argument("--param", required=True, help="PARAM of the run (params/<PARAM>.yaml or a path)")
    parser.add_argument("--size", required=True, help="SIZE of the run")
    parser.add_argument("--seed", type=int, required=True, help="SEED of the run")
    parser.add_argument("--base-ckpt", default="", help="BASE_CKPT: a checkpoints folder, an iter_NNNNNNN folder, "
                        "an earlier run's folder (default: the params' earlier stage run, same seed), or 'scratch' "
                        "(random weights: a base model trained by the pipeline itself)")
    parser.add_argument("--base-iter", type=int, default=None, help="BASE_ITER: the iteration to start from "
                        "(default: the params' start iteration, else the source's tracker)")
    parser.add_argument("--force", action="store_true", help="FORCE=1: replace an existing start")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exp = exp_dir(args.exp_dir)
    run = run_dir(exp, args.task, param_name(args.param), args.size, args.seed)
    layout = RunLayout(run)
    if args.base_ckpt == SCRATCH:
        status, _ = init_scratch(run, force=args.force)
        print(f"init: {layout.start} {'already ' if status == 'unchanged' else ''}set to start from random weights"
              + (" (replaced the earlier start)" if status == "replaced" else ""))
        return 0
    if not args.base_ckpt and layout.is_initialised() and load_train_params(args.param).start.kind == "pretrained":
        source = (layout.init_info() or {}).get("source") or {}
        print(f"init: {layout.start} already initialised from {source.get('iter_dir')} "
              f"(iteration {source.get('iteration')}); BASE_CKPT=<dir> FORCE=1 starts it from elsewhere")
        return 0
    source, iteration, from_run = base_for(exp, args.param, args.seed, args.base_ckpt, args.base_iter)
    status, record = init_run(run, source, iteration, force=args.force, from_run=from_run)
    src = record["source"]
    if status == "unchanged":
        print(f"init: {layout.start} already initialised from {src['iter_dir']} (iteration {src['iteration']})")
        return 0
    print(f"init: {layout.start} {status} from {src['iter_dir']} (iteration {src['iteration']}, {src['format']}): "
          f"{len(record['linked_files'])} shard files linked, common.pt rewritten "
          f"({'; '.join(record['changes']) or 'counters were already 0'})")
    return 0


if __name__ == "__main__":
    run_main(main)
