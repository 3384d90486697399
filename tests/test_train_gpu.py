"""The midtraining start with the real engine: pretrain a tiny GPT, make init, make train, check the counters.

Skipped unless this machine has a GPU and TRAIN_GPU_ENV_DIR names a training environment (make env:
its activate.sh provides Megatron-LM, TransformerEngine and a CUDA torch); uses the shared v3.1
tokenizer model. On a GPU machine with the environment:

    TRAIN_GPU_ENV_DIR=/path/to/env .venv/bin/python -m pytest -q tests/test_train_gpu.py

What it shows (observed with the real engine): the run starts at iteration 1 of
its own --train-iters with consumed samples counted from 0, its loss starts where pretraining left
off (weights loaded), and its final checkpoint's optimizer step continues the pretraining one.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import shared_path
from pipeline.datalist import Entry
from pipeline.megatron_args import RunSpec, resolve
from train_helpers import data_list, read_json, write_tokenized

ENV_DIR = os.environ.get("TRAIN_GPU_ENV_DIR", "")
PRE_ITERS, MID_ITERS = 20, 10
LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+) \|.*?consumed samples:\s+(\d+).*?lm loss: ([0-9.E+-]+)")


def gpus() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU") for line in result.stdout.splitlines())


pytestmark = pytest.mark.skipif(not ENV_DIR or gpus() == 0,
                                reason="needs a GPU and TRAIN_GPU_ENV_DIR=<training environment with activate.sh>")


def iterations(log: str) -> list[tuple[int, int, int, float]]:
    return [(int(a), int(b), int(c), float(d)) for a, b, c, d in LINE.findall(log)]


def test_midtraining_starts_at_step_zero_with_pretrained_weights(make, exp_dir, tmp_path):
    tokenizer = shared_path("tokenizers", "llm-jp-tokenizer-100k.ver3.1.model")
    tokens = 1024 * MID_ITERS          # tiny params: seq 128 x global batch 8 = 1024 tokens per iteration
    mixture = data_list(tmp_path / "mix.sh", [Entry(w, p) for w, p in
                        ((tokens * 3 // 4, "tok/a_text_document"), (tokens // 4, "tok/b_text_document"))])
    write_tokenized(exp_dir, {"tok/a_text_document": 30000, "tok/b_text_document": 12000})

    # pretraining: the run's own arguments with a plain --save and PRE_ITERS iterations
    spec = RunSpec(exp=exp_dir, task="gpu", param="tiny", size="s", seed=1, data_list=mixture,
                   tokenizer_model=str(tokenizer), env_dir=ENV_DIR, launcher="torchrun")
    args, pre = resolve(spec).args, tmp_path / "pretrain"
    drop_pairs = {"--load", "--save", "--train-iters", "--lr-decay-iters", "--save-interval"}
    drop_flags = {"--exit-on-missing-checkpoint", "--override-opt_param-scheduler"}
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in drop_pairs:
            skip = True
        elif arg not in drop_flags:
            kept.append(arg)
    kept += ["--train-iters", str(PRE_ITERS), "--lr-decay-iters", str(PRE_ITERS), "--save", str(pre),
             "--save-interval", str(PRE_ITERS)]
    script = (f'source "{ENV_DIR}/activate.sh" && cd "{tmp_path}" && python -m torch.distributed.run '
              f'--nproc-per-node 1 "$MEGATRON_PATH/pretrain_gpt.py" "$@"')
    result = subprocess.run(["bash", "-c", script, "pretrain", *kept], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    pre_lines = iterations(result.stdout)
    assert pre_lines[-1][0] == PRE_ITERS

    knobs = ["TASK=gpu", "PARAM=tiny", "SIZE=s", "SEED=1", f"DATA_LIST={mixture}", f"TOKENIZER_MODEL={tokenizer}",
             f"ENV_DIR={ENV_DIR}"]
    make("init", *knobs, f"BASE_CKPT={pre}")
    make("train", *knobs, "SCHEDULER=local", "LAUNCHER=torchrun", "GPUS_PER_NODE=1", timeout=1800)
    run = exp_dir / "runs" / "gpu" / "tiny" / "s" / "seed1"
    lines = iterations("".join(p.read_text() for p in run.glob("train-*.out")))
    assert lines[0][:3] == (1, MID_ITERS, 8), "starts at step 0 of its own iterations, samples counted from 0"
    assert lines[-1][:3] == (MID_ITERS, MID_ITERS, 8 * MID_ITERS)
    assert lines[0][3] < pre_lines[0][3] - 1.0, "the pretrained weights were loaded"
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(MID_ITERS)
    info = make("ckpt-info", f"CKPT={run}/checkpoints").stdout
    assert f"iteration    {MID_ITERS} " in info and f"consumed     train {8 * MID_ITERS} samples" in info
    assert f"optimizer    step {PRE_ITERS + MID_ITERS}" in info, "Adam's step continues from pretraining"
    assert read_json(run / "train_args.json")["train_iters"] == MID_ITERS
