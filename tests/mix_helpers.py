"""Fixtures for the count/mix tests: tokenized trees with the stage sentinels, all-lists, params files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.datalist import Entry, write_list
from pipeline.indexed import IndexedDatasetWriter
from pipeline.paths import state_dir, tokenized_dir

# the merged outputs of the built-in demo sample, as the merge step names them
DEMO_FILES = {
    "dclm/dclm-0000-0009": 9000, "dclm/dclm-0010-0011": 2000, "flan/flan-all": 2500,
    "pes2o/pes2o-all": 1200, "stackexchange/stackexchange-all": 1500, "wiki/wiki-all": 1000,
    "math/codesearchnet-owmfilter-all": 700, "math/dolmino_math_synth-all": 1900, "math/gsm8k-all": 2100,
    "math/mathcoder2-synthmath-all": 2000, "math/metamath-owmfilter-all": 1000,
    "math/tinyGSM-MIND-all": 2000, "math/tulu_math-all": 1300,
}


def write_index(prefix: Path, tokens: int, dtype=np.int32, docs: int = 5, seed: int = 0) -> None:
    """`prefix.bin/.idx` holding `tokens` tokens in `docs` documents (plus one empty document)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, tokens), size=docs - 1, replace=False)) if docs > 1 else []
    lengths = np.diff(np.concatenate([[0], cuts, [tokens]])).tolist() + [0]
    ids = rng.integers(0, 60000, size=tokens)
    with IndexedDatasetWriter(prefix, dtype) as writer:
        writer.add_token_block(ids, lengths)
        writer.finalize()


def make_tokenized(exp: Path, dataset: str, tokenizer: str, files: dict[str, int], dtype=np.int32,
                   done: bool = True, merge_record: bool = True) -> Path:
    """A tokenized tree `<dataset>-<tokenizer>-tokenized/<rel>_text_document.{bin,idx}` and the sentinels
    the earlier stages leave: merge's done.json listing its outputs, tokenize's done.json."""
    root = tokenized_dir(exp, dataset, tokenizer)
    for n, (rel, tokens) in enumerate(sorted(files.items())):
        file_dtype = dtype[n % len(dtype)] if isinstance(dtype, (list, tuple)) else dtype
        write_index(root / f"{rel}_text_document", tokens, file_dtype, seed=n)
    if merge_record:
        merge = state_dir(exp, dataset, "merge")
        merge.mkdir(parents=True, exist_ok=True)
        outputs = [{"path": f"{rel}.jsonl", "bytes": 1, "documents": 5, "mtime_ns": 1} for rel in sorted(files)]
        (merge / "done.json").write_text(json.dumps({"outputs": outputs}))
    if done:
        tok = state_dir(exp, dataset, f"tokenize-{tokenizer}")
        tok.mkdir(parents=True, exist_ok=True)
        (tok / "done.json").write_text("{}")
    return root


def write_all_list(path: Path, root_name: str, files: dict[str, int]) -> Path:
    write_list(path, [Entry(tokens, f"{root_name}/{rel}_text_document") for rel, tokens in sorted(files.items())])
    return path


def write_params(path: Path, seq_length: int = 4096, global_batch_size: int = 1024) -> Path:
    path.write_text(f"seq_length: {seq_length}\nglobal_batch_size: {global_batch_size}\n")
    return path


def write_task(tasks_dir: Path, task: str, text: str) -> Path:
    path = tasks_dir / task / "mixture.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
