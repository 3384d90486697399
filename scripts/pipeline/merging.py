"""The merge step: <dataset>-extracted/ -> <dataset>-extracted-merged/, grouped by the description.

Each merged output concatenates its inputs in sorted order; every line ends with a newline, blank
lines are dropped and counted, and with VALIDATE=1 every line must be what tokenize accepts
(pipeline.lines: a JSON object with a string `text` that is valid UTF-8; ON_BAD_LINE=fail stops at
the first bad line, naming file:line; skip drops and counts). Each output is written under its lock
(pipeline.locks): a concurrent merge refuses the outputs being written and keeps those finished.
Beside each output, `<name>.jsonl.meta.json` records its inputs (with their size and mtime),
documents, bytes and dropped lines; an output is redone only when that record no longer matches.
The stage sentinel state_dir(exp, dataset, "merge")/done.json lists every output (path relative to
the merged folder, bytes, documents, mtime_ns); tokenize, count and clean-intermediate read it
through `merged_outputs`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import atomic, extraction
from pipeline.atomic import atomic_output, remove_temporaries, write_json
from pipeline.datasets import Dataset, group_files
from pipeline.errors import fail
from pipeline.hub import human
from pipeline.locks import output_lock
from pipeline.paths import extracted_dir, merged_dir, state_dir
from pipeline.provenance import provenance
from pipeline.streams import MergeStats, MergeWriter, report_to_counter, run_with_progress

META_SUFFIX = ".meta.json"
# what merge writes for the same inputs and options; bump when those bytes change (meta records
# without it are version 1), so that earlier outputs are redone
FORMAT = 1
ON_BAD_LINE = ("fail", "skip")


@dataclass
class Job:
    output: str                  # relative to the merged folder
    source: str
    inputs: list[dict]           # {"path": relative to the extracted folder, "bytes", "mtime_ns"}

    @property
    def size(self) -> int:
        return sum(i["bytes"] for i in self.inputs)


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


def extract_outputs(exp: Path, dataset: Dataset) -> dict:
    """The extract sentinel, written now if every file is extracted but no chunk wrote it yet."""
    done = extraction.read_json(state_dir(exp, dataset.name, "extract") / "done.json")
    if done is None:
        done = extraction.finalize(exp, dataset)
    if done is None:
        tasks = extraction.plan(exp, dataset)
        cleaned = extraction.is_cleaned(exp, dataset.name)
        pending = [t.raw for t in tasks if not extraction.is_done(exp, dataset.name, t, cleaned)]
        fail(f"{state_dir(exp, dataset.name, 'extract') / 'done.json'}: extract is not complete "
             f"({len(pending)} of {len(tasks)} files pending, e.g. {pending[0]}); run make extract first")
    return done


def plan(exp: Path, dataset: Dataset, extract_done: dict) -> list[Job]:
    by_source = {o["source"]: o for o in extract_done["outputs"]}
    jobs = []
    for group in group_files(dataset, list(by_source)):
        inputs = [{"path": by_source[raw]["path"], "bytes": by_source[raw]["bytes"],
                   "mtime_ns": by_source[raw]["mtime_ns"]} for raw in group.inputs]
        inputs.sort(key=lambda i: i["path"])
        jobs.append(Job(group.output, group.source, inputs))
    return jobs


def check_inputs(exp: Path, dataset: Dataset, jobs: list[Job]) -> None:
    """Every input must still be the file extract recorded (size and mtime)."""
    base = extracted_dir(exp, dataset.name)
    for job in jobs:
        for item in job.inputs:
            path = base / item["path"]
            try:
                stat = path.stat()
            except FileNotFoundError:
                if extraction.is_cleaned(exp, dataset.name):
                    fail(f"{path}: removed by clean-intermediate; to merge again, delete "
                         f"{state_dir(exp, dataset.name, 'extract') / 'cleaned.json'} and run make extract")
                fail(f"{path}: extracted file missing (extract recorded it); re-run make extract")
            if stat.st_size != item["bytes"] or stat.st_mtime_ns != item["mtime_ns"]:
                fail(f"{path}: changed since extract wrote it ({stat.st_size} bytes, extract recorded "
                     f"{item['bytes']}); re-run make extract")


def options(validate: bool, on_bad_line: str) -> dict:
    return {"validate": validate, "on_bad_line": on_bad_line if validate else None}


def is_done(exp: Path, dataset: str, job: Job, opts: dict) -> dict | None:
    """The output's meta record when the output is complete and up to date, else None."""
    path = merged_dir(exp, dataset) / job.output
    meta = extraction.read_json(meta_path(path))
    if meta is None or meta.get("inputs") != job.inputs or meta.get("options") != opts \
            or meta.get("format", 1) != FORMAT:
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    if stat.st_size != meta.get("bytes") or stat.st_mtime_ns != meta.get("mtime_ns"):
        return None
    return meta


def merge_one(exp: str, dataset: str, base: str, output: str, job: Job, opts: dict) -> dict:
    """Write one merged output and its meta record (worker side); returns the meta record.

    The output's lock is held throughout; an output a concurrent run completed meanwhile is kept."""
    out_path = Path(output)
    with output_lock(out_path, "being merged"):
        meta = is_done(Path(exp), dataset, job, opts)
        if meta is not None:
            return meta
        remove_temporaries(out_path)
        with atomic_output(out_path, "wb") as handle:
            handle.flush()
            writer = MergeWriter(handle.fileno(), opts["validate"], opts["on_bad_line"] or "fail", report_to_counter)
            for item in job.inputs:
                writer.append(Path(base) / item["path"])
        stat = out_path.stat()
        stats: MergeStats = writer.stats
        if stats.bytes != stat.st_size:
            fail(f"{out_path}: wrote {stats.bytes} bytes but the file has {stat.st_size}")
        meta = {"output": job.output, "source": job.source, "inputs": job.inputs, "options": opts,
                "documents": stats.documents, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "blank_lines_dropped": stats.blank_lines_dropped, "bad_lines_skipped": stats.bad_lines_skipped,
                "missing_final_newlines": stats.missing_final_newlines, "bad_line_examples": stats.bad_line_examples,
                "format": FORMAT}
        write_json(meta_path(out_path), meta)
    return meta


def run_merge(exp: Path, dataset: Dataset, jobs: int = 1, validate: bool = False, on_bad_line: str = "fail",
              show_progress: bool = True) -> dict:
    if on_bad_line not in ON_BAD_LINE:
        fail(f"ON_BAD_LINE={on_bad_line!r}: must be one of {', '.join(ON_BAD_LINE)}")
    started = time.monotonic()
    extract_done = extract_outputs(exp, dataset)
    work = plan(exp, dataset, extract_done)
    state = state_dir(exp, dataset.name, "merge")
    sentinel = state / "done.json"
    opts = options(validate, on_bad_line)
    if (state / "cleaned.json").is_file():
        done = extraction.read_json(sentinel)
        if done is not None and done.get("plan") == [asdict(j) for j in work] and done.get("options") == opts:
            print(f"merge: {len(work)} outputs up to date (the merged tree was removed by clean-intermediate; "
                  f"its sentinel {sentinel} still lists them)")
            return done
        (state / "cleaned.json").unlink()
    base, out_dir = extracted_dir(exp, dataset.name), merged_dir(exp, dataset.name)
    metas: dict[str, dict] = {}
    todo = []
    for job in work:
        meta = is_done(exp, dataset.name, job, opts)
        if meta is None:
            todo.append(job)
        else:
            metas[job.output] = meta
    check_inputs(exp, dataset, todo)
    print(f"merge: {len(work)} outputs, {len(work) - len(todo)} up to date, {len(todo)} to write "
          f"({human(sum(j.size for j in todo))}) with {min(jobs, max(len(todo), 1))} worker(s) into {out_dir}"
          + (f" (VALIDATE=1, ON_BAD_LINE={on_bad_line})" if validate else ""))
    failures: list[str] = []
    new: set[str] = set()

    def done_one(job: Job, meta: dict) -> None:
        metas[job.output] = meta
        new.add(job.output)

    # biggest first, so that a large group does not start last
    ordered = sorted(todo, key=lambda j: (-j.size, j.output))
    run_with_progress(ordered, merge_one,
                      lambda j: (str(exp), dataset.name, str(base), str(out_dir / j.output), j, opts),
                      jobs,
                      desc="merge", total=sum(j.size for j in todo), show_progress=show_progress,
                      on_result=done_one, on_error=lambda job, exc: failures.append(str(exc)))
    elapsed = time.monotonic() - started
    _print_summary(work, metas, new, elapsed)
    if failures:
        fail("merge: " + "\n  ".join(failures[:10]) + (f"\n  ... {len(failures) - 10} more" if len(failures) > 10
                                                        else ""))
    outputs = [{"path": j.output, "source": j.source, "bytes": metas[j.output]["bytes"],
                "documents": metas[j.output]["documents"], "mtime_ns": metas[j.output]["mtime_ns"],
                "inputs": len(j.inputs), "blank_lines_dropped": metas[j.output]["blank_lines_dropped"],
                "bad_lines_skipped": metas[j.output]["bad_lines_skipped"]} for j in work]
    done = extraction.read_json(sentinel)
    if done is None or done.get("outputs") != outputs or done.get("options") != opts:
        done = {"dataset": dataset.name, "merged_dir": str(out_dir), "options": opts, "outputs": outputs,
                "documents": sum(o["documents"] for o in outputs), "bytes": sum(o["bytes"] for o in outputs),
                "blank_lines_dropped": sum(o["blank_lines_dropped"] for o in outputs),
                "bad_lines_skipped": sum(o["bad_lines_skipped"] for o in outputs),
                "plan": [asdict(j) for j in work], **provenance()}
        write_json(sentinel, done)
    print(f"merge: {len(outputs)} outputs, {done['documents']:,} documents, {human(done['bytes'])}; "
          f"sentinel {sentinel}")
    return done


def _print_summary(work: list[Job], metas: dict[str, dict], new: set[str], elapsed: float) -> None:
    width = max([len(j.output) for j in work] + [6])
    print(f"\n{'output':<{width}}  {'inputs':>6}  {'documents':>11}  {'bytes':>9}  {'blank':>6}  {'bad':>5}  state")
    for job in work:
        meta = metas.get(job.output)
        if meta is None:
            print(f"{job.output:<{width}}  {len(job.inputs):>6}  {'-':>11}  {'-':>9}  {'-':>6}  {'-':>5}  FAILED")
            continue
        print(f"{job.output:<{width}}  {len(job.inputs):>6}  {meta['documents']:>11,}  {human(meta['bytes']):>9}  "
              f"{meta['blank_lines_dropped']:>6}  {meta['bad_lines_skipped']:>5}  "
              f"{'new' if job.output in new else 'kept'}")
    written = sum(metas[o]["bytes"] for o in new)
    rate = f", {human(written / elapsed)}/s" if elapsed > 0 and written else ""
    print(f"wrote {len(new)} output(s), {human(written)} in {elapsed:.1f}s{rate}\n")


def merged_outputs(exp: Path, dataset: str, required: bool = False) -> list[dict] | None:
    """The outputs merge's sentinel lists (they may have been removed since: that is fine), checked;
    None when merge has not completed, which `required` makes an error (as is an empty list then)."""
    path = state_dir(exp, dataset, "merge") / "done.json"
    done = atomic.read_json(path, bad="fail")   # a sentinel is never silently ignored
    if done is None and path.exists():
        fail(f"{path}: expected a JSON object with an 'outputs' list")
    if done is None:
        if required:
            fail(f"{path}: merge has not completed for {dataset}: run make merge first")
        return None
    outputs = done.get("outputs")
    if not isinstance(outputs, list) or (required and not outputs):
        fail(f"{path}: no 'outputs' list (nothing merged?)")
    seen = set()
    for n, entry in enumerate(outputs):
        ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"] \
            and isinstance(entry.get("bytes"), int) and isinstance(entry.get("mtime_ns"), int)
        if not ok:
            fail(f"{path}: outputs[{n}] must have a 'path' string and 'bytes' and 'mtime_ns' integers")
        rel = Path(entry["path"])
        if rel.is_absolute() or ".." in rel.parts:
            fail(f"{path}: outputs[{n}].path {entry['path']!r} must be relative to the merged folder")
        if entry["path"] in seen:
            fail(f"{path}: {entry['path']} is listed twice")
        seen.add(entry["path"])
    return outputs
