"""count: exact tokens of a task's tokenized files, from the `.idx` headers and lengths (never the `.bin`).

Every `.idx` under the task's tokenized roots (`<dataset>-<TOKENIZER_NAME>-tokenized/`) with its
tokens, documents and dtype, each file one source of the task (pipeline.mixture.classify); written
as the task's all-files list (`train_data.all.sh`) and a table beside it. Checks before counting:
the tokenize stage is complete, every output merge's sentinel lists has its `.idx`, every `.idx` its
`.bin` of the size the index gives.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.errors import fail
from pipeline.indexed import data_path, index_counts
from pipeline.merging import merged_outputs
from pipeline.mixture import FileTokens, TaskConfig, classify
from pipeline.paths import state_dir, tokenized_dir

TABLE_NAME = "train_data.all.tsv"
DOCUMENT_SUFFIX = "_text_document"   # Megatron's <prefix>_<json-key>_document, key `text`


def _scan(root: Path) -> tuple[set[str], set[str]]:
    """Prefixes (relative to root) of the .idx and .bin files below root; hidden entries skipped."""
    idx, bins = set(), set()
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.name.endswith(".idx"):
                    idx.add(os.path.relpath(entry.path, root)[:-4])
                elif entry.name.endswith(".bin"):
                    bins.add(os.path.relpath(entry.path, root)[:-4])
    return idx, bins


def expected_prefix(merged_path: str) -> str:
    stem = merged_path[: -len(".jsonl")] if merged_path.endswith(".jsonl") else merged_path
    return stem + DOCUMENT_SUFFIX


def count_task(config: TaskConfig, exp: Path, tokenizer_name: str, progress_bar=None) -> list[FileTokens]:
    """Every tokenized file of the task with exact tokens, documents and dtype, sorted by prefix."""
    found: dict[str, Path] = {}
    relative: dict[str, str] = {}
    for dataset in config.datasets:
        root = tokenized_dir(exp, dataset, tokenizer_name)
        done = state_dir(exp, dataset, f"tokenize-{tokenizer_name}") / "done.json"
        if not done.is_file():
            fail(f"{done}: tokenize-{tokenizer_name} of {dataset} is not complete; run `make tokenize "
                 f"DATASET={dataset} TOKENIZER_NAME={tokenizer_name}` first")
        if not root.is_dir():
            fail(f"{root}: tokenized root of {dataset} not found")
        idx, bins = _scan(root)
        for rel in sorted(bins - idx):
            fail(f"{root / rel}.bin has no .idx beside it (tokenize incomplete?)")
        for rel in sorted(idx - bins):
            fail(f"{root / rel}.idx has no .bin beside it")
        for merged in merged_outputs(exp, dataset) or []:
            rel = expected_prefix(merged["path"])
            if rel not in idx:
                fail(f"{root / rel}.idx missing: merged output {merged['path']} (listed by "
                     f"{state_dir(exp, dataset, 'merge') / 'done.json'}) has no tokenized index")
        base = os.path.relpath(root, exp)
        for rel in idx:
            prefix = f"{base}/{rel}".replace(os.sep, "/")
            found[prefix] = root / f"{rel}.idx"
            relative[prefix] = rel.replace(os.sep, "/")
    if not found:
        fail(f"no .idx files under the tokenized roots of task {config.task}")
    sources = classify(config, relative)
    rows = []
    for prefix in sorted(found):
        idx_path = found[prefix]
        tokens, documents, sequences, dtype = index_counts(idx_path)
        bin_path = data_path(str(idx_path)[:-4])
        expected = tokens * np.dtype(dtype).itemsize
        if bin_path.stat().st_size != expected:
            fail(f"{bin_path}: {bin_path.stat().st_size} bytes, but its index says {tokens} {dtype} tokens "
                 f"= {expected} bytes (truncated or mismatched)")
        rows.append(FileTokens(prefix, sources[prefix], tokens, documents, sequences, dtype))
        if progress_bar is not None:
            progress_bar.update(1)
    return rows


def render_table(rows: list[FileTokens]) -> str:
    lines = ["prefix\tsource\ttokens\tdocuments\tsequences\tdtype"]
    lines += [f"{r.prefix}\t{r.source}\t{r.tokens}\t{r.documents}\t{r.sequences}\t{r.dtype}" for r in rows]
    return "\n".join(lines) + "\n"
