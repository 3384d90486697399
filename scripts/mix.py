#!/usr/bin/env python3
"""Build the mixture list of one size of a task from its all-files list, plus a report.

Writes, into the task folder (or --out-dir): `train_data_<SIZE>.sh` (the `--data-path` list, files
of weight 0 left out), `train_data_<SIZE>.md` (a table per source and the derived training
iterations), `train_data_<SIZE>.png` (bar chart of the mix) and `train_data_<SIZE>.json` (the same
numbers, machine-readable). Re-running leaves unchanged outputs untouched.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import run_main
from pipeline.mixture import all_lists, load_task, resolve
from pipeline.mixture_report import write_mix
from pipeline.params import batch_shape
from pipeline.paths import TASKS_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="task name: its config is <tasks-dir>/<task>/mixture.yaml")
    parser.add_argument("--size", required=True, help="a size defined in the task's mixture.yaml (e.g. 50B)")
    parser.add_argument("--param", default=None,
                        help="params name (params/<PARAM>.yaml) or a path to a params YAML; gives "
                             "seq_length and global_batch_size for the iterations")
    parser.add_argument("--seq-length", type=int, default=None, help="override the params' seq_length")
    parser.add_argument("--global-batch-size", type=int, default=None,
                        help="override the params' global_batch_size")
    parser.add_argument("--all-list", action="append", default=[], metavar="[TASK=]PATH",
                        help="all-files list to read instead of <out-dir>/train_data.all.sh; TASK=PATH "
                             "names the list of another task of a union (repeatable)")
    parser.add_argument("--tasks-dir", type=Path, default=TASKS_DIR, help="folder of the task configs")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the list and report go (default: <tasks-dir>/<task>)")
    parser.add_argument("--quiet", action="store_true", help="print the one-line summary, not the report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_task(args.task, args.tasks_dir)
    config.size(args.size)   # unknown size: fail before anything else, listing the known ones
    out_dir = args.out_dir or args.tasks_dir / args.task
    seq, batch, param = batch_shape(args.param, args.seq_length, args.global_batch_size)
    mix = resolve(config, args.size, all_lists(args.all_list, args.task, out_dir), args.tasks_dir)
    stem = f"train_data_{args.size}"
    report, record, wrote = write_mix(mix, config, out_dir, stem, seq, batch, param)
    if not args.quiet:
        print(report)
    state = f"wrote {', '.join(wrote)}" if wrote else "unchanged"
    print(f"mix {args.task} {args.size}: {mix.total:,} tokens in {len(mix.entries())} files, "
          f"{record['iterations']:,} iteration{'s' * (record['iterations'] != 1)} -> {out_dir / (stem + '.sh')} "
          f"({state})")


if __name__ == "__main__":
    run_main(main)
