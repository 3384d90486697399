#!/usr/bin/env python3
"""Create tiny Llama models laid out as converted seed runs, to stand in for real ones (demo, tests).

Each seed gets `<EXP_DIR>/runs/<TASK>/<PARAM>/<SIZE>/seed<SEED>/checkpoints_hf/iter_NNNNNNN/`
with config.json, model.safetensors (random weights from the seed) and a small word-level
tokenizer, the layout `make convert` produces. CPU only, no network, well under a second per
model; a model already there is left alone (the output is a function of the arguments).

    make_tiny_runs.py --exp-dir exp/demo --task demo --param tiny --size demo --seeds "1 2 3" --iter 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from pipeline.errors import fail, run_main
from pipeline.paths import exp_dir, run_dir
from pipeline.soup import CHECKPOINTS_HF, DTYPES, iter_dir_name

WORDS = ("the a of to and in is it that for on with as was by this be are from at or an have not but "
         "one two three four five six seven eight nine ten model soup seed run data token").split()


def tiny_tokenizer():
    """A word-level tokenizer over WORDS with <unk>, <s>, </s> (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def make_tiny_model(path: Path, seed: int, *, dtype: str = "float32", hidden: int = 32, layers: int = 2,
                    vocab: int = 64, tokenizer=None) -> Path:
    """A random tiny LlamaForCausalLM (and tokenizer) saved at `path`; skipped when already there."""
    if (path / "config.json").is_file():
        return path
    if dtype not in DTYPES:
        fail(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # the norms start at 1.0 in every seed; make them differ like trained ones
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.1)
    model = model.to(getattr(torch, dtype))
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tokenizer or tiny_tokenizer()).save_pretrained(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, path)
    return path


def make_tiny_runs(exp: Path, task: str, param: str, size: str, seeds: list[int], iteration: int,
                   **model_args) -> list[Path]:
    tokenizer = tiny_tokenizer()
    return [make_tiny_model(run_dir(exp, task, param, size, seed) / CHECKPOINTS_HF / iter_dir_name(iteration),
                            seed, tokenizer=tokenizer, **model_args) for seed in seeds]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", default=None, help="EXP_DIR the runs/ tree goes into (default: $EXP_DIR)")
    parser.add_argument("--task", required=True, help="TASK part of the run directories")
    parser.add_argument("--param", required=True, help="PARAM part of the run directories")
    parser.add_argument("--size", required=True, help="SIZE part of the run directories")
    parser.add_argument("--seeds", required=True, help="space-separated seeds, one tiny model each")
    parser.add_argument("--iter", type=int, default=1, help="iteration of the fake converted checkpoint")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype the weights are saved in")
    parser.add_argument("--hidden", type=int, default=32, help="hidden size (attention: 4 heads, 2 kv heads)")
    parser.add_argument("--layers", type=int, default=2, help="number of decoder layers")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split()]
    except ValueError:
        fail(f"--seeds {args.seeds!r}: expected whole numbers separated by spaces")
    if not seeds or args.hidden % 4 or args.hidden <= 0 or args.layers <= 0 or args.iter < 0:
        fail("--seeds must name at least one seed; --hidden a positive multiple of 4; --layers >= 1; --iter >= 0")
    paths = make_tiny_runs(exp_dir(args.exp_dir), args.task, args.param, args.size, seeds, args.iter,
                           dtype=args.dtype, hidden=args.hidden, layers=args.layers)
    for path in paths:
        print(f"tiny run: {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
