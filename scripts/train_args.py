#!/usr/bin/env python3
"""Print the Megatron-LM arguments of a run, one per line (make args); with --write, record them in the run.

The list is derived, never edited: model and optimizer from params/<PARAM>.yaml, data from the
mixture list tasks/<TASK>/train_data_<SIZE>.sh (prefixes made absolute under EXP_DIR),
--train-iters = ceil(mixture tokens / seq_length / global_batch_size) from step 0 (see
pipeline/midtrain.py for why), --load = the run's own checkpoints once it saved, else its start/.

    train_args.py --exp-dir exp --task v4-dolmino-mix-1124 --param 7.7b_v4_3.5t_tokenizer_v3.1 --size 50B \\
                  --seed 42 --tokenizer-model /path/to/llm-jp-tokenizer-100k.ver3.1.model
    train_args.py ... --write      # pbs/train.pbs at job start: writes <run>/train_args.{txt,json} and
                                   # train_env.txt, prints <run>
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.errors import run_main
from pipeline.megatron_args import MODES, resolve
from pipeline.run_options import add_run_arguments, spec_from_args, write_resolved


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, required=True, help="SEED: --seed, and the run folder seed<SEED>")
    parser.add_argument("--mode", choices=MODES, default="train",
                        help="train: the training job; convert: the conversion job (torch_dist -> torch)")
    parser.add_argument("--load", default="", help="convert mode: the checkpoints folder to load "
                        "(default <run>/checkpoints)")
    parser.add_argument("--convert-save", default="", help="convert mode: --ckpt-convert-save folder "
                        "(default <run>/checkpoints_torch)")
    parser.add_argument("--world-size", type=int, default=None,
                        help="GPUs of the job: checks that the global batch splits over them")
    parser.add_argument("--json", action="store_true", help="print the full record (JSON) instead of the list")
    parser.add_argument("--write", action="store_true",
                        help="write <run>/train_args.txt and .json (train mode) and print the run folder only")
    parser.add_argument("--resolved-at", default="", help="what resolved them, for the record (e.g. the job id)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resolved = resolve(spec_from_args(args, args.seed, args.world_size), args.mode,
                       load=args.load or None, convert_save=args.convert_save or None)
    if args.write:
        if args.mode != "train":
            print("error: --write records the training arguments (mode train)", file=sys.stderr)
            return 2
        write_resolved(resolved, args.resolved_at or "train_args.py --write")
        print(resolved.spec.run_dir)
        return 0
    if args.json:
        print(json.dumps(resolved.record(), indent=2, sort_keys=True))
        return 0
    for note in resolved.notes:
        print(f"# {note}", file=sys.stderr)
    if resolved.features is not None:
        print(f"# Megatron-LM {resolved.features.megatron_path}: {resolved.features.describe()}", file=sys.stderr)
        for line in resolved.environment_lines().splitlines():
            print(f"# job environment: {line}", file=sys.stderr)
    start = resolved.start_info()
    print(f"# {resolved.total_tokens:,} tokens in {len(resolved.entries)} files -> --train-iters "
          f"{resolved.train_iters} from step 0 (loads {start['loads']}: {start['load_dir']})", file=sys.stderr)
    sys.stdout.write("".join(f"{a}\n" for a in resolved.args))
    return 0


if __name__ == "__main__":
    run_main(main)
