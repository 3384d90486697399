#!/usr/bin/env python3
"""Compare a dataset's pinned hub revision with the newest one: files the pin lacks, and the
description's `expect` checked on both listings (make check-revision DATASET=...). Exits 1 when the
pinned revision is incomplete. Only the listings are read; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os

from pipeline.datasets import load_dataset
from pipeline.errors import run_main
from pipeline.hub import compare_revisions


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="dataset description name (tasks/datasets/<name>.yaml)")
    parser.add_argument("--newest", default="main", help="the revision to compare with (default: main)")
    parser.add_argument("--endpoint", default="", help="hub endpoint (default: $HF_ENDPOINT or https://huggingface.co)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    problems = compare_revisions(load_dataset(args.dataset), args.endpoint or os.environ.get("HF_ENDPOINT") or None,
                                 args.newest)
    return 1 if problems else 0


if __name__ == "__main__":
    run_main(main)
