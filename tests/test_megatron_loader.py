"""A Megatron-LM checkout's own loader reads what make init wrote, on the CPU, in both layouts: the in-shard
common state of upstream's save path (tests/data/upstream_ckpt) and the legacy common.pt of megatron-core's
(0.16, from PyPI). Skipped unless MEGATRON_LOADER_PATH names a checkout and MEGATRON_LOADER_PYTHON the
Python that imports it (torch; TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set, as the environment sets it):

    MEGATRON_LOADER_PATH=/path/to/Megatron-LM MEGATRON_LOADER_PYTHON=/path/to/python .venv/bin/python -m pytest \\
        tests/test_megatron_loader.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.midtrain import init_run

HERE = Path(__file__).resolve().parent
MEGATRON, PYTHON = os.environ.get("MEGATRON_LOADER_PATH", ""), os.environ.get("MEGATRON_LOADER_PYTHON", "")
pytestmark = pytest.mark.skipif(not (MEGATRON and PYTHON),
                                reason="needs MEGATRON_LOADER_PATH and MEGATRON_LOADER_PYTHON")


def load_with_megatron(start: Path) -> dict:
    result = subprocess.run([PYTHON, str(HERE / "gpu" / "megatron_load_start.py"), MEGATRON, str(start)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def test_in_shard_start(tmp_path):
    serialization = Path(MEGATRON) / "megatron" / "core" / "dist_checkpointing" / "serialization.py"
    if '"common_state"' not in serialization.read_text():
        pytest.skip("this Megatron predates the in-shard common state (it writes and reads only common.pt)")
    source = shutil.copytree(HERE / "data" / "upstream_ckpt" / "mid-seed1", tmp_path / "source")
    init_run(tmp_path / "run", source)
    found = load_with_megatron(tmp_path / "run" / "start" / "iter_0000050")
    assert (found["iteration"], found["args_iteration"], found["consumed_train_samples"],
            found["scheduler_num_steps"]) == (0, 0, 0, 0)
    assert any(name.startswith("optimizer.") for name in found["tensors"])


def test_legacy_start(tmp_path):
    made = subprocess.run([sys.executable, str(HERE / "megatron_gpt_helper.py"), "cpu", str(tmp_path / "legacy")],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    init_run(tmp_path / "run", tmp_path / "legacy" / "checkpoints")
    found = load_with_megatron(tmp_path / "run" / "start" / "iter_0000005")
    assert (found["iteration"], found["args_iteration"]) == (0, 0) and found["tensors"]
