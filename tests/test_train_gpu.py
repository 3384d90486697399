"""The training half with the real engine on a GPU: tests/gpu/gpu_check.py (make gpu-check) must pass whole.

Skipped unless this machine has a GPU and TRAIN_GPU_MEGATRON_PATH names a Megatron-LM checkout (TRAIN_GPU_PYTHON:
the Python that runs it, default python3; TRAIN_GPU_TOKENIZER_MODEL: default one trained on the sample). The
pipeline's own Python runs the test (the repo venv, or PIPELINE_PYTHON on a machine without one):

    TRAIN_GPU_MEGATRON_PATH=/path/to/Megatron-LM PIPELINE_PYTHON=python3 python3 -m pytest -s tests/test_train_gpu.py

What it shows (see the check's rows): a tiny base pretrained from random weights; midtraining runs started
from it with make init start at iteration 1 with consumed samples 0, continue its loss, load the Adam state
(its step continues), follow the params' LR schedule and run the derived number of iterations; the native
conversion reproduces Megatron's own forward pass (fp32, max abs logit difference <= 1e-4); the soup verifies;
the seeds and the soup, fed held-out text through their own Hugging Face tokenizer (make hf-tokenizer's), give
the loss they give on SentencePiece's ids (within 1e-3), near the runs' last training losses.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

MEGATRON = os.environ.get("TRAIN_GPU_MEGATRON_PATH", "")


def gpus() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU") for line in result.stdout.splitlines())


pytestmark = pytest.mark.skipif(not MEGATRON or gpus() == 0,
                                reason="needs a GPU and TRAIN_GPU_MEGATRON_PATH=<Megatron-LM checkout>")


def test_gpu_check_passes_every_row(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "tests" / "gpu" / "gpu_check.py"), "--megatron-path", MEGATRON,
           "--work-dir", str(tmp_path / "work"), "--train-python", os.environ.get("TRAIN_GPU_PYTHON", "python3"),
           "--tokenizer-model", os.environ.get("TRAIN_GPU_TOKENIZER_MODEL", ""), "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    print(result.stdout[-6000:])
    rows = json.loads(out.read_text())["rows"]
    names = {r["name"] for r in rows}
    assert {"base_pretrain", "starts_at_step_0", "loss_continues_base", "optimizer_loaded", "lr_schedule",
            "iterations", "hf_tokenizer", "logits_vs_megatron", "soup", "tokenizer_loss", "report_status"} <= names
    failed = [f"{r['name']}: {r['status']} {r['figure']} {r['detail']}" for r in rows if r["status"] != "PASS"]
    assert not failed and result.returncode == 0, "\n".join(failed) + result.stderr[-3000:]
