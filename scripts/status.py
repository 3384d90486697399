#!/usr/bin/env python3
"""Where the pipeline stands: tables of the data stages, the submitted jobs, the training runs and soups.

What each table says, and where its states come from: pipeline/status_tables.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import run_main
from pipeline.scheduler import SCHEDULERS
from pipeline.status_tables import print_status


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp-dir", required=True, type=Path, help="EXP_DIR")
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. dolmino-mix-1124")
    parser.add_argument("--tokenizer-name", required=True, help="TOKENIZER_NAME of the tokenized tree")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="local",
                        help="with pbs, job states come from qstat; with slurm from squeue (then sacct)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print_status(args.exp_dir.resolve(), args.dataset, args.tokenizer_name, args.scheduler)


if __name__ == "__main__":
    run_main(main)
