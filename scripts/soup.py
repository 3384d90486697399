#!/usr/bin/env python3
"""Merge the models of a mergekit config into EXP_DIR/soups/<name>/ and verify the result.

Before any work: the config parses and mergekit accepts it, every path is absolute, every
ingredient is there with config.json and safetensors, and all share one architecture, the same
tensor shapes and the same tokenizer, which encodes as the runs' training tokenizer (TOKENIZER_MODEL, or
the one their runs record; pipeline/tokenizer_check.py). Then mergekit runs (lazy loading, sharded safetensors,
tokenizer copied) into a temporary folder; the result is verified (config, tokenizer files, every
tensor against the weighted mean of the ingredients for `linear`: bit-exact for float32, within
bf16/fp16 rounding otherwise) and only then renamed into place with soup.json (provenance and
verification, the tokenizer check of the result). A re-run with the same config and ingredients does nothing.

    soup.py --config merge/7.7b_50B.yaml --exp-dir exp [--verify sample] [--cuda 1] [--check-only]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.errors import run_main
from pipeline.paths import exp_dir, soup_dir
from pipeline.soup import (VERIFY_MODES, check_name, check_plan, check_with_mergekit, load_merge_config, make_soup,
                           parse_shard_size)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="mergekit config (merge/<name>.yaml)")
    parser.add_argument("--exp-dir", default=None, help="EXP_DIR; the soup goes to EXP_DIR/soups/<name>/")
    parser.add_argument("--name", default="", help="soup name (default: the config file's name without .yaml)")
    parser.add_argument("--verify", choices=VERIFY_MODES, default="full",
                        help="full: every tensor; sample: non-layer tensors plus first, middle, last layer")
    parser.add_argument("--cuda", choices=("0", "1"), default="0", help="1: mergekit computes on the GPU")
    parser.add_argument("--shard-size", default="5B", help="parameters per output shard (mergekit's 5B, 500M, ...)")
    parser.add_argument("--tokenizer-model", default="",
                        help="TOKENIZER_MODEL: the SentencePiece model the runs were trained with (default: the one "
                             "their train_args.json or conversion records name); the ingredients' tokenizer must "
                             "encode as it")
    parser.add_argument("--check-only", action="store_true",
                        help="check the config and the ingredients, merge nothing (run before a job is submitted)")
    parser.add_argument("--pending", action="store_true",
                        help="with --check-only: the ingredients are still being made by jobs this one depends "
                             "on; check the config alone")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = args.config.resolve()
    plan = load_merge_config(config)
    name = check_name(args.name or config.name.removesuffix(".yaml").removesuffix(".yml"))
    out = soup_dir(exp_dir(args.exp_dir), name)
    shard_size = parse_shard_size(args.shard_size)
    if args.check_only:
        if args.pending:
            check_with_mergekit(plan)
            print(f"soup: {config} ok: {plan.method} of {len(plan.model_paths())} models (pending) -> {out}")
        else:
            checkpoints = check_plan(plan, tokenizer_model=args.tokenizer_model or None)
            print(f"soup: {config} ok: {plan.method} of {len(checkpoints)} models -> {out}")
        return 0
    record = make_soup(plan, out, verify=args.verify, cuda=args.cuda == "1", shard_size=shard_size,
                       tokenizer_model=args.tokenizer_model or None)
    if record is None:
        print(f"soup: {out} is up to date (same config and ingredients)")
        return 0
    check = record["verification"]
    print(f"soup: {out} verified: {check['tensors_checked']}/{check['tensors']} tensors, "
          f"{check['shards']} shard(s), values: {check['values']}, max |error| {check['max_abs_error']:.3g} "
          f"({check['exact_float32_tensors']} bit-exact float32), tokenizer: {', '.join(check['tokenizer_files'])}")
    return 0


if __name__ == "__main__":
    run_main(main)
