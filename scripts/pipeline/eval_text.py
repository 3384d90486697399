"""make eval-text: held-out documents of a mixture's sources for the local-ppl suite.

A document is held out only when the training runs cannot have read it. Megatron samples each listed file
as a whole (a weight below the file's tokens still draws from all of its documents, in a seed-dependent
order), so the only documents no run of TASK/SIZE saw are those of files the mixture list does not name
(weight 0 or left out). This takes up to EVAL_TEXT_DOCS documents per source, sampled reproducibly (seeded
reservoir) from the merged JSONL of those files, and says which sources have none held out; the merged
trees must still exist (before make clean-intermediate). Where every file is used, no text of the
mixture's sources is held out: give EVAL_TEXT another JSONL of the same kind of text (a later dump, a
source's own held-out split).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline.atomic import atomic_output
from pipeline.datalist import read_list
from pipeline.errors import fail
from pipeline.lines import BadLine, std_loads, texts_of
from pipeline.mixture import files_from_list, load_task, split_prefix
from pipeline.paths import merged_dir, task_dir

TEXT_SUFFIX = "_text_document"


def merged_file(exp: Path, config, prefix: str) -> Path:
    dataset, _, rel = split_prefix(config, prefix)
    return merged_dir(exp, dataset) / f"{rel.removesuffix(TEXT_SUFFIX)}.jsonl"


def write_held_out(exp: Path, task: str, size: str, out: Path, per_source: int, seed: int = 0,
                   data_list: str = "", all_list: str = "") -> dict[str, int]:
    """Write the held-out documents to `out`; returns the documents per source (0: none held out)."""
    config = load_task(task)
    mix = Path(data_list) if data_list else task_dir(task) / f"train_data_{size}.sh"
    used = {e.prefix for e in read_list(mix) if e.weight > 0}
    every = files_from_list(config, Path(all_list) if all_list else task_dir(task) / "train_data.all.sh")
    chosen: dict[str, list[tuple[str, str, int]]] = {s: [] for s in config.sources}
    seen = dict.fromkeys(config.sources, 0)
    rng = random.Random(seed)
    for entry in sorted(every, key=lambda e: e.prefix):
        if entry.prefix in used:
            continue
        path = merged_file(exp, config, entry.prefix)
        if not path.is_file():
            fail(f"{path}: the merged file of {entry.prefix} (not in {mix}) is gone; make eval-text reads the "
                 "merged JSONL, which make clean-intermediate removes: re-run make extract merge for it")
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    (text,) = texts_of(std_loads(raw.rstrip(b"\n")), ("text",))
                except BadLine as exc:
                    fail(f"{path}:{number}: {exc}")
                seen[entry.source] += 1
                picked = chosen[entry.source]
                if len(picked) < per_source:       # reservoir sampling: every document equally likely
                    picked.append((text, str(path), number))
                elif (slot := rng.randrange(seen[entry.source])) < per_source:
                    picked[slot] = (text, str(path), number)
    counts = {source: len(docs) for source, docs in chosen.items()}
    if not any(counts.values()):
        fail(f"{mix}: every file of task {task} is in the mixture, so no document of its sources is held out "
             "(Megatron draws from whole files); give EVAL_TEXT=<JSONL> of text no run was trained on")
    with atomic_output(out, "w") as handle:
        for source, docs in chosen.items():
            for text, path, number in docs:
                handle.write(json.dumps({"text": text, "source": source, "file": path, "line": number},
                                        ensure_ascii=False) + "\n")
    return counts
