"""The `tokenize` stage of a dataset: every merged file -> <dataset>-<TOKENIZER_NAME>-tokenized/.

Inputs are the outputs listed by merge's sentinel, state_dir(exp, dataset, "merge")/done.json
({"outputs": [{"path": relative to the merged folder, "bytes", "mtime_ns", ...}]}). Each becomes
`<tokenized>/<path minus .jsonl>_text_document.{bin,idx}` (the merged tree mirrored) with a
provenance JSON beside it, and a sentinel state_dir(..., "tokenize-<name>")/<path minus .jsonl>.json
holding the fingerprint it was made from: the merge record's bytes and mtime_ns, the tokenizer's
sha256, type and BOS/EOD policy, the JSON keys, the bad-line policy and the output format version
(pipeline.tokenization.FORMAT; sentinels without one are redone). An output is up to date when its
sentinel matches and its files have the recorded sizes, so after clean-intermediate removed the merged tree the
outputs stay up to date (only stale or missing outputs need their input). `done.json` is written
once every output is up to date, by whichever run completes the last one.

`plan` lists what is not up to date in a plan file (one array index per entry); `run` does one entry,
under the output's lock (pipeline.locks), so two runs of one entry never write it at once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline import atomic
from pipeline.atomic import write_json, write_text
from pipeline.errors import fail
from pipeline.indexed import data_path, index_counts, index_path
from pipeline.locks import output_lock
from pipeline.merging import merged_outputs
from pipeline.paths import merged_dir, state_dir, tokenized_dir
from pipeline.sysinfo import usable_cores
from pipeline.tokenization import (FORMAT, ON_BAD, TokenizerSpec, build_engine, output_prefix_for,
                                   provenance_path, run_one_file, strip_input_suffix, tokenizer_sha256)


def stage(tokenizer_name: str) -> str:
    return f"tokenize-{tokenizer_name}"


@dataclass
class Item:
    rel: str          # merged output, relative to the merged folder
    record: dict      # merge's record of it
    input: Path
    prefix: Path      # output prefix; files are <prefix>_<key>_document.*
    sentinel: Path


def sentinel_name(rel: str) -> str:
    """`dclm/dclm-0000-0009.jsonl` -> `dclm/dclm-0000-0009.json` (clean-intermediate looks for this)."""
    stem = rel[: -len(".jsonl")] if rel.endswith(".jsonl") else rel
    return f"{stem}.json"


def read_json(path: Path) -> dict | None:
    return atomic.read_json(path, bad="fail")


def items(exp: Path, dataset: str, tokenizer_name: str) -> list[Item]:
    base, out, state = merged_dir(exp, dataset), tokenized_dir(exp, dataset, tokenizer_name), \
        state_dir(exp, dataset, stage(tokenizer_name))
    result = []
    for entry in merged_outputs(exp, dataset, required=True):
        rel = entry["path"]
        result.append(Item(rel, entry, base / rel, out / strip_input_suffix(rel), state / sentinel_name(rel)))
    return result


def tokenizer_record(spec: TokenizerSpec, sha256: str) -> dict:
    return {"type": spec.type, "sha256": sha256, "append_eod": spec.append_eod,
            "bos": spec.bos if spec.type == "Llama2Tokenizer" else None}


def fingerprint(item: Item, tokenizer: dict, keys: tuple[str, ...], on_bad: str) -> dict:
    """Everything the bytes of an output depend on: input, tokenizer, keys, bad-line policy, code."""
    return {"input": {"path": item.rel, "bytes": item.record["bytes"], "mtime_ns": item.record["mtime_ns"]},
            "tokenizer": tokenizer, "json_keys": list(keys), "on_bad_line": on_bad, "format": FORMAT}


def policy_allows(sentinel: dict, wanted: str) -> bool:
    """An output made under one bad-line policy is the output of `wanted` too when nothing was skipped:
    a strict run that finished saw no bad line; a skipping run is strict only if it skipped none."""
    made = sentinel.get("fingerprint", {}).get("on_bad_line")
    if made == wanted or (made == "error" and wanted == "skip"):
        return True
    skipped = sentinel.get("skipped_lines")
    return made == "skip" and isinstance(skipped, dict) and not any(skipped.values())


def is_done(item: Item, wanted: dict) -> bool:
    """The sentinel matches and every output file it lists has the recorded size."""
    sentinel = read_json(item.sentinel)
    if sentinel is None or not isinstance(sentinel.get("fingerprint"), dict):
        return False
    same = {k: v for k, v in sentinel["fingerprint"].items() if k != "on_bad_line"} == \
        {k: v for k, v in wanted.items() if k != "on_bad_line"}
    if not same or not policy_allows(sentinel, wanted["on_bad_line"]):
        return False
    outputs = sentinel.get("outputs")
    if not isinstance(outputs, dict) or sorted(outputs) != sorted(wanted["json_keys"]):
        return False
    for key, info in outputs.items():
        prefix = output_prefix_for(item.prefix, key)
        for path, size in ((data_path(prefix), info.get("bin_bytes")), (index_path(prefix), info.get("idx_bytes"))):
            try:
                if path.stat().st_size != size:
                    return False
            except FileNotFoundError:
                return False
    return True


def check_input(item: Item) -> None:
    """The input must be there and be the file merge recorded (same size and mtime)."""
    try:
        stat = item.input.stat()
    except FileNotFoundError:
        fail(f"{item.input}: missing, and its tokenized output is not up to date (removed by clean-intermediate "
             "before tokenize finished?): run make merge again, then make tokenize")
    if stat.st_size != item.record["bytes"] or stat.st_mtime_ns != item.record["mtime_ns"]:
        fail(f"{item.input}: {stat.st_size} bytes, mtime_ns {stat.st_mtime_ns}, but merge's record says "
             f"{item.record['bytes']} bytes, mtime_ns {item.record['mtime_ns']}: the file changed after merge; "
             "run make merge again")


@dataclass
class Plan:
    path: Path | None
    todo: list[str]
    total: int
    stale: int


def make_plan(exp: Path, dataset: str, tokenizer_name: str, spec: TokenizerSpec, keys: tuple[str, ...] = ("text",),
              on_bad: str = "error") -> Plan:
    """Write the plan file of what is not up to date; with nothing to do, make sure done.json is there."""
    if on_bad not in ON_BAD:
        fail(f"on_bad={on_bad!r}: expected one of {', '.join(ON_BAD)}")
    if not Path(spec.model).exists():
        fail(f"TOKENIZER_MODEL={spec.model}: not found")
    build_engine(spec)  # fail now, here, on a bad model rather than in every array job
    every = items(exp, dataset, tokenizer_name)
    tokenizer = tokenizer_record(spec, tokenizer_sha256(spec.model))
    pending = [item for item in every if not is_done(item, fingerprint(item, tokenizer, keys, on_bad))]
    state = state_dir(exp, dataset, stage(tokenizer_name))
    if not pending:
        write_done(exp, dataset, tokenizer_name, spec, tokenizer, keys, every)
        return Plan(None, [], len(every), 0)
    (state / "done.json").unlink(missing_ok=True)  # the stage is not complete, whatever happens next
    for item in pending:
        check_input(item)
    todo = [item.rel for item in pending]
    stale = sum(item.sentinel.is_file() for item in pending)
    plan = {"exp_dir": str(exp), "dataset": dataset, "tokenizer_name": tokenizer_name,
            "tokenizer": {"type": spec.type, "model": str(Path(spec.model).resolve()), "bos": spec.bos,
                          "append_eod": spec.append_eod, "sha256": tokenizer["sha256"]},
            "json_keys": list(keys), "on_bad_line": on_bad, "items": todo}
    text = json.dumps(plan, indent=2, sort_keys=True) + "\n"
    path = state / f"plan-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.is_file():
        write_text(path, text)
    return Plan(path, todo, len(every), stale)


def submit_plan(plan: Plan, exp: Path, dataset: str, tokenizer_name: str, *, workers: int, walltime: str,
                depend: str, nodes: int, options) -> tuple[int, str | None]:
    """pbs/tokenize.pbs over the plan's entries (an array of one index per entry when there are several):
    (exit status, job id under PBS). Here the indices run one at a time, since each uses every core."""
    from dataclasses import replace

    from pipeline.scheduler import make_job, submit
    job = make_job("pbs/tokenize.pbs", f"tokenize-{dataset}-{tokenizer_name}",
                   {"PLAN": str(plan.path), "WORKERS": str(workers)}, exp,
                   array=f"0-{len(plan.todo) - 1}" if len(plan.todo) > 1 else "", depend=depend, nodes=nodes,
                   walltime=walltime)
    return submit(job, replace(options, parallel=1), exp)


def submit_when_merged(exp: Path, dataset: str, tokenizer_name: str, plan_args: list[str], *, workers: int,
                       walltime: str, depend: str, nodes: int, options) -> tuple[int, str | None]:
    """While the merge this depends on (DEPEND) has not finished, the files to tokenize are not known yet:
    one pbs/tokenize.pbs job, after DEPEND, plans when it starts and tokenizes every entry in turn."""
    import shlex
    from dataclasses import replace

    from pipeline.scheduler import make_job, submit
    job = make_job("pbs/tokenize.pbs", f"tokenize-{dataset}-{tokenizer_name}",
                   {"PLAN_ARGS": shlex.join(plan_args), "WORKERS": str(workers)}, exp, depend=depend, nodes=nodes,
                   walltime=walltime)
    return submit(job, replace(options, parallel=1), exp)


def run_every_item(plan: Plan, workers: int, show_progress: bool = True) -> list[str]:
    """Tokenize every entry of a plan, one after another (each with all `workers`)."""
    return [run_plan_item(plan.path, index, workers, show_progress) for index in range(len(plan.todo))]


def load_plan(path: Path) -> dict:
    plan = read_json(path)
    if plan is None:
        fail(f"{path}: plan file not found (written by make tokenize)")
    for key in ("exp_dir", "dataset", "tokenizer_name", "tokenizer", "json_keys", "items"):
        if key not in plan:
            fail(f"{path}: not a tokenize plan (no {key!r})")
    return plan


def run_plan_item(plan_path: Path, index: int, workers: int, show_progress: bool = True) -> str:
    """Tokenize entry `index` of a plan unless it is already up to date; returns what happened."""
    plan = load_plan(plan_path)
    if not 0 <= index < len(plan["items"]):
        fail(f"{plan_path}: index {index} out of range (the plan has {len(plan['items'])} entries)")
    exp, dataset, name = Path(plan["exp_dir"]), plan["dataset"], plan["tokenizer_name"]
    tok = plan["tokenizer"]
    spec = TokenizerSpec(tok["type"], tok["model"], bos=tok["bos"], append_eod=tok["append_eod"])
    keys = tuple(plan["json_keys"])
    if tokenizer_sha256(spec.model) != tok["sha256"]:
        fail(f"{spec.model}: the tokenizer changed since make tokenize planned this job; run make tokenize again")
    tokenizer = tokenizer_record(spec, tok["sha256"])
    every = items(exp, dataset, name)
    by_rel = {item.rel: item for item in every}
    rel = plan["items"][index]
    if rel not in by_rel:
        fail(f"{plan_path}: {rel} is no longer in merge's outputs; run make tokenize again")
    item = by_rel[rel]
    on_bad = plan.get("on_bad_line", "error")
    wanted = fingerprint(item, tokenizer, keys, on_bad)
    # the whole check-then-write under the output's lock: a concurrent run of this entry refuses
    # (naming this one) and never removes what this one is writing or has just finished
    with output_lock(item.prefix, "being tokenized"):
        outcome = _make_item(item, wanted, spec, keys, on_bad, exp, dataset, name, rel, workers, show_progress)
        if all(is_done(i, fingerprint(i, tokenizer, keys, on_bad)) for i in every):
            write_done(exp, dataset, name, spec, tokenizer, keys, every)
    return f"{rel}: {outcome}"


def _make_item(item: Item, wanted: dict, spec: TokenizerSpec, keys: tuple[str, ...], on_bad: str, exp: Path,
               dataset: str, name: str, rel: str, workers: int, show_progress: bool) -> str:
    """Tokenize one entry unless it is up to date (the caller holds its lock); returns what happened."""
    if is_done(item, wanted):
        outcome = "up to date"
    else:
        check_input(item)
        # a redo starts clean: nothing under the final names until the new outputs are complete
        item.sentinel.unlink(missing_ok=True)
        for key in keys:
            prefix = output_prefix_for(item.prefix, key)
            for path in (index_path(prefix), data_path(prefix), provenance_path(item.prefix, key)):
                path.unlink(missing_ok=True)
        engine = build_engine(spec)
        record = run_one_file(item.input, item.prefix, engine, keys, workers=workers,
                              on_bad=on_bad, show_progress=show_progress,
                              extra={"dataset": dataset, "tokenizer_name": name, "merged_path": rel})
        try:
            check_input(item)  # unchanged while we read it
        except Exception:
            for key in keys:
                prefix = output_prefix_for(item.prefix, key)
                index_path(prefix).unlink(missing_ok=True)
            raise
        outputs = {}
        for key in keys:
            prefix = output_prefix_for(item.prefix, key)
            tokens, documents, sequences, dtype = index_counts(index_path(prefix))
            outputs[key] = {"prefix": str(prefix.relative_to(tokenized_dir(exp, dataset, name))),
                            "bin_bytes": data_path(prefix).stat().st_size,
                            "idx_bytes": index_path(prefix).stat().st_size,
                            "documents": documents, "sequences": sequences, "tokens": tokens, "dtype": dtype}
        write_json(item.sentinel, {"fingerprint": wanted, "outputs": outputs,
                                   "blank_lines": record["blank_lines"], "skipped_lines": record["skipped_lines"],
                                   "seconds": record["seconds"], "tokenizer_model": str(spec.model)})
        outcome = (f"{record['documents']:,} documents, {record['tokens']:,} tokens in {record['seconds']:.1f}s "
                   f"({record['input_mb_per_s']:.1f} MB/s)")
    return outcome


def write_done(exp: Path, dataset: str, tokenizer_name: str, spec: TokenizerSpec, tokenizer: dict,
               keys: tuple[str, ...], every: list[Item]) -> Path:
    """done.json: every output with its counts; rewritten only when its content changes."""
    outputs = []
    for item in every:
        sentinel = read_json(item.sentinel) or {}
        for key in keys:
            info = sentinel["outputs"][key]
            outputs.append({"path": info["prefix"], "input": item.rel, "tokens": info["tokens"],
                            "documents": info["documents"], "bin_bytes": info["bin_bytes"],
                            "idx_bytes": info["idx_bytes"], "dtype": info["dtype"]})
    done = {"dataset": dataset, "tokenizer_name": tokenizer_name, "tokenizer": tokenizer,
            "tokenized_dir": str(tokenized_dir(exp, dataset, tokenizer_name)), "json_keys": list(keys),
            "outputs": outputs, "files": len(outputs), "tokens": sum(o["tokens"] for o in outputs),
            "documents": sum(o["documents"] for o in outputs)}
    path = state_dir(exp, dataset, stage(tokenizer_name)) / "done.json"
    if read_json(path) != done:
        write_json(path, done)
    return path


def env_workers(value: int) -> int:
    if value > 0:
        return value
    return usable_cores()
