#!/usr/bin/env python3
"""Merge a dataset's extracted JSONL files into grouped outputs in EXP_DIR/<dataset>-extracted-merged.

Groups and names come from the dataset description (dclm/dclm-0000-0009.jsonl, flan/flan-all.jsonl,
math/<subset>-all.jsonl, ...). Inputs are concatenated in sorted order, every line newline-terminated,
blank lines dropped and counted; --validate checks each line is JSON with a string `text`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.datasets import load_dataset
from pipeline.errors import run_main
from pipeline.extraction import parse_jobs
from pipeline.merging import ON_BAD_LINE, run_merge
from pipeline.paths import exp_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp-dir", type=Path, default=None, help="EXP_DIR (default: $EXP_DIR or ./exp)")
    parser.add_argument("--dataset", required=True, help="dataset description name (tasks/datasets/<name>.yaml)")
    parser.add_argument("--jobs", default="1",
                        help="outputs merged in parallel: worker processes, or 'auto' = the cores this job may use")
    parser.add_argument("--validate", type=int, choices=(0, 1), default=0,
                        help="1: parse every line as JSON and require a string 'text' (slower)")
    parser.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="fail",
                        help="with --validate 1: fail at the first bad line (file:line), or skip and count it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_merge(exp_dir(args.exp_dir), load_dataset(args.dataset), jobs=parse_jobs(args.jobs),
              validate=bool(args.validate), on_bad_line=args.on_bad_line, show_progress=not args.no_progress)


if __name__ == "__main__":
    run_main(main)
