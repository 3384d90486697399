#!/usr/bin/env python3
"""Write a mergekit config (merge/<SOUP_NAME>.yaml) that averages the seed runs of one model.

Each SEEDS item is `SEED` (a run of --size), `SIZE:SEED` (the 13B recipe mixes 100B and 300B
runs) or either with `@ITER`; the ingredient is the run's converted checkpoint
`<EXP_DIR>/runs/<TASK>/<PARAM>/<SIZE>/seed<SEED>/checkpoints_hf/iter_NNNNNNN/`, at --iter or the
latest one present. Paths are written absolute (mergekit takes a relative one for a hub name).
The ingredients are checked now (present, one architecture, same shapes and tokenizer) unless
--allow-pending says they are still being produced by jobs this soup will depend on.

    soup_config.py --exp-dir exp --task v4-dolmino-mix-1124 --param 7.7b --size 50B \\
                   --seeds "42 666 42069" --config-dir merge
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import run_main
from pipeline.paths import MERGE_DIR, exp_dir
from pipeline.soup import DTYPES, parse_iteration, write_soup_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", default=None, help="EXP_DIR holding runs/ and soups/ (default: $EXP_DIR)")
    parser.add_argument("--task", required=True, help="TASK of the runs")
    parser.add_argument("--param", required=True, help="PARAM (model configuration) of the runs")
    parser.add_argument("--size", required=True, help="SIZE of the runs whose SEEDS item has no SIZE: prefix")
    parser.add_argument("--seeds", required=True,
                        help="space-separated ingredients: SEED, SIZE:SEED, either with @ITER")
    parser.add_argument("--iter", default="", help="checkpoint iteration of every ingredient (default: the latest)")
    parser.add_argument("--name", default="", help="SOUP_NAME: <config-dir>/<name>.yaml, soups/<name>/ "
                        "(default TASK_PARAM_SIZES)")
    parser.add_argument("--config-dir", type=Path, default=MERGE_DIR, help="SOUP_CONFIG_DIR: the folder the config is "
                        "written to")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the merge and its output")
    parser.add_argument("--allow-pending", action="store_true",
                        help="the runs are still in progress (a DEPEND chain): write the paths for --iter "
                             "without checking them; `make soup` checks them when its job starts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, paths = write_soup_config(exp_dir(args.exp_dir), task=args.task, param=args.param, size=args.size,
                                 seeds=args.seeds, iteration=parse_iteration(args.iter, "ITER"), name=args.name,
                                 config_dir=args.config_dir, dtype=args.dtype, allow_pending=args.allow_pending)
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
