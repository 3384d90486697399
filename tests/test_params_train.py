"""params/*.yaml: the shipped configurations and their validation (pipeline.params)."""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO
from pipeline.errors import PipelineError
from pipeline.params import load_params, load_train_params, parse_train_params, train_iterations

V4 = "7.7b_v4_3.5t_tokenizer_v3.1"


def test_v4_configuration_has_the_earlier_values():
    p = load_train_params(V4)
    m = p.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups) == \
        (32, 4096, 14336, 32, 8)
    assert (p.seq_length, m.max_position_embeddings, m.rotary_base, m.norm_epsilon) == (8192, 8192, 500000, 1e-5)
    assert (m.normalization, m.activation, m.untie_embeddings_and_output_weights, m.bias_linear) == \
        ("RMSNorm", "swiglu", True, False)
    o = p.optimizer
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.clip_grad, o.weight_decay) == (0.9, 0.95, 1e-8, 1.0, 0.1)
    par = p.parallel
    assert (par.micro_batch_size, p.global_batch_size, par.tensor, par.pipeline, par.context) == (1, 1024, 1, 1, 1)
    assert par.sequence_parallel and par.distributed_optimizer
    imp = p.implementation
    assert (imp.precision, imp.transformer_impl, imp.attention_backend) == ("bf16", "transformer_engine", "flash")
    assert (p.schedule.style, p.schedule.lr) == ("constant", 3e-5)
    assert (p.start.kind, p.start.iteration) == ("pretrained", 432581)


def test_curriculum_decays_to_zero_from_the_first_stage_run():
    p = load_train_params(f"{V4}_curriculum")
    assert p.schedule.style == "linear_to_zero" and p.schedule.lr == 3e-5
    assert p.start.kind == "run"
    assert (p.start.run.task, p.start.run.param, p.start.run.size) == ("v4-dolmino-mix-1124", V4, "50B")
    base = load_train_params(V4)
    assert p.model == base.model and p.parallel == base.parallel and p.optimizer == base.optimizer


def test_tiny_is_small_and_consistent():
    p = load_train_params("tiny")
    assert p.model.num_layers <= 4 and p.model.hidden_size <= 128 and p.start.iteration is None
    assert p.check_world_size(1, "one GPU") == 1


@pytest.mark.parametrize("name", [V4, f"{V4}_curriculum", "tiny"])
def test_contract_keys_stay_top_level(name):
    raw = load_params(name)
    assert raw.get("seq_length", int) > 0 and raw.get("global_batch_size", int) > 0
    assert train_iterations(57_874_242_563, load_params(V4)) == 6900


def _doc(**changes):
    doc = yaml.safe_load((REPO / "params" / f"{V4}.yaml").read_text())
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return doc


@pytest.mark.parametrize("changes, message", [
    ({"model__num_heads": 4}, r"model: unknown key\(s\) num_heads"),
    ({"schedule__style": "cosine"}, r"schedule.style: 'cosine' is not one of constant, linear_to_zero"),
    ({"model__num_query_groups": 5}, r"model.num_query_groups: 32 heads are not divisible into 5"),
    ({"global_batch_size": 1000, "parallel__micro_batch_size": 3}, r"global_batch_size: 1000 is not a multiple"),
    ({"model__norm_epsilon": "1e-5"}, r"model.norm_epsilon: expected int or float, got str"),
    ({"seq_length": 16384}, r"seq_length: 16384 exceeds model.max_position_embeddings"),
    ({"parallel__pipeline": 3}, r"parallel.pipeline: 32 layers do not split into 3"),
    ({"start__from": "scratch"}, r"start.from: 'scratch' is not one of pretrained, run"),
    ({"optimizer__adam_beta2": 1.5}, r"optimizer.adam_beta2: must be < 1"),
    ({"data__split": "1,0"}, r"data.split: expected 'train,valid,test'"),
    ({"checkpoint__save_interval": 0}, r"checkpoint.save_interval: must be a positive integer"),
    ({"tokenizer": KeyError}, r"missing key\(s\) tokenizer"),
    ({"extra_args": ["--ok", "two\nlines"]}, r"extra_args\[1\]: expected a one-line string"),
])
def test_invalid_params_fail_naming_file_and_key(tmp_path, changes, message):
    path = tmp_path / "bad.yaml"
    with pytest.raises(PipelineError, match=message) as info:
        parse_train_params("bad", path, _doc(**changes))
    assert str(path) in str(info.value)


def test_params_file_by_path_and_unknown_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_doc(schedule__style="linear_to_zero")))
    assert load_train_params(str(path)).schedule.style == "linear_to_zero"
    with pytest.raises(PipelineError, match=r"PARAM=nope: .*not found \(known: .*7.7b_v4_3.5t_tokenizer_v3.1"):
        load_train_params("nope")


def test_world_size_must_split_the_batch():
    p = load_train_params(V4)
    assert p.check_world_size(128, "16 nodes") == 128
    with pytest.raises(PipelineError, match="global_batch_size 1024 is not a multiple .* data-parallel size 24"):
        p.check_world_size(24, "3 nodes")
