#!/usr/bin/env python3
"""Build a Hugging Face tokenizer folder that encodes exactly as a SentencePiece model (make hf-tokenizer).

    hf_tokenizer.py --tokenizer-model llm-jp-tokenizer-100k.ver3.1.model --output exp/hf-tokenizer/v3.1 \\
                    [--documents corpus.jsonl ...] [--force]

tokenizer.json (a `tokenizers` Unigram or BPE model read from the model's proto), tokenizer_config.json and
special_tokens_map.json are written beside the output, checked id for id against SentencePiece under
Megatron's BOS/EOD policy on the probe set and the --documents (JSONL `text` fields or lines of text
files), then renamed into place (pipeline/hf_tokenizer.py, pipeline/tokenizer_check.py). An existing folder
that this did not build (a published one) is only checked, and used as given when it passes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.errors import fail, run_main
from pipeline.hf_tokenizer import GIVEN, write_hf_tokenizer
from pipeline.tokenizer_check import describe_verdict
from pipeline.tokenizer_training import iter_texts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--tokenizer-model", required=True, type=Path, help="TOKENIZER_MODEL: the SentencePiece .model")
    parser.add_argument("--output", required=True, type=Path, help="HF_TOKENIZER_DIR: the folder to write")
    parser.add_argument("--documents", action="append", default=[], type=Path,
                        help="TOKENIZER_CHECK_DOCS: a JSONL (its `text`) or text file whose documents are checked "
                             "too (repeatable)")
    parser.add_argument("--max-documents", type=int, default=0, help="documents read at most (0: all)")
    parser.add_argument("--force", action="store_true", help="build again a folder this built earlier")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in args.documents:
        if not path.is_file():
            fail(f"{path}: documents file not found (TOKENIZER_CHECK_DOCS)")
    documents = list(iter_texts(args.documents, max_documents=args.max_documents))
    started = time.monotonic()
    record, status = write_hf_tokenizer(args.tokenizer_model, args.output, documents, force=args.force)
    check = record["tokenizer_check"]
    if status == GIVEN:
        print(f"hf-tokenizer: {args.output.absolute()}: a folder make hf-tokenizer did not build, {status} after "
              f"the check against {args.tokenizer_model} ({time.monotonic() - started:.1f}s)", file=sys.stderr)
    else:
        settings = record["settings"]
        print(f"hf-tokenizer: {args.output.absolute()} {status} from {args.tokenizer_model} "
              f"({settings['model_type']}, {settings['pieces']:,} pieces) in {time.monotonic() - started:.1f}s",
              file=sys.stderr)
    print(f"hf-tokenizer: checked: {describe_verdict(check)} (transformers {check['versions']['transformers']}, "
          f"tokenizers {check['versions']['tokenizers']}); use it as HF_TOKENIZER_DIR={args.output.absolute()}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
