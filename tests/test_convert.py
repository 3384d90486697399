"""The native converter (scripts/convert_to_hf.py, pipeline.convert_native) on real torch_dist checkpoints.

A tiny transformers Llama (GQA 4 heads / 2 groups, untied, vocabulary 250) is written in Megatron's
layout by the test's own inverse mapping (tests/convert_helpers.py), padded to 256, and saved with
megatron-core's saver (also split as a TP2 x PP2 run stores it, with Adam moments) or with the common
state inside the shards; converted back, tensors and logits must be identical (fp32).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import run_script
from convert_helpers import (EXTRA_TENSORS, ITERATION, PADDED_VOCAB, fixture_checkpoints, load_hf, small_tokenizer,
                             token_ids)
from pipeline.errors import PipelineError
from pipeline.convert_native import TorchDistReader, check_hf_folder, convert_checkpoint
from pipeline.hf_folder import INDEX_FILE, RECORD_FILE
from pipeline.hf_tokenizer import BUILD_RECORD
from pipeline.megatron_ckpt import load_common_state, save_common_state

QUIET = dict(show_progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return fixture_checkpoints(tmp_path_factory)


def assert_same_model(reference, folder):
    converted = load_hf(folder)
    ref_sd, got_sd = reference.state_dict(), converted.state_dict()
    assert ref_sd.keys() == got_sd.keys()
    different = [k for k in ref_sd if not torch.equal(ref_sd[k], got_sd[k])]
    assert different == []
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, converted(ids).logits)
    return converted


@pytest.mark.parametrize("layout", ["split", "shards"])
def test_roundtrip_gives_identical_tensors_and_logits(ckpts, tmp_path, layout):
    result = convert_checkpoint(ckpts[layout], tmp_path / "hf", vocab_size=250, dtype="fp32", **QUIET)
    assert result.iteration == ITERATION and not result.skipped
    converted = assert_same_model(ckpts["model"], tmp_path / "hf")
    config = converted.config
    assert config.vocab_size == 250 and config.num_key_value_heads == 2 and not config.tie_word_embeddings
    assert config.rope_parameters["rope_theta"] == 500000.0
    record = json.loads((tmp_path / "hf" / RECORD_FILE).read_text())
    assert record["iteration"] == ITERATION and record["vocab_size"] == 250
    assert not list(tmp_path.glob(".hf.tmp.*")), "the temporary folder is gone"


def test_tied_embeddings(ckpts, tmp_path):
    convert_checkpoint(ckpts["tied"], tmp_path / "hf", vocab_size=250, dtype="fp32", **QUIET)
    converted = assert_same_model(ckpts["tied_model"], tmp_path / "hf")
    assert converted.config.tie_word_embeddings
    assert "lm_head.weight" not in json.loads((tmp_path / "hf" / INDEX_FILE).read_text())["weight_map"]


def test_stored_chunks_are_read_per_pipeline_stage(ckpts):
    reader = TorchDistReader(resolve_iter(ckpts["split"]))
    name = "decoder.layers.mlp.linear_fc1.weight"
    assert reader.row_segments(name) == [(0, 2), (2, 4)]
    assert len(reader.tensors()[name].chunks) == 8  # 2 stages x 2 TP ranks x [gate; up] pieces
    whole = reader.read(name)
    assert torch.equal(reader.read(name, (2, 4)), whole[2:4])
    gate = ckpts["model"].model.layers[3].mlp.gate_proj.weight
    assert torch.equal(whole[3, :96], gate.detach())


def resolve_iter(root):
    return root / f"iter_{ITERATION:07d}"


def test_bf16_sharded_output_is_checked(ckpts, tmp_path):
    out = tmp_path / "hf"
    convert_checkpoint(ckpts["split"], out, vocab_size=250, max_shard_bytes=200_000, **QUIET)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and all(p.name.endswith(f"-of-{len(shards):05d}.safetensors") for p in shards)
    converted = load_hf(out)
    assert converted.dtype == torch.bfloat16
    reference = ckpts["model"].state_dict()
    assert all(torch.equal(t, reference[k].to(torch.bfloat16)) for k, t in converted.state_dict().items())
    result = check_hf_folder(out, log=lambda _: None)
    assert result.shards == len(shards) and result.vocab_size == 250
    # a damaged shard is caught, naming the file
    with open(shards[-1], "r+b") as handle:
        handle.truncate(shards[-1].stat().st_size - 10)
    with pytest.raises(PipelineError, match=shards[-1].name):
        check_hf_folder(out, load_config=False, log=lambda _: None)


def test_cli_with_tokenizer_rerun_and_force(ckpts, tmp_path):
    from transformers import AutoTokenizer
    model, tok_dir = small_tokenizer(tmp_path / "tokenizers")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    out = tmp_path / "checkpoints_hf" / "iter_0000007"
    args = ["--load", str(ckpts["split"]), "--output", str(out), "--tokenizer", str(tok_dir), "--dtype", "fp32"]
    refused = run_script("convert_to_hf", *args, check=False)
    assert refused.returncode == 1 and "cannot tell which SentencePiece model it was trained with" in refused.stderr
    assert "TOKENIZER_MODEL" in refused.stderr and not out.exists()
    first = run_script("convert_to_hf", *args, "--tokenizer-model", str(model))
    assert "converting" in first.stderr and "padded 256" in first.stderr
    assert "40 probes encode as trained" in first.stderr
    vocab = len(tokenizer)
    converted = load_hf(out)
    check = json.loads((out / RECORD_FILE).read_text())["tokenizer_check"]
    assert check["passed"] and check["tokenizer_model_sha256"] and check["vocab_size"] == vocab
    assert converted.config.vocab_size == vocab and converted.config.eos_token_id == tokenizer.eos_token_id
    embed = ckpts["model"].model.embed_tokens.weight.detach()
    assert torch.equal(converted.model.embed_tokens.weight, embed[:vocab])
    copied = {p.name for p in tok_dir.iterdir()} - {BUILD_RECORD}
    assert copied <= {p.name for p in out.iterdir()} and BUILD_RECORD not in {p.name for p in out.iterdir()}
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = convert_checkpoint(ckpts["split"], out, tokenizer=tok_dir, tokenizer_model=model, dtype="fp32", **QUIET)
    assert again.skipped
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    convert_checkpoint(ckpts["split"], out, tokenizer=tok_dir, tokenizer_model=model, dtype="fp32", force=True,
                       **QUIET)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()
    assert {k: v for k, v in after.items() if k != RECORD_FILE} == {k: v for k, v in before.items() if k != RECORD_FILE}


def test_missing_tracker_and_iteration(ckpts, tmp_path):
    result = run_script("convert_to_hf", "--load", str(tmp_path), "--output", str(tmp_path / "hf"),
                        "--vocab-size", "250", check=False)
    assert result.returncode == 1 and "latest_checkpointed_iteration.txt: missing" in result.stderr
    with pytest.raises(PipelineError, match=r"iter_0000099: iteration folder missing \(iterations present in .*: 7\)"):
        convert_checkpoint(ckpts["split"], tmp_path / "hf", iteration=99, vocab_size=250, **QUIET)
    assert not (tmp_path / "hf").exists()


def test_unknown_tensor_names_are_listed(ckpts, tmp_path):
    with pytest.raises(PipelineError, match="2 unknown tensor name") as error:
        convert_checkpoint(ckpts["unknown"], tmp_path / "hf", vocab_size=250, **QUIET)
    for name in EXTRA_TENSORS:
        assert name in str(error.value)
    assert "optimizer" not in str(error.value), "Adam moments are not unknown"
    assert not (tmp_path / "hf").exists()


def copy_with_args(ckpts, tmp_path, **changes):
    root = tmp_path / "changed"
    shutil.copytree(ckpts["split"], root)
    iter_dir = resolve_iter(root)
    state = load_common_state(iter_dir)
    for key, value in changes.items():
        setattr(state["args"], key, value)
    save_common_state(state, iter_dir / "common.pt")
    return root


def test_shapes_not_matching_the_saved_arguments(ckpts, tmp_path):
    root = copy_with_args(ckpts, tmp_path, ffn_hidden_size=128, num_query_groups=4)
    with pytest.raises(PipelineError) as error:
        convert_checkpoint(root, tmp_path / "hf", vocab_size=250, **QUIET)
    text = str(error.value)
    assert "common.pt" in text and "do not match" in text
    assert "decoder.layers.mlp.linear_fc1.weight is [4, 192, 64], the arguments give [4, 256, 64]" in text
    assert "decoder.layers.self_attention.linear_qkv.weight is [4, 128, 64]" in text


@pytest.mark.parametrize("changes, message", [
    ({"normalization": "LayerNorm"}, "args.normalization = 'LayerNorm'"),
    ({"swiglu": False}, "SwiGLU"),
    ({"add_bias_linear": True}, "linear biases"),
])
def test_not_a_llama_model(ckpts, tmp_path, changes, message):
    with pytest.raises(PipelineError, match=message):
        convert_checkpoint(copy_with_args(ckpts, tmp_path, **changes), tmp_path / "hf", vocab_size=250, **QUIET)


def test_vocabulary_size_is_required_and_bounded(ckpts, tmp_path):
    with pytest.raises(PipelineError, match="--vocab-size N or --tokenizer"):
        convert_checkpoint(ckpts["split"], tmp_path / "hf", **QUIET)
    with pytest.raises(PipelineError, match=f"padded vocabulary {PADDED_VOCAB}"):
        convert_checkpoint(ckpts["split"], tmp_path / "hf", vocab_size=300, **QUIET)
    assert not (tmp_path / "hf").exists()
