#!/usr/bin/env python3
"""Benchmark: parsing Megatron training logs (make report) and reading their tails (make status).

Generates a log of --iterations iteration lines with a warning line between each pair, then times,
side by side: our parser (pipeline.megatron_log), the per-key `re.findall` over the whole text that
public Megatron log parsers use (reference), `grep -c iteration` (the raw scan floor), and the
tail read that `make status` does. A 7B run of 6,900 iterations logged every iteration is ~3 MB.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/

from pipeline.errors import run_main  # noqa: E402
from pipeline.megatron_log import last_iteration, parse_file  # noqa: E402

WARNING = "/env/lib/python3.10/site-packages/torch/utils/checkpoint.py:91: UserWarning: None of the inputs ...\n"
KEYS = ("consumed samples", "elapsed time per iteration \\(ms\\)", "throughput per GPU \\(TFLOP/s/GPU\\)",
        "learning rate", "global batch size", "lm loss", "loss scale", "grad norm",
        "number of skipped iterations", "number of nan iterations")


def make_log(path: Path, iterations: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(1, iterations + 1):
            handle.write(
                f" [2025-01-01 00:00:00] iteration {i:8d}/{iterations:8d} | consumed samples: {i * 1024:12d} | "
                f"elapsed time per iteration (ms): 12345.6 | throughput per GPU (TFLOP/s/GPU): 400.1 | "
                f"learning rate: {3e-5 * (1 - i / iterations):.6E} | global batch size:  1024 | "
                f"lm loss: {2 + 1 / i:.6E} | loss scale: 1.0 | grad norm: 0.456 | "
                "number of skipped iterations:   0 | number of nan iterations:   0 |\n")
            handle.write(WARNING)


def reference(path: Path) -> int:
    """The usual approach: one findall per key over the whole text."""
    text = path.read_text(encoding="utf-8")
    columns = [re.findall(key + r": +([-+\d.eE]+|nan|NAN)", text) for key in KEYS]
    return len(columns[0])


def timed(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50_000, help="iteration lines in the generated log")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is shown)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "train-1.out"
        make_log(log, args.iterations)
        size_mb = log.stat().st_size / 1e6
        rows = []
        ours_s, job = timed(lambda: parse_file(log), args.repeat)
        assert len(job.records) == args.iterations and job.warnings == args.iterations
        rows.append(("ours: pipeline.megatron_log (all fields, restarts)", ours_s, len(job.records)))
        ref_s, count = timed(lambda: reference(log), args.repeat)
        rows.append(("reference: re.findall per key over the text", ref_s, count))
        if shutil.which("grep"):
            grep_s, out = timed(lambda: subprocess.run(["grep", "-c", "iteration", str(log)], capture_output=True,
                                                       text=True).stdout.strip(), args.repeat)
            rows.append(("floor: grep -c iteration", grep_s, int(out)))
        tail_s, record = timed(lambda: last_iteration([log]), args.repeat)
        rows.append(("status: last_iteration (tail only)", tail_s, record.iteration))
    print(f"bench_report: {args.iterations:,} iteration lines + {args.iterations:,} warnings, {size_mb:.1f} MB")
    print(f"  {'method':<52} {'seconds':>8} {'MB/s':>8} {'lines/s':>11} {'result':>8}")
    for name, seconds, result in rows:
        print(f"  {name:<52} {seconds:8.3f} {size_mb / seconds:8.1f} {2 * args.iterations / seconds:11,.0f} "
              f"{result:>8}")


if __name__ == "__main__":
    run_main(main)
