#!/usr/bin/env python3
"""Benchmark the soup step: `scripts/soup.py` (checks + mergekit + verification) against the plain
`mergekit-yaml` CLI (the reference: what the earlier pipeline ran) on the same random Llama models.

Prints one table: wall seconds and parameters per second of the reference merge, our merge, our
full and sampled verification, and our whole step. The models are built here (CPU, random
weights, a few seconds); the default size keeps the run to about a minute on 2 cores.

    bench_soup.py [--models 3] [--hidden 256] [--layers 8] [--vocab 32000] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path[:0] = [str(SCRIPTS), str(SCRIPTS.parent / "demo")]  # pipeline/, and make_tiny_runs.py

from make_tiny_runs import make_tiny_model  # noqa: E402
from pipeline.errors import fail, run_main  # noqa: E402
from pipeline.hf_tokenizer import write_hf_tokenizer  # noqa: E402
from pipeline.sample import ACCENTED, CODE, JAPANESE, WORDS  # noqa: E402
from pipeline.soup import DTYPES, load_checkpoint  # noqa: E402
from pipeline.tokenizer_training import train_sentencepiece  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=3, help="ingredients to average")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random models (multiple of 4)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the random models")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size (embeddings dominate small models)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="merge dtype (and ingredients' dtype)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and outputs here (default: a tmp dir)")
    return parser.parse_args(argv)


def timed(cmd: list[str], env: dict) -> float:
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        fail(f"{cmd[0]} exited {result.returncode}: {(result.stderr or result.stdout)[-2000:]}")
    return time.monotonic() - start


def bench(args: argparse.Namespace, work: Path) -> None:
    if args.models < 2 or args.hidden % 4 or args.layers < 1:
        fail("--models must be >= 2, --hidden a multiple of 4, --layers >= 1")
    tokenizer_model = train_sentencepiece(None, work / "tokenizer" / "bench.model", 300,
                                          texts=[" ".join(WORDS)] + JAPANESE + CODE + ACCENTED)
    tokenizer_dir = work / "tokenizer" / "hf"
    write_hf_tokenizer(tokenizer_model, tokenizer_dir)
    models = [make_tiny_model(work / f"seed{i}", i, dtype=args.dtype, hidden=args.hidden, layers=args.layers,
                              vocab=args.vocab, tokenizer_dir=tokenizer_dir) for i in range(args.models)]
    params = sum(math_prod(t.shape) for t in load_checkpoint(models[0]).tensors.values())
    config = work / "bench.yaml"
    config.write_text("merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {m}\n    parameters:\n      weight: 1.0\n" for m in models) + f"dtype: {args.dtype}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = Path(sys.executable).with_name("mergekit-yaml")
    reference = timed([str(cli), str(config), str(work / "reference"), "--lazy-unpickle", "--quiet",
                       "--no-write-model-card"], env)
    exp = work / "exp"
    soup = [sys.executable, str(SCRIPTS / "soup.py"), "--config", str(config), "--exp-dir", str(exp),
            "--tokenizer-model", str(tokenizer_model)]
    ours = timed(soup, env)
    record = json.loads((exp / "soups" / "bench" / "soup.json").read_text())
    full_verify = record["verification"]["seconds"]
    merge_s = record["merge_seconds"]
    import shutil
    shutil.rmtree(exp / "soups")
    ours_sample = timed([*soup, "--verify", "sample"], env)
    sample_record = json.loads((exp / "soups" / "bench" / "soup.json").read_text())["verification"]

    print(f"\nsoup benchmark: {args.models} x {params / 1e6:.1f}M-parameter Llama ({args.dtype}, hidden {args.hidden}, "
          f"{args.layers} layers, vocab {args.vocab}), {os.cpu_count()} CPU(s)")
    rows = [
        ("reference: mergekit-yaml CLI (whole process)", reference, params),
        ("ours: mergekit run_merge (in soup.py)", merge_s, params),
        ("ours: verify full (every tensor)", full_verify, params),
        (f"ours: verify sample ({sample_record['tensors_checked']}/{sample_record['tensors']} tensors)",
         sample_record["seconds"], None),
        ("ours: soup.py whole step, SOUP_VERIFY=full", ours, params),
        ("ours: soup.py whole step, SOUP_VERIFY=sample", ours_sample, params),
    ]
    print(f"{'step':<52} {'seconds':>9} {'Mparam/s':>10}")
    for label, seconds, count in rows:
        rate = f"{count / seconds / 1e6:10.1f}" if count and seconds > 0 else f"{'-':>10}"
        print(f"{label:<52} {seconds:9.2f} {rate}")
    print("(process start-up, imports and tokenizer copy are inside the whole-step and reference figures)")


def math_prod(shape) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        bench(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench_soup.") as tmp:
            bench(args, Path(tmp))
    return 0


if __name__ == "__main__":
    run_main(main)
