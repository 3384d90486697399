"""clean-intermediate: remove the extracted and merged trees once every tokenized output is complete.

Refuses unless merge's sentinel exists and, for every merged output it lists, the tokenize step's
per-output sentinel state_dir(exp, dataset, "tokenize-<TOKENIZER_NAME>")/<output minus .jsonl>.json
exists, and so does that stage's done.json. The extract, merge and tokenize sentinels stay; a
`cleaned.json` beside the extract and merge sentinels tells those steps that their records, not
the removed files, now say they are up to date (so nothing is extracted or merged again).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.errors import fail
from pipeline.hub import human
from pipeline.merging import merged_outputs
from pipeline.paths import extracted_dir, merged_dir, state_dir
from pipeline.provenance import provenance


def tree_bytes(folder: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except FileNotFoundError:
                continue
    return files, total


def tokenize_sentinel(exp: Path, dataset: str, tokenizer_name: str, output: str) -> Path:
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return state_dir(exp, dataset, f"tokenize-{tokenizer_name}") / f"{stem}.json"


def missing_tokenized(exp: Path, dataset: str, tokenizer_name: str) -> tuple[list[str], list[dict]]:
    """(problems, merged outputs): what keeps the intermediate trees from being removed."""
    outputs = merged_outputs(exp, dataset)
    if outputs is None:
        return [f"{state_dir(exp, dataset, 'merge') / 'done.json'}: merge has not completed"], []
    problems = [f"{tokenize_sentinel(exp, dataset, tokenizer_name, o['path'])}: {o['path']} is not tokenized"
                for o in outputs if not tokenize_sentinel(exp, dataset, tokenizer_name, o["path"]).is_file()]
    stage_done = state_dir(exp, dataset, f"tokenize-{tokenizer_name}") / "done.json"
    if not stage_done.is_file():
        problems.append(f"{stage_done}: the tokenize-{tokenizer_name} stage has not completed")
    return problems, outputs


def run_clean(exp: Path, dataset: str, tokenizer_name: str, dry_run: bool = False) -> int:
    """Remove the intermediate trees; returns the bytes freed (would be freed with dry_run)."""
    problems, outputs = missing_tokenized(exp, dataset, tokenizer_name)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... {len(problems) - 10} more" if len(problems) > 10 else "")
        fail(f"clean-intermediate: refusing to remove the intermediate trees of {dataset}:\n  {shown}\n"
             f"run make tokenize TOKENIZER_NAME={tokenizer_name} first")
    trees = [extracted_dir(exp, dataset), merged_dir(exp, dataset)]
    freed = 0
    for tree in trees:
        if not tree.is_dir():
            print(f"clean-intermediate: {tree} already removed")
            continue
        files, size = tree_bytes(tree)
        freed += size
        if dry_run:
            print(f"clean-intermediate: would remove {tree} ({files} files, {human(size)})")
            continue
        for stage in ("extract", "merge"):
            # written first: a kill halfway leaves a state the steps still understand
            write_json(state_dir(exp, dataset, stage) / "cleaned.json",
                       {"removed": [str(t) for t in trees], "tokenizer_name": tokenizer_name, **provenance()})
        shutil.rmtree(tree)
        print(f"clean-intermediate: removed {tree} ({files} files, {human(size)})")
    verb = "would free" if dry_run else "freed"
    print(f"clean-intermediate: {verb} {human(freed)}; {len(outputs)} tokenized outputs complete "
          f"(tokenize-{tokenizer_name}); sentinels kept in {state_dir(exp, dataset, 'extract').parent}")
    return freed
