"""What upstream Megatron-LM's own save path wrote (tests/data/upstream_ckpt, made on a GPU by make gpu-check):
init, ckpt-info and the native converter read it, the soup of two converted runs verifies."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_script
from pipeline.convert_native import TorchDistReader, convert_checkpoint
from pipeline.hf_tokenizer import write_hf_tokenizer
from pipeline.megatron_ckpt import common_state_layout, common_state_summary, load_common_state
from pipeline.midtrain import init_run
from pipeline.paths import run_dir

DATA = Path(__file__).resolve().parent / "data" / "upstream_ckpt"
ITER, BASE_ITERS, BATCH = 50, 296, 8


@pytest.fixture
def source(tmp_path) -> Path:
    """A copy of seed 1's checkpoints folder (init links to it; the test data stays untouched)."""
    return Path(shutil.copytree(DATA / "mid-seed1", tmp_path / "source",
                                ignore=shutil.ignore_patterns("train_args.json")))


def test_ckpt_info_reads_the_in_shard_common_state(make, source):
    info = json.loads(run_script("ckpt_info", "--ckpt", str(source), "--json").stdout)
    assert info["common_state_layout"] == "in-shard" and info["iteration"] == ITER
    assert info["consumed_train_samples"] == ITER * BATCH
    assert info["optimizer_common_step"] == BASE_ITERS + ITER, "Adam's step went on from the base"
    assert info["scheduler"]["num_steps"] == ITER * BATCH
    table = make("ckpt-info", f"CKPT={source}").stdout
    assert "common state: in-shard" in table and "optimizer    step 346" in table


def test_init_rewrites_it_in_the_same_layout_keeping_weights_and_adam(tmp_path, source):
    status, record = init_run(tmp_path / "run", source)
    start = tmp_path / "run" / "start" / f"iter_{ITER:07d}"
    assert status == "initialised" and record["common_state_layout"] == "in-shard"
    assert common_state_layout(start) == "in-shard" and not (start / "common.pt").exists()
    assert (start / "__0_0.distcp").is_symlink(), "the shards are linked, never copied"
    after = common_state_summary(load_common_state(start))
    assert (after["iteration"], after["consumed_train_samples"], after["scheduler_num_steps"]) == (0, 0, 0)
    assert after["optimizer_common_step"] == BASE_ITERS + ITER
    assert load_common_state(source / f"iter_{ITER:07d}")["iteration"] == ITER, "the source is untouched"
    ours, theirs = TorchDistReader(start), TorchDistReader(source / f"iter_{ITER:07d}")
    names = [n for n in theirs.tensors() if n.startswith(("embedding", "decoder", "output_layer", "optimizer"))]
    assert names and any(n.startswith("optimizer.") for n in names)
    for name in names:
        assert torch.equal(ours.read(name), theirs.read(name)), name


def test_native_converter_and_soup_on_its_output(make, exp_dir, tmp_path):
    tokenizer = tmp_path / "hf-tokenizer"
    write_hf_tokenizer(DATA / "tokenizer.model", tokenizer)
    converted = []
    for seed in (1, 2):
        out = run_dir(exp_dir, "t", "tiny", "mid", seed) / "checkpoints_hf" / f"iter_{ITER:07d}"
        convert_checkpoint(DATA / f"mid-seed{seed}", out, tokenizer=tokenizer, dtype="fp32", show_progress=False,
                           log=lambda _: None)
        converted.append(out)
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(str(converted[0]))
    assert model.config.num_key_value_heads == 2 < model.config.num_attention_heads == 4
    assert model.config.vocab_size == 546 and not model.config.tie_word_embeddings
    make("soup-config", "TASK=t", "PARAM=tiny", "SIZE=mid", "SEEDS=1 2", "SOUP_NAME=upstream-soup",
         f"SOUP_CONFIG_DIR={tmp_path / 'merge'}", "SOUP_DTYPE=float32")
    make("soup", f"SOUP_CONFIG={tmp_path / 'merge' / 'upstream-soup.yaml'}")
    record = json.loads((exp_dir / "soups" / "upstream-soup" / "soup.json").read_text())
    assert record["verification"]["exact_float32_tensors"] == record["verification"]["tensors"] > 0


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_broken_shard_is_refused_naming_it(make, tmp_path, source, damage):
    shard = source / f"iter_{ITER:07d}" / "__0_0.distcp"
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:1000])
    want = f"{shard}: " + ("missing" if damage == "missing" else "truncated: 1,000 bytes")
    for target, knobs in (("init", ["PARAM=tiny", f"BASE_CKPT={source}"]), ("ckpt-info", [f"CKPT={source}"])):
        result = make(target, *knobs, check=False)
        assert result.returncode != 0 and want in result.stderr and "Traceback" not in result.stderr, target
    from pipeline.errors import PipelineError
    with pytest.raises(PipelineError, match="incomplete checkpoint"):
        convert_checkpoint(source, tmp_path / "hf", vocab_size=546, show_progress=False, log=lambda _: None)
