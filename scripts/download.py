#!/usr/bin/env python3
"""Download a dataset's described files from the Hugging Face hub into EXP_DIR/<dataset>.

Uses huggingface_hub.snapshot_download (pinned revision, exactly the files the description selects,
narrowed by --include); honours HF_ENDPOINT (mirrors) and HF_TOKEN. Re-runs skip complete files;
afterwards every file is checked against the hub listing (size; hash with --verify) and a manifest
plus the stage sentinel are written. A listing without everything the description expects (a
revision pinned mid-upload) is refused unless --allow-partial.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.datasets import load_dataset
from pipeline.errors import fail, run_main
from pipeline.hub import run_download
from pipeline.paths import exp_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp-dir", type=Path, default=None, help="EXP_DIR (default: $EXP_DIR or ./exp)")
    parser.add_argument("--dataset", required=True, help="dataset description name (tasks/datasets/<name>.yaml)")
    parser.add_argument("--include", default="",
                        help="only files matching these patterns (comma/space separated, e.g. 'data/math/**')")
    parser.add_argument("--verify", type=int, choices=(0, 1), default=0,
                        help="1: also check every file's hash (sha256 / git blob sha1), not only its size")
    parser.add_argument("--workers", type=int, default=8, help="parallel file transfers (max_workers)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="go on (with a warning) when the pinned revision lacks part of what the description "
                             "expects")
    parser.add_argument("--endpoint", default="",
                        help="hub endpoint (default: $HF_ENDPOINT or https://huggingface.co)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.workers < 1:
        fail("--workers must be at least 1")
    dataset = load_dataset(args.dataset)
    run_download(exp_dir(args.exp_dir), dataset, include=args.include, hashes=bool(args.verify),
                 workers=args.workers, endpoint=args.endpoint or os.environ.get("HF_ENDPOINT") or None,
                 allow_partial=args.allow_partial)


if __name__ == "__main__":
    run_main(main)
