#!/usr/bin/env python3
"""Benchmark `count`: exact token counts of many .idx files (target: 1000 index files in under 2 s).

Builds a tokenized tree of N small indexed datasets (both dtypes) in a temporary folder, then times
our count (headers and lengths only, plus a stat of each .bin) side by side with megatron-core's
IndexedDataset reading the same files, and with the `.bin bytes / 4` shortcut the old scripts used
(which is wrong for uint16 files: the count shows by how much).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from pipeline.errors import run_main
from pipeline.counting import count_task
from pipeline.mixture import load_task
from pipeline.paths import state_dir, tokenized_dir

TARGET_S = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="number of index files to count")
    parser.add_argument("--sequences", type=int, default=2000, help="sequences (documents) per file")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each method (best is shown)")
    parser.add_argument("--no-megatron", action="store_true", help="skip the megatron-core comparison")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the tree (default: a temp dir)")
    return parser.parse_args(argv)


def write_index(prefix: Path, lengths: np.ndarray, dtype: np.dtype) -> None:
    """A valid index for `lengths` (one sequence per document) and a .bin of the right size (sparse)."""
    dtype = np.dtype(dtype)
    code = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}[dtype]
    s = len(lengths)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]) * dtype.itemsize
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], "<u8").tobytes() + np.array([code], "u1").tobytes())
        f.write(np.array([s, s + 1], "<u8").tobytes())
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.arange(s + 1, dtype="<i8").tobytes())
    with open(f"{prefix}.bin", "wb") as f:
        f.truncate(int(lengths.sum(dtype=np.int64)) * dtype.itemsize)


def build_tree(work: Path, files: int, sequences: int) -> tuple[Path, Path, list[Path]]:
    exp = work / "exp"
    root = tokenized_dir(exp, "bench", "tok")
    rng = np.random.default_rng(0)
    prefixes = []
    for i in range(files):
        folder = root / f"group{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        prefix = folder / f"part-{i:05d}_text_document"
        write_index(prefix, rng.integers(1, 4000, size=sequences).astype(np.int32),
                    np.uint16 if i % 2 else np.int32)
        prefixes.append(prefix)
    done = state_dir(exp, "bench", "tokenize-tok")
    done.mkdir(parents=True, exist_ok=True)
    (done / "done.json").write_text("{}")
    tasks = work / "tasks"
    (tasks / "bench").mkdir(parents=True, exist_ok=True)
    (tasks / "bench" / "mixture.yaml").write_text(
        "datasets: [bench]\nsources: {all: ['*']}\nsizes: {one: {ratio: {all: 1}}}\n")
    return exp, tasks, prefixes


def best_of(repeat: int, func):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def megatron_count(prefixes: list[Path]) -> int:
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    total = 0
    for prefix in prefixes:
        dataset = IndexedDataset(str(prefix))  # keep it alive: its lengths are a view of its mmap
        total += int(dataset.sequence_lengths.sum(dtype=np.int64))
        del dataset
    return total


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        exp, tasks, prefixes = build_tree(Path(tmp), args.files, args.sequences)
        print(f"bench_count: built {args.files} index files x {args.sequences} sequences "
              f"in {time.perf_counter() - start:.1f}s (uint16 and int32 alternating)")
        config = load_task("bench", tasks)
        ours_s, rows = best_of(args.repeat, lambda: count_task(config, exp, "tok"))
        ours = sum(r.tokens for r in rows)
        bytes4_s, bytes4 = best_of(args.repeat, lambda: sum(os.path.getsize(f"{p}.bin") // 4 for p in prefixes))
        lines = [("ours: count_task (idx header + lengths, .bin stat, sources)", ours_s, ours)]
        if not args.no_megatron:
            try:
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import megatron.core.datasets.indexed_dataset  # noqa: F401  (import time not timed)
                mega_s, mega = best_of(args.repeat, lambda: megatron_count(prefixes))
                lines.append(("megatron-core IndexedDataset (reference)", mega_s, mega))
            except ImportError as exc:
                print(f"megatron-core not run: {exc}")
        lines.append(("old: .bin bytes / 4 (wrong for uint16)", bytes4_s, bytes4))
        print(f"{'method':<62} {'seconds':>8} {'files/s':>10} {'tokens':>16}")
        for name, seconds, tokens in lines:
            print(f"{name:<62} {seconds:>8.3f} {args.files / seconds:>10,.0f} {tokens:>16,}")
        verdict = "PASS" if ours_s < TARGET_S else "FAIL"
        print(f"target: {args.files} files in < {TARGET_S:.0f} s -> {ours_s:.3f} s ({verdict}); "
              f"ours == megatron: {all(t == ours for _, _, t in lines[1:-1])}; "
              f"bytes/4 off by {bytes4 - ours:+,} tokens")
        print(json.dumps({"bench": "count", "files": args.files, "ours_s": round(ours_s, 4), "tokens": ours}))


if __name__ == "__main__":
    run_main(main)
