#!/usr/bin/env python3
"""Tokenize one file into Megatron .bin/.idx: a drop-in for Megatron-LM's tools/preprocess_data.py, same flags.

Covers that tool's common use (.jsonl, .jsonl.gz, .jsonl.zst or .parquet in), with the same documents
byte for byte (see scripts/pipeline/tokenization.py for the exact layout), but parallel within the
file in input order, bounded in memory, loud on bad input and never leaving a half-written pair:

    tokenize_file.py --input merged/flan-all.jsonl --output-prefix out/flan-all \\
        --tokenizer-type Llama2Tokenizer --tokenizer-model llm-jp-tokenizer-100k.ver3.1.model \\
        --append-eod --workers 16
    -> out/flan-all_text_document.bin/.idx and out/flan-all_text_document.provenance.json
"""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import fail, run_main
from pipeline.tokenization import (DEFAULT_CHUNK_BYTES, ON_BAD, TOKENIZER_TYPES, TokenizerSpec, build_engine,
                                   default_workers, run_one_file)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="input file: .jsonl/.json, .gz or .zst of those, or .parquet")
    parser.add_argument("--output-prefix", required=True,
                        help="writes <prefix>_<key>_document.bin/.idx (and .provenance.json) per key")
    parser.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY",
                        help="keys (parquet: columns) to tokenize, one output per key (default: text)")
    parser.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES,
                        help="Megatron tokenizer class whose documents are reproduced")
    parser.add_argument("--tokenizer-model", required=True,
                        help="SentencePiece .model file, or a Hugging Face tokenizer folder for HuggingFaceTokenizer")
    parser.add_argument("--append-eod", action="store_true", help="end every non-empty document with the EOD token")
    parser.add_argument("--no-bos", action="store_true",
                        help="Llama2Tokenizer: no BOS before each document (newer upstream Megatron); default adds "
                             "it, as the Megatron LLM-jp v4 models were pretrained with")
    parser.add_argument("--workers", type=int, default=0,
                        help="tokenizer processes; 0 (default) = every core this process may use")
    parser.add_argument("--on-bad-line", choices=ON_BAD, default="error",
                        help="invalid JSON, a missing key, a non-string value or invalid UTF-8: stop with "
                             "file:line (error, default) or skip the line and count it (skip); blank lines are "
                             "always skipped and counted")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                        help="bytes of whole lines handed to a worker at a time")
    parser.add_argument("--log-interval", type=int, default=0,
                        help="accepted for compatibility with preprocess_data.py; progress is time-based")
    parser.add_argument("--quiet", action="store_true", help="no progress output, only the summary line")
    args = parser.parse_args(argv)
    if args.no_bos and args.tokenizer_type != "Llama2Tokenizer":
        parser.error("--no-bos applies to --tokenizer-type Llama2Tokenizer only")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.chunk_bytes < 1:
        parser.error("--chunk-bytes must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = TokenizerSpec(type=args.tokenizer_type, model=args.tokenizer_model, bos=not args.no_bos,
                         append_eod=args.append_eod)
    engine = build_engine(spec)
    if len(set(args.json_keys)) != len(args.json_keys):
        fail(f"--json-keys {' '.join(args.json_keys)}: a key is repeated")
    record = run_one_file(args.input, args.output_prefix, engine, tuple(args.json_keys),
                          workers=args.workers or default_workers(), on_bad=args.on_bad_line,
                          chunk_bytes=args.chunk_bytes, show_progress=not args.quiet)
    skipped = ", ".join(f"{k} {v}" for k, v in record["skipped_lines"].items() if v) or "none"
    print(f"tokenize: {args.input}: {record['documents']:,} documents, {record['tokens']:,} tokens, "
          f"{record['blank_lines']:,} blank lines, skipped: {skipped}; "
          f"{record['seconds']:.1f}s ({record['input_mb_per_s']:.1f} MB/s, {record['tokens_per_s']:,.0f} tokens/s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
