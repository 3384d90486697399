"""Where the pipeline stands (`make status`): tables of the data stages, the submitted jobs, the runs and soups.

A stage is `done` when its sentinel EXP_DIR/.state/<dataset>/<stage>/done.json exists, `partial`
when its output folder has files but no sentinel (running, failed or killed), `missing` otherwise.
Under SCHEDULER=pbs the job table asks `qstat -f -x -F json` for the current states (pipeline/job_states.py),
under slurm `squeue` (then `sacct`); a job they no longer know (PBS without job history) is shown as its own
log's .status file says it ended.
Each run under EXP_DIR/runs/<TASK>/<PARAM>/<SIZE>/seed<SEED>/ gets a row: the iteration its newest
training log reached, the latest Megatron checkpoint, the Hugging Face conversions and the tokenizer check
recorded in the latest one (pipeline/tokenizer_check.py); each soup under EXP_DIR/soups/<SOUP_NAME>/ one more.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from pathlib import Path

from pipeline.atomic import read_json
from pipeline.errors import PipelineError
from pipeline.hf_folder import RECORD_FILE
from pipeline.megatron_ckpt import ITER_DIR, TRACKER, available_iterations
from pipeline.megatron_log import find_logs, last_iteration
from pipeline.paths import extracted_dir, jobs_file, merged_dir, raw_dir, state_dir, tokenized_dir
from pipeline.job_states import job_states
from pipeline.scheduler import array_indices
from pipeline.soup import PROVENANCE_FILE as SOUP_RECORD, hf_checkpoints
from pipeline.units import human_binary

JOBS_SHOWN = 15


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
              ("merge", merged_dir(exp, dataset)),
              (f"tokenize-{tokenizer_name}", tokenized_dir(exp, dataset, tokenizer_name))]
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
        detail = f"{files} files, {human_binary(size)}" if files else "-"
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


def scheduler_states(scheduler: str, job_ids: list[str]) -> dict[str, str] | None:
    """id -> state text; None when the scheduler could not be asked (the warning says why)."""
    try:
        states = job_states(scheduler, job_ids, "show the job states")
    except PipelineError as exc:     # the tables are still worth showing without the states
        print(f"warning: {exc}", file=sys.stderr)
        return None
    return {job_id: state.text for job_id, state in states.items()}


def logged_statuses(exp: Path, job: dict) -> dict[str, int]:
    """The exit statuses a batch job wrote into the .status files of EXP_DIR/logs (pbs/common.sh names them
    <name>-<job id, [ and ] as _>.status): index (or '') -> status."""
    name, job_id = job.get("name", ""), job["job_id"]
    if job.get("array"):
        number, _, rest = job_id.partition("[]")      # PBS 12[].pbs1 -> 12_<i>_.pbs1; Slurm 12 -> 12_<i>
        pattern = f"{name}-{number}_*_{rest}.status" if rest or "[]" in job_id else f"{name}-{job_id}_*.status"
        files = list((exp / "logs").glob(pattern))
    else:
        files = [exp / "logs" / f"{name}-{re.sub(r'[][]', '_', job_id)}.status"]
    found = {}
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            found[str(record.get("array_index", ""))] = int(record["status"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def forgotten_state(exp: Path, job: dict, scheduler: str) -> str:
    """A job the scheduler no longer knows (PBS without job history forgets a job when it ends): how it ended,
    as far as its own log says."""
    asked = {"pbs": "qstat", "slurm": "squeue/sacct"}.get(scheduler, scheduler)
    statuses = logged_statuses(exp, job)
    if not statuses:
        return f"unknown to {asked} (no job history?); no exit status in its log: it never ran, or was killed"
    order = sorted(statuses, key=lambda index: (len(index), index))     # 2 before 10
    bad = {index: statuses[index] for index in order if statuses[index] != 0}
    if not job.get("array"):
        return f"ended: exit {next(iter(statuses.values()))} (its log; unknown to {asked})"
    expected = len(array_indices(job["array"]))
    if bad:
        listed = ", ".join(f"[{index}] exit {status}" for index, status in list(bad.items())[:3])
        return f"ended: {len(bad)} of {expected} subjobs failed: {listed} (their logs; unknown to {asked})"
    return (f"ended: exit 0 in {len(statuses)} of {expected} subjobs' logs (unknown to {asked})" if
            len(statuses) < expected else f"ended: exit 0, {expected} subjobs (their logs; unknown to {asked})")


def job_rows(exp: Path, scheduler: str) -> list[tuple[str, ...]]:
    jobs = read_jobs(exp)[-JOBS_SHOWN:]
    asked = [j["job_id"] for j in jobs if j.get("scheduler") == scheduler]
    states = scheduler_states(scheduler, asked) if asked else {}
    rows = []
    for job in jobs:
        if job.get("scheduler") == "local":
            state = "ok" if job.get("exit_status") == 0 else f"failed (exit {job.get('exit_status')})"
        elif job.get("scheduler") != scheduler:
            state = f"submitted (to {job.get('scheduler')})"
        elif states is None:
            state = "submitted (state unknown: see the warning)"
        else:
            state = states.get(job["job_id"]) or forgotten_state(exp, job, scheduler)
        rows.append((job.get("time", "")[:19], job["job_id"], job.get("name", ""), state,
                     job.get("depend") or ""))
    return rows


def find_runs(exp: Path) -> list[Path]:
    return sorted(p for p in (exp / "runs").glob("*/*/*/seed*") if p.is_dir())


def _iterations(values: list[int], shown: int = 3) -> str:
    values = sorted(values)
    listed = ", ".join(map(str, values[-shown:]))
    return f"{len(values)}: {'..., ' if len(values) > shown else ''}{listed}"


def _tracker(folder: Path) -> str:
    tracker = folder / TRACKER
    return tracker.read_text(encoding="utf-8", errors="replace").strip() if tracker.is_file() else ""


def checkpoint_cell(run: Path) -> str:
    """The iteration Megatron resumes from (its tracker file) and how many iter_NNNNNNN/ folders exist;
    before the run saves anything, the start checkpoint `make init` prepared."""
    folder = run / "checkpoints"
    saved = available_iterations(folder) if folder.is_dir() else []
    latest = _tracker(folder)
    if latest:
        return f"iter {latest} ({len(saved)} saved)"
    if saved:
        return f"iter {max(saved)}? (no {TRACKER})"
    start = _tracker(run / "start")
    return f"start only (init from iter {start})" if start else "-"


def run_rows(exp: Path) -> list[tuple[str, ...]]:
    rows = []
    for run in find_runs(exp):
        logs = find_logs(run)
        record = last_iteration(logs)
        if record is not None:
            reached = f"{record.iteration}/{record.train_iters}"
            if record.train_iters:
                reached += f" ({100 * record.iteration / record.train_iters:.0f}%)"
        else:
            reached = "not started" if not logs else "no iteration yet"
        hf = hf_checkpoints(run)
        last_log = "-"
        if logs:
            newest = max(logs, key=lambda p: p.stat().st_mtime)
            stamp = dt.datetime.fromtimestamp(newest.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
            last_log = f"{newest.name} ({stamp})"
        converting = [p for p in (run / "checkpoints_hf").glob("iter_*") if p.is_dir() and ITER_DIR.match(p.name)
                      and not (p / "config.json").is_file()]
        hf_cell = (_iterations(list(hf)) if hf else "-") + (f" (+{len(converting)} incomplete)" if converting else "")
        tokenizer = tokenizer_cell((read_json(hf[max(hf)] / RECORD_FILE, bad="none") or {}).get("tokenizer_check")
                                   if hf else "-")
        rows.append(("/".join(run.relative_to(exp / "runs").parts), reached, checkpoint_cell(run), hf_cell,
                     tokenizer, str(len(logs)), last_log))
    return rows


def tokenizer_cell(verdict: dict | str | None) -> str:
    """The tokenizer check recorded in a converted folder or soup: what was checked, or why nothing was."""
    if isinstance(verdict, str):
        return verdict
    if not verdict:
        return "not checked"
    text = f"ok: {verdict.get('probes', '?')} probes"
    if verdict.get("documents"):
        text += f" + {verdict['documents']} docs"
    if verdict.get("float32_ties"):
        text += f" ({verdict['float32_ties']} float32 ties)"
    return text


def soup_rows(exp: Path) -> list[tuple[str, ...]]:
    folder = exp / "soups"
    if not folder.is_dir():
        return []
    rows = []
    names = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    merging = {m[1] for p in folder.iterdir() if (m := re.match(r"^\.(.+)\.tmp\.\d+$", p.name))}
    for name in sorted(names | merging):
        soup = folder / name
        record_file = soup / SOUP_RECORD
        if record_file.is_file():
            try:
                record = json.loads(record_file.read_text(encoding="utf-8"))
            except ValueError:
                record = {}
            ingredients = record.get("ingredients") or []
            detail = f"{len(ingredients)} models, {record.get('method', '?')}, {record.get('dtype') or '?'}"
            rows.append((name, "done", detail, tokenizer_cell(record.get("tokenizer_check")), str(soup)))
        elif soup.is_dir():
            rows.append((name, "incomplete", f"no {SOUP_RECORD}", "-", str(soup)))
        else:
            rows.append((name, "merging (or killed)", "-", "-", str(folder / f".{name}.tmp.*")))
    return rows


def eval_rows(exp: Path) -> list[tuple[str, ...]]:
    """Each model's evaluation per suite (EXP_DIR/eval/results/<suite>/...): submitted, done, failed or running."""
    from pipeline.eval_results import RECORD, read_record
    root = exp / "eval" / "results"
    if not root.is_dir():
        return []
    states: dict[Path, tuple[str, str]] = {}
    for plan_file in sorted((exp / "eval" / "plans").glob("*.json")):
        try:
            plan = json.loads(plan_file.read_text(encoding="utf-8"))
        except ValueError:
            continue
        for item in plan.get("models", []):
            states[Path(item["result_dir"])] = ("submitted", f"plan {plan_file.name}")
    for record_file in root.glob(f"*/**/{RECORD}"):
        folder = record_file.parent
        record = None if any(p.startswith(".") for p in folder.relative_to(root).parts) else read_record(folder)
        if record is not None:
            states[folder] = ("done", f"{len(record['runs'])} harness run(s), lm-eval {record['harness']['version']}, "
                                      f"{record['harness']['dtype']}, {record['seconds']:.0f} s, "
                                      f"{record['provenance']['time'][:16]}")
    for marker in root.glob("*/**/.*.failed.json"):
        folder = marker.with_name(marker.name[1:-len(".failed.json")])
        record_file = folder / RECORD
        if record_file.is_file() and record_file.stat().st_mtime >= marker.stat().st_mtime:
            continue
        try:
            error = json.loads(marker.read_text(encoding="utf-8")).get("error", "")
        except ValueError:
            error = ""
        states[folder] = ("failed", (error.splitlines() or ["?"])[0][:150])
    for tmp in root.glob("*/**/.*.tmp.*"):
        states[tmp.with_name(re.sub(r"^\.(.+)\.tmp\.\d+$", r"\1", tmp.name))] = ("running (or killed)", tmp.name)
    rows = []
    for folder, (state, detail) in sorted(states.items()):
        suite, *rest = folder.relative_to(root).parts
        rows.append((suite, "/".join(rest), state, detail))
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _section(rows: list[tuple[str, ...]], title: str, header: tuple[str, ...], empty: str) -> None:
    print()
    if rows:
        print(title)
        print_table(header, rows)
    else:
        print(empty)


def print_status(exp: Path, dataset: str, tokenizer_name: str, scheduler: str) -> None:
    print(f"Pipeline status for {dataset} in {exp}\n")
    print_table(("stage", "state", "outputs", "where"), stage_rows(exp, dataset, tokenizer_name))
    _section(job_rows(exp, scheduler), f"Jobs (last {JOBS_SHOWN} of {jobs_file(exp)}):",
             ("submitted", "job id", "name", "state", "depend"), "Jobs: none submitted yet")
    _section(run_rows(exp), f"Runs (under {exp / 'runs'}):",
             ("run", "iteration", "checkpoint", "hf conversions", "tokenizer (latest)", "jobs", "last log"),
             f"Runs: none under {exp / 'runs'}")
    _section(soup_rows(exp), f"Soups (under {exp / 'soups'}):",
             ("soup", "state", "models", "tokenizer", "where"), f"Soups: none under {exp / 'soups'}")
    _section(eval_rows(exp), f"Evaluations (under {exp / 'eval' / 'results'}):",
             ("suite", "model", "state", "detail"), "Evaluations: none (make eval)")
