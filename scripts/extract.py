#!/usr/bin/env python3
"""Extract a dataset's raw files (.zst, .gz, plain .jsonl, parquet) into EXP_DIR/<dataset>-extracted.

Never uses the network: the raw tree (downloaded, or copied in by any other means) is used as it is.
One call handles one chunk of the files (a PBS array index) with a pool of worker processes;
re-runs skip files already done and redo files whose source changed.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.datasets import load_dataset
from pipeline.errors import fail, run_main
from pipeline.extraction import parse_jobs, run_extract
from pipeline.paths import exp_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp-dir", type=Path, default=None, help="EXP_DIR (default: $EXP_DIR or ./exp)")
    parser.add_argument("--dataset", required=True, help="dataset description name (tasks/datasets/<name>.yaml)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="which chunk of the files to extract, 0-based (default: $PBS_ARRAY_INDEX or 0)")
    parser.add_argument("--chunks", type=int, default=1, help="number of chunks the files are split into")
    parser.add_argument("--jobs", default="auto",
                        help="worker processes (a number, or 'auto' = the cores this job may use)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="go on (with a warning) when the raw tree lacks part of what the description expects")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    chunk = args.chunk if args.chunk is not None else int(os.environ.get("PBS_ARRAY_INDEX") or 0)
    if args.chunks < 1:
        fail(f"--chunks {args.chunks}: must be at least 1")
    run_extract(exp_dir(args.exp_dir), load_dataset(args.dataset), chunk=chunk, chunks=args.chunks,
                jobs=parse_jobs(args.jobs), show_progress=not args.no_progress, allow_partial=args.allow_partial)


if __name__ == "__main__":
    run_main(main)
