"""make ckpt-info: describe a Megatron checkpoint on the CPU without Megatron."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import SCRIPTS, run_script
from pipeline.midtrain import init_run
from train_helpers import CONSUMED, PRETRAIN_ITER, pretrained_checkpoint


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrained_checkpoint(tmp_path_factory)


def info_without_megatron(path) -> dict:
    """ckpt_info in a process where `import megatron` fails, as on a login node without the environment."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["megatron"] = None
        sys.path.insert(0, {str(SCRIPTS)!r})
        from pipeline.ckpt_describe import describe
        print(json.dumps(describe({str(path)!r})))
    """)
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_pretrained_checkpoint_fields(pretrained):
    info = info_without_megatron(pretrained)
    assert info["format"] == "torch_dist" and info["tracker"] == PRETRAIN_ITER == info["iteration"]
    assert info["consumed_train_samples"] == CONSUMED and info["consumed_valid_samples"] == 16
    assert (info["tensor_model_parallel_size"], info["pipeline_model_parallel_size"], info["data_parallel_size"]) == \
        (1, 1, 1)
    assert info["scheduler"]["num_steps"] == CONSUMED and info["scheduler"]["decay_style"] == "cosine"
    assert info["optimizer_common_step"] == PRETRAIN_ITER and info["size_bytes"] > 0 and info["symlinked_files"] == 0
    assert info["args"]["params_dtype"] == "torch.bfloat16" and info["args"]["global_batch_size"] == 8


def test_make_ckpt_info_on_a_start_folder_and_a_run_folder(make, pretrained, exp_dir):
    run = exp_dir / "runs" / "t" / "tiny" / "s" / "seed1"
    init_run(run, pretrained)
    table = make("ckpt-info", f"CKPT={run}").stdout
    assert "iteration    0 (common state; folder 30, args.iteration 0)" in table
    assert "tracker      30" in table and "consumed     train 0 samples" in table
    assert "scheduler    num_steps 0, max_lr 0.0003" in table and "optimizer    step 30" in table
    assert "symlinked" in table and f"made by make init from {pretrained}/iter_0000030 (iteration 30)" in table
    original = make("ckpt-info", f"CKPT={pretrained}/iter_0000030").stdout
    assert "iteration    30 " in original and f"consumed     train {CONSUMED} samples" in original
    assert "parallel     TP 1, PP 1, DP 1 (world size 1)" in original


def test_torch_format_is_read_too(tmp_path):
    args = argparse.Namespace(tensor_model_parallel_size=2, pipeline_model_parallel_size=1, world_size=8,
                              consumed_train_samples=4096, iteration=0, seq_length=16)
    folder = tmp_path / "ck" / "iter_0000512" / "mp_rank_00"
    folder.mkdir(parents=True)
    torch.save({"args": args, "iteration": 512, "model": {"w": torch.ones(4)},
                "opt_param_scheduler": {"num_steps": 4096, "max_lr": 1e-4}}, folder / "model_optim_rng.pt")
    (tmp_path / "ck" / "latest_checkpointed_iteration.txt").write_text("512")
    info = json.loads(run_script("ckpt_info", "--ckpt", str(tmp_path / "ck"), "--json").stdout)
    assert info["format"] == "torch" and info["iteration"] == 512 and info["consumed_train_samples"] == 4096
    assert info["data_parallel_size"] == 4 and "model" not in info["keys"]


def test_errors_name_the_file(make, tmp_path):
    (tmp_path / "empty").mkdir()
    result = make("ckpt-info", f"CKPT={tmp_path}/empty", check=False)
    assert result.returncode != 0 and "latest_checkpointed_iteration.txt: missing" in result.stderr
    assert "set CKPT=" in make("ckpt-info", check=False).stderr
