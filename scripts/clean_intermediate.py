#!/usr/bin/env python3
"""Remove a dataset's extracted and merged trees once every tokenized output made from them is complete.

The sentinels stay, so make extract/merge/tokenize/count/mix still consider everything up to date.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cleanup import run_clean
from pipeline.errors import run_main
from pipeline.paths import exp_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp-dir", type=Path, default=None, help="EXP_DIR (default: $EXP_DIR or ./exp)")
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. dolmino-mix-1124")
    parser.add_argument("--tokenizer-name", required=True,
                        help="TOKENIZER_NAME whose tokenized outputs must all be complete")
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_clean(exp_dir(args.exp_dir), args.dataset, args.tokenizer_name, dry_run=args.dry_run)


if __name__ == "__main__":
    run_main(main)
