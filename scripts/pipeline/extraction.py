"""The extract step: raw tree -> <dataset>-extracted/, one JSONL file per described raw file.

The extracted tree mirrors the raw tree; only the name changes (pipeline.datasets.extracted_name):
    data/dclm/0000/dclm-0000.json.zst -> data/dclm/0000/dclm-0000.jsonl
Work is split into `chunks` (PBS array indices; locally one chunk) balanced by raw bytes; each
chunk runs its files on `jobs` worker processes. State, in state_dir(exp, dataset, "extract"):
    files/<raw path>.json   one record per extracted file (source size+mtime, output size+mtime),
                            written after the output is renamed into place
    done.json               every described file is extracted: written by whichever chunk finishes
                            last (or later by merge's check), lists every output
    cleaned.json            written by clean-intermediate: records are then enough to be up to date
A file is redone when its record is missing or its source or output changed (size or mtime).
Each output is written under its lock (pipeline.locks), and its record before the lock is let go:
a concurrent run refuses the file it is writing and skips what it finished.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import atomic
from pipeline.atomic import atomic_output, remove_temporaries, write_json
from pipeline.datasets import Dataset, check_extracted_names, raw_kind, scan_tree
from pipeline.errors import fail
from pipeline.hub import check_raw_tree, human
from pipeline.locks import output_lock
from pipeline.paths import extracted_dir, raw_dir, state_dir
from pipeline.provenance import provenance
from pipeline.streams import extract_file, report_to_counter, run_with_progress
from pipeline.sysinfo import usable_cores

MAX_ERRORS_SHOWN = 10
# what extract writes for a raw file; bump when the bytes change for the same input (records
# without it are version 1), so that earlier outputs are redone
FORMAT = 1


def parse_jobs(text: str) -> int:
    """A worker count: a number >= 1, or 'auto' = the cores this process may use."""
    if text == "auto":
        return usable_cores()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    fail(f"--jobs {text!r}: expected a number >= 1 or 'auto'")


@dataclass
class Task:
    raw: str           # relative to the raw tree
    out: str           # relative to the extracted tree
    size: int
    mtime_ns: int


def record_path(exp: Path, dataset: str, raw: str) -> Path:
    return state_dir(exp, dataset, "extract") / "files" / f"{raw}.json"


def read_json(path: Path) -> dict | None:
    return atomic.read_json(path, bad="none")


def plan(exp: Path, dataset: Dataset) -> list[Task]:
    """Every described raw file with its extracted name, sorted; checks the raw tree is usable."""
    raw = raw_dir(exp, dataset.name)
    if not raw.is_dir():
        fail(f"{raw}: raw tree not found: run make download DATASET={dataset.name}, or put the files there "
             "(it mirrors the hub repository)")
    paths = scan_tree(raw)
    selected = dataset.select(paths)
    manifest = read_json(state_dir(exp, dataset.name, "download") / "manifest.json")
    if manifest is not None:
        present = set(paths)
        missing = [f["path"] for f in manifest.get("files", []) if f["path"] not in present]
        if missing:
            fail(f"{raw}: {len(missing)} downloaded file(s) are gone, e.g. {missing[0]}; re-run make download")
    if not selected:
        fail(f"{raw}: none of its {len(paths)} files is described by {dataset.path} "
             f"(sources: {', '.join(dataset.sources)})")
    names = check_extracted_names(selected, raw)
    tasks = []
    for path in selected:
        raw_kind(path)
        stat = (raw / path).stat()
        tasks.append(Task(path, names[path], stat.st_size, stat.st_mtime_ns))
    return tasks


def split_chunks(tasks: list[Task], chunks: int) -> list[list[Task]]:
    """Deterministic split balanced by bytes: biggest file first to the least-loaded chunk."""
    loads = [0] * chunks
    parts: list[list[Task]] = [[] for _ in range(chunks)]
    for task in sorted(tasks, key=lambda t: (-t.size, t.raw)):
        index = min(range(chunks), key=lambda i: (loads[i], i))
        loads[index] += task.size
        parts[index].append(task)
    return [sorted(p, key=lambda t: t.raw) for p in parts]


def is_done(exp: Path, dataset: str, task: Task, cleaned: bool = False) -> bool:
    record = read_json(record_path(exp, dataset, task.raw))
    if record is None or record.get("source_size") != task.size or record.get("source_mtime_ns") != task.mtime_ns \
            or record.get("format", 1) != FORMAT:
        return False
    if cleaned:
        return True
    try:
        stat = (extracted_dir(exp, dataset) / task.out).stat()
    except FileNotFoundError:
        return False
    return stat.st_size == record.get("bytes") and stat.st_mtime_ns == record.get("mtime_ns")


def is_cleaned(exp: Path, dataset: str) -> bool:
    return (state_dir(exp, dataset, "extract") / "cleaned.json").is_file()


# ---------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------

def write_record(exp: Path, dataset: str, task: Task, result: tuple[int, int]) -> None:
    write_json(record_path(exp, dataset, task.raw),
               {"source": task.raw, "source_size": task.size, "source_mtime_ns": task.mtime_ns,
                "output": task.out, "bytes": result[0], "mtime_ns": result[1], "format": FORMAT})


def extract_one(exp: str, dataset: str, task: Task, src: str, dst: str, text_column: str,
                keep_columns: list[str]) -> tuple[int, int] | None:
    """Extract one file and write its record (worker side); returns (output bytes, mtime_ns), or
    None when another run finished it meanwhile. The output's lock is held throughout."""
    src_path, dst_path = Path(src), Path(dst)
    compression, fmt = raw_kind(src)
    with output_lock(dst_path, "being extracted"):
        if is_done(Path(exp), dataset, task):
            return None
        remove_temporaries(dst_path)
        with atomic_output(dst_path, "wb") as out:
            extract_file(src_path, out, compression, fmt, text_column, keep_columns, report_to_counter)
        stat = dst_path.stat()
        result = stat.st_size, stat.st_mtime_ns
        write_record(Path(exp), dataset, task, result)
    return result


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------

def finalize(exp: Path, dataset: Dataset, tasks: list[Task] | None = None) -> dict | None:
    """Write the stage sentinel when every described file is extracted; returns it (None: not yet)."""
    tasks = plan(exp, dataset) if tasks is None else tasks
    cleaned = is_cleaned(exp, dataset.name)
    outputs, bytes_in, bytes_out = [], 0, 0
    for task in tasks:
        if not is_done(exp, dataset.name, task, cleaned):
            return None
        record = read_json(record_path(exp, dataset.name, task.raw))
        outputs.append({"path": task.out, "source": task.raw, "bytes": record["bytes"],
                        "mtime_ns": record["mtime_ns"]})
        bytes_in += task.size
        bytes_out += record["bytes"]
    sentinel = state_dir(exp, dataset.name, "extract") / "done.json"
    previous = read_json(sentinel)
    if previous is not None and previous.get("outputs") == outputs:
        return previous
    done = {"dataset": dataset.name, "description": str(dataset.path), "files": len(outputs),
            "bytes_in": bytes_in, "bytes_out": bytes_out, "extracted_dir": str(extracted_dir(exp, dataset.name)),
            "outputs": outputs, **provenance()}
    write_json(sentinel, done)
    return done


def run_extract(exp: Path, dataset: Dataset, chunk: int = 0, chunks: int = 1, jobs: int = 1,
                show_progress: bool = True, allow_partial: bool = False) -> dict:
    """Extract this chunk's files that are not done yet; returns a summary. A raw tree without all
    the description's `expect` says exists is refused unless allow_partial."""
    if not 0 <= chunk < chunks:
        fail(f"chunk {chunk} is outside 0..{chunks - 1}")
    started = time.monotonic()
    tasks = plan(exp, dataset)
    check_raw_tree(exp, dataset, allow_partial)
    cleaned = is_cleaned(exp, dataset.name)
    if cleaned and not all(is_done(exp, dataset.name, t, True) for t in tasks):
        # the raw tree changed after clean-intermediate: back to the normal rules (redo what is missing)
        (state_dir(exp, dataset.name, "extract") / "cleaned.json").unlink()
        (state_dir(exp, dataset.name, "extract") / "done.json").unlink(missing_ok=True)
        cleaned = False
    mine = split_chunks(tasks, chunks)[chunk]
    todo = [t for t in mine if not is_done(exp, dataset.name, t, cleaned)]
    raw, out_dir = raw_dir(exp, dataset.name), extracted_dir(exp, dataset.name)
    where = f"chunk {chunk + 1}/{chunks}: " if chunks > 1 else ""
    print(f"extract: {where}{len(mine)} of {len(tasks)} files, {len(mine) - len(todo)} already done, "
          f"{len(todo)} to extract ({human(sum(t.size for t in todo))}) with {min(jobs, max(len(todo), 1))} "
          f"worker(s) into {out_dir}" + (" (intermediate trees were removed; records are up to date)"
                                        if cleaned else ""))
    failures: list[str] = []
    results: dict[str, tuple[int, int]] = {}
    args = {t.raw: (str(exp), dataset.name, t, str(raw / t.raw), str(out_dir / t.out), dataset.parquet.text_column,
                    dataset.parquet.keep_columns) for t in todo}

    def done_one(task: Task, result: tuple[int, int] | None) -> None:
        if result is not None:      # None: a concurrent run extracted it first
            results[task.raw] = result

    run_with_progress(todo, extract_one, lambda t: args[t.raw], jobs, desc="extract",
                      total=sum(t.size for t in todo), show_progress=show_progress, on_result=done_one,
                      on_error=lambda task, exc: failures.append(str(exc)))
    elapsed = time.monotonic() - started
    summary = _summary(exp, dataset, mine, todo, results, elapsed)
    if failures:
        shown = "\n  ".join(failures[:MAX_ERRORS_SHOWN])
        more = f"\n  ... {len(failures) - MAX_ERRORS_SHOWN} more" if len(failures) > MAX_ERRORS_SHOWN else ""
        fail(f"extract: {len(failures)} file(s) not extracted (no partial output is left):\n  {shown}{more}")
    done = finalize(exp, dataset, tasks)
    if done is None:
        pending = sum(1 for t in tasks if not is_done(exp, dataset.name, t, cleaned))
        print(f"extract: {where}complete; {pending} file(s) of other chunks still pending, so the stage "
              "sentinel is written by the last chunk to finish")
    else:
        print(f"extract: all {done['files']} files extracted ({human(done['bytes_in'])} -> "
              f"{human(done['bytes_out'])}); sentinel {state_dir(exp, dataset.name, 'extract') / 'done.json'}")
    return summary


def _summary(exp: Path, dataset: Dataset, mine: list[Task], todo: list[Task],
             results: dict[str, tuple[int, int]], elapsed: float) -> dict:
    rows: dict[str, list[int]] = {}
    for task in mine:
        row = rows.setdefault(dataset.source_of(task.raw)[0].name, [0, 0, 0, 0])
        row[0] += 1
        row[1] += task.raw in results
        row[2] += task.size
        record = read_json(record_path(exp, dataset.name, task.raw))
        row[3] += record["bytes"] if record else 0
    width = max([len(s) for s in rows] + [6])
    print(f"\n{'source':<{width}}  {'files':>6}  {'new':>6}  {'raw':>10}  {'extracted':>10}")
    for source, (files, new, size_in, size_out) in sorted(rows.items()):
        print(f"{source:<{width}}  {files:>6}  {new:>6}  {human(size_in):>10}  {human(size_out):>10}")
    done_in = sum(t.size for t in todo if t.raw in results)
    done_out = sum(r[0] for r in results.values())
    rate = f", {human(done_in / elapsed)}/s in, {human(done_out / elapsed)}/s out" if elapsed > 0 and done_in else ""
    print(f"extracted {len(results)} file(s) in {elapsed:.1f}s{rate}\n")
    return {"files": len(mine), "extracted": len(results), "bytes_in": done_in, "bytes_out": done_out,
            "seconds": elapsed}
