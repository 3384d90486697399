"""Reading Megatron checkpoints without Megatron (pipeline.megatron_ckpt), on real torch_dist layouts."""
from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import SCRIPTS
from megatron_fixture import write_torch_dist
from pipeline.errors import PipelineError
from pipeline.megatron_ckpt import (common_state_summary, load_common_state, resolve_checkpoint,
                                    save_common_state)


def megatron_enum():
    from megatron.core.transformer.enums import AttnBackend
    return AttnBackend.flash


def common_state(iteration=30):
    args = argparse.Namespace(num_layers=2, hidden_size=8, consumed_train_samples=240, consumed_valid_samples=0,
                              iteration=0, attention_backend=megatron_enum(), params_dtype=torch.bfloat16,
                              tensor_model_parallel_size=1, pipeline_model_parallel_size=1, world_size=1)
    return {"args": args, "iteration": iteration, "checkpoint_version": 3.0,
            "opt_param_scheduler": {"num_steps": 240, "max_lr": 3e-4},
            "optimizer": {"optimizer": {"state": {"common_step": 30}, "param_groups": []}},
            "num_floating_point_operations_so_far": 123.0}


@pytest.fixture(scope="module")
def legacy_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy") / "checkpoints"
    write_torch_dist(root, 30, {"decoder.w": torch.arange(12.0).reshape(3, 4)}, common_state())
    return root


@pytest.fixture(scope="module")
def newer_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("newer") / "checkpoints"
    write_torch_dist(root, 30, {"decoder.w": torch.ones(3, 4)}, common_state(), common_in_shards=True)
    return root


def read_without_megatron(iter_dir) -> str:
    """Load the common state in a process where `import megatron` fails, print the summary."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["megatron"] = None
        sys.path.insert(0, {str(SCRIPTS)!r})
        from pipeline.megatron_ckpt import load_common_state, common_state_summary
        state = load_common_state({str(iter_dir)!r})
        print(repr(state["args"].attention_backend), common_state_summary(state))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_resolve_from_tracker_and_from_iter_dir(legacy_ckpt):
    ckpt = resolve_checkpoint(legacy_ckpt)
    assert ckpt.iteration == 30 and ckpt.format == "torch_dist" and ckpt.iter_dir.name == "iter_0000030"
    assert {p.name for p in ckpt.iter_dir.iterdir()} >= {".metadata", "__0_0.distcp", "common.pt"}
    assert resolve_checkpoint(ckpt.iter_dir).root == legacy_ckpt


def test_resolve_errors_name_the_file(tmp_path, legacy_ckpt):
    with pytest.raises(PipelineError, match="latest_checkpointed_iteration.txt: missing"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(PipelineError, match=r"iter_0000031: iteration folder missing .*: 30\)"):
        resolve_checkpoint(legacy_ckpt, iteration=31)
    (tmp_path / "iter_0000005").mkdir()
    with pytest.raises(PipelineError, match="neither a torch_dist"):
        resolve_checkpoint(tmp_path / "iter_0000005")


@pytest.mark.parametrize("which", ["legacy_ckpt", "newer_ckpt"])
def test_common_state_without_megatron(request, which):
    ckpt = resolve_checkpoint(request.getfixturevalue(which))
    out = read_without_megatron(ckpt.iter_dir)
    assert "megatron.core.transformer.enums.AttnBackend(1)" in out
    assert "'iteration': 30" in out and "'consumed_train_samples': 240" in out
    assert "'scheduler_num_steps': 240" in out and "'optimizer_common_step': 30" in out


def test_rewritten_common_state_loads_in_real_megatron_classes(legacy_ckpt, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["megatron"] = None
        sys.path.insert(0, {str(SCRIPTS)!r})
        from pipeline.megatron_ckpt import load_common_state, save_common_state
        state = load_common_state({str(resolve_checkpoint(legacy_ckpt).iter_dir)!r})
        state["iteration"] = 0
        state["args"].consumed_train_samples = 0
        save_common_state(state, {str(tmp_path / "common.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    state = torch.load(tmp_path / "common.pt", weights_only=False)  # the real classes are importable here
    assert state["iteration"] == 0 and state["args"].consumed_train_samples == 0
    assert state["args"].attention_backend is megatron_enum()
    assert state["args"].params_dtype is torch.bfloat16
    assert state["opt_param_scheduler"] == {"num_steps": 240, "max_lr": 3e-4}
    summary = common_state_summary(load_common_state(resolve_checkpoint(legacy_ckpt).iter_dir))
    assert summary["iteration"] == 30, "the original is untouched"


def test_save_is_atomic(tmp_path):
    target = tmp_path / "common.pt"
    with pytest.raises(Exception):
        save_common_state({"bad": lambda: None}, target)  # lambdas cannot be pickled
    assert list(tmp_path.iterdir()) == []
