#!/usr/bin/env python3
"""Create tiny Llama models laid out as converted seed runs, to stand in for real ones (demo, tests).

Each seed gets `<EXP_DIR>/runs/<TASK>/<PARAM>/<SIZE>/seed<SEED>/checkpoints_hf/iter_NNNNNNN/`
with config.json, model.safetensors (random weights from the seed) and the files of a Hugging Face
tokenizer folder (make hf-tokenizer's), the layout `make convert` produces. CPU only, no network, well
under a second per model; a model already there is left alone (the output is a function of the arguments).

    make_tiny_runs.py --exp-dir exp/demo --task demo --param tiny --size demo --seeds "1 2 3" --iter 1 \\
                      --tokenizer-dir exp/demo/tokenizer/hf
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from pipeline.errors import fail, run_main
from pipeline.hf_folder import tokenizer_files
from pipeline.paths import exp_dir, run_dir
from pipeline.soup import CHECKPOINTS_HF, DTYPES, iter_dir_name


def make_tiny_model(path: Path, seed: int, *, tokenizer_dir: Path, dtype: str = "float32", hidden: int = 32,
                    layers: int = 2, vocab: int | None = None) -> Path:
    """A random tiny LlamaForCausalLM saved at `path` with the files of the tokenizer folder `tokenizer_dir`
    copied beside it, as the converter does (its vocabulary: the tokenizer's size unless `vocab`); skipped when
    already there."""
    if (path / "config.json").is_file():
        return path
    if dtype not in DTYPES:
        fail(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = vocab or len(tokenizer)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # the norms start at 1.0 in every seed; make them differ like trained ones
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.1)
    model = model.to(getattr(torch, dtype))
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for source in tokenizer_files(Path(tokenizer_dir)):
        shutil.copyfile(source, tmp / source.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, path)
    return path


def make_tiny_runs(exp: Path, task: str, param: str, size: str, seeds: list[int], iteration: int,
                   **model_args) -> list[Path]:
    return [make_tiny_model(run_dir(exp, task, param, size, seed) / CHECKPOINTS_HF / iter_dir_name(iteration),
                            seed, **model_args) for seed in seeds]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", default=None, help="EXP_DIR the runs/ tree goes into (default: $EXP_DIR)")
    parser.add_argument("--task", required=True, help="TASK part of the run directories")
    parser.add_argument("--param", required=True, help="PARAM part of the run directories")
    parser.add_argument("--size", required=True, help="SIZE part of the run directories")
    parser.add_argument("--seeds", required=True, help="space-separated seeds, one tiny model each")
    parser.add_argument("--tokenizer-dir", required=True, type=Path,
                        help="the Hugging Face tokenizer folder the models carry (make hf-tokenizer's)")
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
                           tokenizer_dir=args.tokenizer_dir, dtype=args.dtype, hidden=args.hidden,
                           layers=args.layers)
    for path in paths:
        print(f"tiny run: {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
