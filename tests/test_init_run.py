"""make init: the midtraining start, on checkpoints written by megatron-core in the real torch_dist layout."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import run_script
from init_run import base_for
from pipeline.errors import PipelineError
from pipeline.megatron_ckpt import load_common_state
from pipeline.midtrain import RunLayout, init_run
from train_helpers import CONSUMED, PRETRAIN_ITER, TENSORS, pretrained_checkpoint, snapshot

V4 = "7.7b_v4_3.5t_tokenizer_v3.1"
TASK = "v4-dolmino-mix-1124"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrained_checkpoint(tmp_path_factory)


def run_of(exp, param=V4, task=TASK, size="50B", seed=42):
    return exp / "runs" / task / param / size / f"seed{seed}"


def init(exp, *extra, check=True, param="tiny", task=TASK, size="50B", seed=42):
    return run_script("init_run", "--exp-dir", str(exp), "--task", task, "--param", param, "--size", size,
                      "--seed", str(seed), *extra, check=check)


def test_start_loads_in_megatron_with_counters_reset_and_weights_kept(pretrained, tmp_path):
    before = snapshot(pretrained)
    init(tmp_path, "--base-ckpt", str(pretrained))
    layout = RunLayout(run_of(tmp_path, "tiny"))
    start_iter = layout.start / f"iter_{PRETRAIN_ITER:07d}"
    assert (layout.start / "latest_checkpointed_iteration.txt").read_text() == str(PRETRAIN_ITER)
    source_iter = pretrained / f"iter_{PRETRAIN_ITER:07d}"
    shards = {p.name for p in source_iter.iterdir()} - {"common.pt"}
    assert shards >= {".metadata", "__0_0.distcp", "metadata.json"}
    for name in shards:
        link = start_iter / name
        assert link.is_symlink() and os.path.realpath(link) == os.path.realpath(source_iter / name), name
    assert not (start_iter / "common.pt").is_symlink()

    # megatron-core is importable here: the classes are the real ones, as in a training job
    from megatron.core.dist_checkpointing import load_common_state_dict
    from megatron.core.transformer.enums import AttnBackend
    state = load_common_state_dict(str(start_iter))
    assert state["iteration"] == 0 and state["args"].iteration == 0
    assert state["args"].consumed_train_samples == 0 and state["args"].consumed_valid_samples == 0
    assert state["opt_param_scheduler"]["num_steps"] == 0
    assert state["opt_param_scheduler"]["max_lr"] == 3e-4, "the rest of the scheduler state is kept"
    assert state["optimizer"]["optimizer"]["state"]["common_step"] == PRETRAIN_ITER, "Adam's step continues"
    assert state["args"].attention_backend is AttnBackend.flash and state["args"].params_dtype is torch.bfloat16

    # the weights and Adam moments are read through the links with PyTorch's own checkpoint reader
    import torch.distributed.checkpoint as dcp
    loaded = {k: torch.zeros_like(v) for k, v in TENSORS.items()}
    dcp.load(loaded, storage_reader=dcp.FileSystemReader(str(start_iter)), no_dist=True)
    for key, tensor in TENSORS.items():
        assert torch.equal(loaded[key], tensor), key

    record = json.loads(layout.init_record.read_text())
    assert record["source"]["iteration"] == PRETRAIN_ITER and record["mechanism"] == "reset-counters"
    assert f"args.consumed_train_samples: {CONSUMED} -> 0" in record["changes"]
    assert snapshot(pretrained) == before, "the pretrained checkpoint is untouched"
    assert load_common_state(source_iter)["iteration"] == PRETRAIN_ITER


def test_rerun_is_a_no_op_and_another_source_needs_force(pretrained, tmp_path):
    run = run_of(tmp_path, "tiny")
    assert init_run(run, pretrained)[0] == "initialised"
    common = run / "start" / f"iter_{PRETRAIN_ITER:07d}" / "common.pt"
    stamp = (common.stat().st_mtime_ns, common.read_bytes())
    assert init_run(run, pretrained / f"iter_{PRETRAIN_ITER:07d}")[0] == "unchanged"
    assert (common.stat().st_mtime_ns, common.read_bytes()) == stamp

    other = tmp_path / "other" / "checkpoints"
    (other / "iter_0000030").mkdir(parents=True)
    for path in (pretrained / "iter_0000030").iterdir():
        (other / "iter_0000030" / path.name).write_bytes(path.read_bytes())
    (other / "latest_checkpointed_iteration.txt").write_text("30")
    with pytest.raises(PipelineError, match="already initialised from .*FORCE=1 replaces it"):
        init_run(run, other)
    assert init_run(run, other, force=True)[0] == "replaced"
    assert os.path.realpath(common.parent / "__0_0.distcp").startswith(str(other))
    assert load_common_state(common.parent)["iteration"] == 0
    assert not list(run.glob(".start.*")), "no temporary folder left behind"


def test_run_with_its_own_checkpoints_is_not_reinitialised(pretrained, tmp_path):
    run = run_of(tmp_path, "tiny")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("300")
    result = init(tmp_path, "--base-ckpt", str(pretrained), check=False)
    assert result.returncode != 0 and "already saved checkpoints (iteration 300)" in result.stderr
    assert not (run / "start").exists()


def test_v4_params_start_at_432581_by_default(pretrained, tmp_path):
    assert base_for(tmp_path, V4, 42, str(pretrained), None) == (pretrained, 432581, False)
    assert base_for(tmp_path, V4, 42, str(pretrained), 30) == (pretrained, 30, False)
    assert base_for(tmp_path, "tiny", 42, str(pretrained), None) == (pretrained, None, False)
    with pytest.raises(PipelineError, match=r"iter_0432581: iteration folder missing .*: 30\)"):
        init_run(run_of(tmp_path, V4), pretrained, 432581)
    with pytest.raises(PipelineError, match="BASE_CKPT is not set.*iteration 432581"):
        base_for(tmp_path, V4, 42, "", None)


def test_curriculum_starts_from_the_earlier_stage_final_checkpoint(pretrained, tmp_path):
    # the first stage's run (seed 42) has trained: its checkpoints/ hold iteration 30, its final one
    stage1 = run_of(tmp_path, V4)
    (stage1 / "checkpoints").mkdir(parents=True)
    os.symlink(pretrained / "iter_0000030", stage1 / "checkpoints" / "iter_0000030")
    (stage1 / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("30")
    (stage1 / "train_args.json").write_text(json.dumps({"train_iters": 40}))
    curriculum = f"{V4}_curriculum"
    source, iteration, from_run = base_for(tmp_path, curriculum, 42, "", None)
    assert (source, iteration, from_run) == (stage1, None, True)
    stage2 = RunLayout(run_of(tmp_path, curriculum, "v4-megamath-pro-max", "80B"))
    with pytest.raises(PipelineError, match=r"trains 40 iterations \(not finished\?\). Pass BASE_ITER=30"):
        init_run(stage2.root, source, iteration, from_run=True)
    (stage1 / "train_args.json").write_text(json.dumps({"train_iters": 30}))
    init_run(stage2.root, source, iteration, from_run=True)
    record = json.loads(stage2.init_record.read_text())
    assert record["source"]["iteration"] == 30
    assert load_common_state(stage2.start / "iter_0000030")["iteration"] == 0
    assert not stage2.checkpoints.exists(), "the run's own saves never share a folder with the start links"
    other_seed = init(tmp_path, param=curriculum, task="v4-megamath-pro-max", size="80B", seed=7, check=False)
    assert other_seed.returncode != 0 and "seed7: not found" in other_seed.stderr


def test_torch_format_and_release_are_refused(tmp_path):
    folder = tmp_path / "ck" / "iter_0000005" / "mp_rank_00"
    folder.mkdir(parents=True)
    torch.save({"iteration": 5}, folder / "model_optim_rng.pt")
    with pytest.raises(PipelineError, match="torch-format checkpoint"):
        init_run(tmp_path / "run", folder.parent)
    with pytest.raises(PipelineError, match="BASE_CKPT=.*nowhere: not found"):
        init_run(tmp_path / "run", tmp_path / "nowhere")


def test_make_init(make, pretrained, exp_dir):
    make("init", "PARAM=tiny", "SEED=3", f"BASE_CKPT={pretrained}")
    assert RunLayout(run_of(exp_dir, "tiny", seed=3)).is_initialised()
    again = make("init", "PARAM=tiny", "SEED=3")      # a chain's init job on an initialised run: a no-op
    assert "already initialised from" in again.stdout
    refused = make("init", "PARAM=tiny", "SEED=3", f"BASE_CKPT={pretrained}", "BASE_ITER=31", check=False)
    assert refused.returncode != 0 and "iteration folder missing" in refused.stderr
