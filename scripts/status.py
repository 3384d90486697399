#!/usr/bin/env python3
"""Where the pipeline stands: one table of the data stages and one of the submitted jobs.

A stage is `done` when its sentinel EXP_DIR/.state/<dataset>/<stage>/done.json exists, `partial`
when its output folder has files but no sentinel (running, failed or killed), `missing` otherwise.
Under SCHEDULER=pbs the job table asks `qstat -f -x -F json` for the current states.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from pipeline.errors import run_main
from pipeline.paths import extracted_dir, jobs_file, merged_dir, raw_dir, state_dir, tokenized_dir

JOBS_SHOWN = 15


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"


def tree_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) below `folder`, not counting hidden folders such as the hub's .cache."""
    files = total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
            files += 1
    return files, total


def stage_rows(exp: Path, dataset: str, tokenizer_name: str) -> list[tuple[str, str, str, str]]:
    stages = [("download", raw_dir(exp, dataset)), ("extract", extracted_dir(exp, dataset)),
              ("merge", merged_dir(exp, dataset)), (f"tokenize-{tokenizer_name}", tokenized_dir(exp, dataset, tokenizer_name))]
    rows = []
    for stage, folder in stages:
        sentinel = state_dir(exp, dataset, stage) / "done.json"
        files, size = tree_size(folder) if folder.is_dir() else (0, 0)
        if sentinel.is_file():
            state = "done"
        elif files:
            state = "partial"
        else:
            state = "missing"
        detail = f"{files} files, {human_bytes(size)}" if files else "-"
        if state == "done" and not files:
            detail = "removed after use (sentinel kept)"
        rows.append((stage, state, detail, str(folder)))
    return rows


def read_jobs(exp: Path) -> list[dict]:
    path = jobs_file(exp)
    if not path.is_file():
        return []
    jobs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            jobs.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write; the rest are still worth showing
    return jobs


def pbs_states(job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    try:
        result = subprocess.run(["qstat", "-f", "-x", "-F", "json", *job_ids], capture_output=True, text=True,
                                timeout=60)
        data = json.loads(result.stdout or "{}")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return {}
    states = {}
    for job_id, info in data.get("Jobs", {}).items():
        state = info.get("job_state", "?")
        if state == "F" and "Exit_status" in info:
            state = f"F (exit {info['Exit_status']})"
        states[job_id] = state
    return states


def job_rows(exp: Path, scheduler: str) -> list[tuple[str, ...]]:
    jobs = read_jobs(exp)[-JOBS_SHOWN:]
    states = pbs_states([j["job_id"] for j in jobs if j.get("scheduler") == "pbs"]) if scheduler == "pbs" else {}
    rows = []
    for job in jobs:
        if job.get("scheduler") == "local":
            state = "ok" if job.get("exit_status") == 0 else f"failed (exit {job.get('exit_status')})"
        else:
            state = states.get(job["job_id"], "submitted")
        rows.append((job.get("time", "")[:19], job["job_id"], job.get("name", ""), state,
                     job.get("depend") or ""))
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp-dir", required=True, type=Path, help="EXP_DIR")
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. dolmino-mix-1124")
    parser.add_argument("--tokenizer-name", required=True, help="TOKENIZER_NAME of the tokenized tree")
    parser.add_argument("--scheduler", choices=("local", "pbs"), default="local",
                        help="with pbs, job states come from qstat")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    exp = args.exp_dir.resolve()
    print(f"Pipeline status for {args.dataset} in {exp}\n")
    print_table(("stage", "state", "outputs", "where"), stage_rows(exp, args.dataset, args.tokenizer_name))
    rows = job_rows(exp, args.scheduler)
    print()
    if rows:
        print(f"Jobs (last {JOBS_SHOWN} of {jobs_file(exp)}):")
        print_table(("submitted", "job id", "name", "state", "depend"), rows)
    else:
        print("Jobs: none submitted yet")


if __name__ == "__main__":
    run_main(main)
