#!/usr/bin/env python3
"""Train a small SentencePiece tokenizer on JSONL (or plain text) files: the demo's own tokenizer.

    train_tokenizer.py --input EXP/dolmino-mix-1124-extracted-merged --output EXP/tokenizer/demo.model

Folders are searched for *.jsonl, *.jsonl.gz, *.jsonl.zst, *.json.gz, *.json.zst and *.txt files (sorted,
so the same tree gives the same model). A re-run with the same inputs and settings does nothing:
`<output>.json` records what the model was trained from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from pipeline.atomic import write_json
from pipeline.config import load_yaml
from pipeline.errors import fail, run_main
from pipeline.provenance import provenance, sha256_file
from pipeline.tokenizer_training import train_sentencepiece

PATTERNS = ("*.jsonl", "*.jsonl.gz", "*.jsonl.zst", "*.json.gz", "*.json.zst", "*.txt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, type=Path,
                        help="JSONL/text files, or folders searched recursively for them")
    parser.add_argument("--output", required=True, type=Path, help="the .model file to write")
    parser.add_argument("--vocab-size", type=int, default=1000,
                        help="target vocabulary size (a soft limit: small texts give fewer pieces)")
    parser.add_argument("--key", default="text", help="JSON key holding the text")
    parser.add_argument("--max-documents", type=int, default=20000, help="documents read at most (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="SentencePiece random seed")
    args = parser.parse_args(argv)
    if args.vocab_size < 64:
        parser.error("--vocab-size must be at least 64")
    if args.output.suffix != ".model":
        parser.error("--output must end in .model")
    return args


def input_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted({p for pattern in PATTERNS for p in item.rglob(pattern)
                            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(item).parts)})
            if not found:
                fail(f"{item}: no {', '.join(PATTERNS)} files below this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            fail(f"{item}: input not found")
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = input_files(args.input)
    wanted = {"inputs": [{"path": str(p.resolve()), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
                         for p in files],
              "vocab_size": args.vocab_size, "key": args.key, "max_documents": args.max_documents,
              "seed": args.seed}
    record_path = args.output.with_name(args.output.name + ".json")
    if args.output.is_file() and record_path.is_file():
        old = load_yaml(record_path)
        if isinstance(old, dict) and {k: old.get(k) for k in wanted} == wanted \
                and old.get("sha256") == sha256_file(args.output):
            print(f"train_tokenizer: {args.output} is up to date")
            return 0
    model = train_sentencepiece(files, args.output, args.vocab_size, key=args.key,
                                max_documents=args.max_documents, seed=args.seed)
    from pipeline.tokenizer_training import model_vocab_size
    size = model_vocab_size(model)
    write_json(record_path, provenance(**wanted, sha256=sha256_file(model), pieces=size))
    print(f"train_tokenizer: {model}: {size} pieces from {len(files)} file(s)")
    return 0


if __name__ == "__main__":
    run_main(main)
