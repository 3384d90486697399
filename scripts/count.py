#!/usr/bin/env python3
"""Exact token counts of a task's tokenized files, read from the .idx headers and lengths (never the .bin).

Writes `train_data.all.sh` (`export TRAIN_DATA_PATH=(`, one `    <tokens> <prefix>` line per file,
sorted, `)`) and `train_data.all.tsv` (tokens, documents, sequences, dtype, source) into the task
folder. Checks: the tokenize stage is complete, every merged output listed by merge has its .idx,
every .idx its .bin of the right size, every file exactly one source, every source a file.
Re-running leaves unchanged outputs untouched.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.datalist import Entry, render_list
from pipeline.errors import run_main
from pipeline.atomic import write_if_changed
from pipeline.counting import TABLE_NAME, count_task, render_table
from pipeline.mixture import ALL_LIST_NAME, load_task
from pipeline.paths import TASKS_DIR, exp_dir
from pipeline.progress import progress


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="task name: its config is <tasks-dir>/<task>/mixture.yaml")
    parser.add_argument("--exp-dir", type=Path, default=None,
                        help="experiment folder holding <dataset>-<tokenizer>-tokenized/ (default: $EXP_DIR or ./exp)")
    parser.add_argument("--tokenizer-name", required=True,
                        help="tokenizer name used in the tokenized folder names (TOKENIZER_NAME)")
    parser.add_argument("--tasks-dir", type=Path, default=TASKS_DIR, help="folder of the task configs")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the list and table go (default: <tasks-dir>/<task>)")
    parser.add_argument("--quiet", action="store_true", help="print only the one-line summary")
    return parser.parse_args(argv)


def source_summary(rows) -> list[str]:
    by_source: dict[str, list[int]] = {}
    for r in rows:
        acc = by_source.setdefault(r.source, [0, 0, 0])
        acc[0] += 1
        acc[1] += r.tokens
        acc[2] += r.documents
    lines = [f"{'source':<16} {'files':>6} {'tokens':>20} {'documents':>14}"]
    for source, (files, tokens, docs) in by_source.items():
        lines.append(f"{source:<16} {files:>6} {tokens:>20,} {docs:>14,}")
    totals = [sum(v[i] for v in by_source.values()) for i in range(3)]
    lines.append(f"{'total':<16} {totals[0]:>6} {totals[1]:>20,} {totals[2]:>14,}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exp = exp_dir(args.exp_dir)
    config = load_task(args.task, args.tasks_dir)
    out_dir = args.out_dir or args.tasks_dir / args.task
    start = time.perf_counter()
    with progress(desc=f"count {args.task}", unit="file", enabled=not args.quiet) as bar:
        rows = count_task(config, exp, args.tokenizer_name, bar)
    seconds = time.perf_counter() - start
    wrote = []
    if write_if_changed(out_dir / ALL_LIST_NAME, render_list([Entry(r.tokens, r.prefix) for r in rows])):
        wrote.append(ALL_LIST_NAME)
    if write_if_changed(out_dir / TABLE_NAME, render_table(rows)):
        wrote.append(TABLE_NAME)
    if not args.quiet:
        print("\n".join(source_summary(rows)))
    total = sum(r.tokens for r in rows)
    state = f"wrote {', '.join(wrote)}" if wrote else "unchanged"
    print(f"count {args.task}: {len(rows)} files, {total:,} tokens in {seconds:.2f}s -> "
          f"{out_dir / ALL_LIST_NAME} ({state})")


if __name__ == "__main__":
    run_main(main)
