#!/usr/bin/env python3
"""Training report: a run's Megatron logs (all its jobs) -> metrics CSV, PNG plots and a summary.

    report.py --exp-dir EXP --task T --param P --size S --seeds 42 666     # runs under EXP/runs
    report.py --exp-dir EXP --run-dir EXP/runs/T/P/S/seed42                # or named folders

One run writes into <run>/report/; several runs (the seeds) share plots in EXP/reports/<name>/.
Outputs: metrics.csv (one row per logged iteration, after restarts are resolved), loss.png (lm loss
against tokens), lr.png, throughput.png, grad_norm.png, overview.png (the four together),
summary.txt / summary.json, provenance.json. Re-running with unchanged logs does nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import fail, run_main
from pipeline.run_report import make_report, runs_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", required=True, type=Path, help="EXP_DIR (runs/ and reports/ are below it)")
    parser.add_argument("--run-dir", nargs="+", type=Path, default=[],
                        help="run folder(s) to report on; instead of --task/--param/--size/--seeds")
    parser.add_argument("--task", help="TASK of the run(s)")
    parser.add_argument("--param", help="PARAM of the run(s); its seq_length is used when the logs have no "
                                        "argument dump")
    parser.add_argument("--size", help="SIZE of the run(s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[], help="SEED(s); several give one plot per metric "
                                                                         "with a line per seed")
    parser.add_argument("--seq-length", type=int, help="tokens per sample (overrides the logs and PARAM)")
    parser.add_argument("--name", help="report folder name under EXP_DIR/reports (default: derived from the runs)")
    parser.add_argument("--output", type=Path, help="write the report here instead")
    parser.add_argument("--log-glob", default="train-*.out", help="training logs inside a run folder")
    parser.add_argument("--force", action="store_true", help="rewrite even when the logs have not changed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exp = args.exp_dir.resolve()
    if args.seq_length is not None and args.seq_length <= 0:
        fail(f"--seq-length {args.seq_length}: must be positive")
    wanted = runs_from_args(exp, args.run_dir, args.task, args.param, args.size, args.seeds)
    out, text, written = make_report(exp, wanted, args.seq_length, args.name, args.output, args.log_glob, args.force)
    sys.stdout.write(text)
    print(f"report: {out}" + ("" if written else " (up to date: logs unchanged)"))


if __name__ == "__main__":
    run_main(main)
