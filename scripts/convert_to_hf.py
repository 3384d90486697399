#!/usr/bin/env python3
"""Convert a Megatron `torch_dist` checkpoint to a Hugging Face LlamaForCausalLM folder, on the CPU.

No Megatron and no GPU: the tensors are read with torch.distributed.checkpoint, the architecture comes
from the checkpoint's own saved arguments, and the output (sharded safetensors with index,
config.json, generation_config.json, tokenizer files when given) appears complete or not at all.

    convert_to_hf.py --load RUN/checkpoints --output RUN/checkpoints_hf/iter_0001000 \\
                     --tokenizer /path/to/hf-tokenizer [--tokenizer-model tokenizer.model] [--iteration 1000]
"""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import run_main
from pipeline.convert_native import DTYPES, convert_checkpoint, parse_size
from pipeline.hf_folder import DEFAULT_MAX_SHARD_BYTES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--load", required=True,
                        help="Megatron checkpoints folder (latest_checkpointed_iteration.txt names the iteration) "
                             "or one iter_NNNNNNN folder")
    parser.add_argument("--output", required=True, help="Hugging Face model folder to write")
    parser.add_argument("--iteration", type=int, default=None,
                        help="iteration to convert (default: the tracker's); only with a checkpoints folder")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=int, default=None,
                       help="true vocabulary size: the padding rows Megatron added are removed")
    vocab.add_argument("--tokenizer", default=None,
                       help="Hugging Face tokenizer folder: gives the true vocabulary size and special token ids, "
                            "and its files are copied into the output")
    parser.add_argument("--tokenizer-model", default=None,
                        help="the SentencePiece model the run was trained with (default: the one its train_args.json "
                             "or Megatron's copy in the checkpoint names): the --tokenizer folder must encode as it")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the written weights")
    parser.add_argument("--max-shard-size", default=str(DEFAULT_MAX_SHARD_BYTES),
                        help="largest safetensors shard, e.g. 5GB, 500MB, 2GiB (default: 5GB)")
    parser.add_argument("--force", action="store_true", help="convert again even if the output folder exists")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    convert_checkpoint(args.load, args.output, iteration=args.iteration, vocab_size=args.vocab_size,
                       tokenizer=args.tokenizer, tokenizer_model=args.tokenizer_model or None, dtype=args.dtype,
                       max_shard_bytes=parse_size(args.max_shard_size),
                       force=args.force, show_progress=not args.quiet,
                       log=(lambda _: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    run_main(main)
