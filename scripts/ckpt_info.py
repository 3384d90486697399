#!/usr/bin/env python3
"""Describe a Megatron-LM checkpoint on the CPU, without Megatron (make ckpt-info CKPT=...).

What it reads and shows: pipeline/ckpt_describe.py.

    ckpt_info.py --ckpt exp/runs/<TASK>/<PARAM>/<SIZE>/seed42/checkpoints     # the tracker's iteration
    ckpt_info.py --ckpt .../checkpoints/iter_0001000 --json
"""
from __future__ import annotations

import argparse
import json

from pipeline.ckpt_describe import checkpoints_folder, describe, render
from pipeline.errors import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="CKPT: a checkpoints folder (its tracker decides), an "
                        "iter_NNNNNNN folder, or a run folder (its checkpoints/, else its start/)")
    parser.add_argument("--iteration", type=int, default=None, help="iteration to read inside a checkpoints folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = describe(checkpoints_folder(args.ckpt), args.iteration)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else render(info))
    return 0


if __name__ == "__main__":
    run_main(main)
