"""pipeline.soup in-process: SEEDS grammar, checkpoint choice, config round trip, and verification
catching a merged model that is wrong (no mergekit run needed: the 'merged' model is built here)."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline.errors import PipelineError
from pipeline.soup import (IngredientSpec, check_plan, load_merge_config, parse_ingredients, render_config,
                           resolve_checkpoint, sample_names, verify_soup, write_config)
from soup_helpers import make_runs, tensors, tokenizer, write_merge_config

torch = pytest.importorskip("torch")


def test_seeds_grammar():
    assert parse_ingredients("42 666", "50B") == [IngredientSpec("50B", "42"), IngredientSpec("50B", "666")]
    assert parse_ingredients("100B:1110 300B:2662@12", "50B", iteration=7) == [
        IngredientSpec("100B", "1110", 7), IngredientSpec("300B", "2662", 12)]
    for bad, message in [("42 42", "twice"), ("x", "expected SEED"), ("a:b:3", "expected SEED"),
                         ("42@x", "iteration"), ("", "SEEDS is empty"), ("1@123456789", "iteration")]:
        with pytest.raises(PipelineError, match=message):
            parse_ingredients(bad, "50B")


def test_checkpoint_choice(tmp_path):
    run = tmp_path / "seed1"
    for iteration, complete in ((5, True), (20, True), (30, False)):
        folder = run / "checkpoints_hf" / f"iter_{iteration:07d}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "config.json").write_text("{}")
    assert resolve_checkpoint(run, None).name == "iter_0000020"
    assert resolve_checkpoint(run, 5).name == "iter_0000005"
    with pytest.raises(PipelineError,
                       match=r"iter_0000030: converted checkpoint not found \(iterations present: 5, 20\)"):
        resolve_checkpoint(run, 30)
    with pytest.raises(PipelineError, match="no converted checkpoint"):
        resolve_checkpoint(tmp_path / "seed2", None)
    assert resolve_checkpoint(tmp_path / "seed2", 9, allow_pending=True).name == "iter_0000009"
    with pytest.raises(PipelineError, match="ITER="):
        resolve_checkpoint(tmp_path / "seed2", None, allow_pending=True)


def test_rendered_config_round_trips_and_is_not_overwritten(tmp_path):
    specs = [IngredientSpec("50B", "1"), IngredientSpec("50B", "2")]
    paths = [tmp_path / "odd dir: x" / "iter_0000001", tmp_path / "b" / "iter_0000001"]
    text = render_config(task="t", param="p", specs=specs, paths=paths, output=tmp_path / "soups" / "s")
    config = tmp_path / "s.yaml"
    assert write_config(config, text) is True and write_config(config, text) is False
    plan = load_merge_config(config)
    assert plan.method == "linear" and plan.model_paths() == paths and plan.data["dtype"] == "bfloat16"
    assert [m["parameters"]["weight"] for m in plan.data["models"]] == [1.0, 1.0]
    with pytest.raises(PipelineError, match="exists with different contents"):
        write_config(config, text.replace("weight: 1.0", "weight: 2.0", 1))


def test_sample_keeps_first_middle_last_layer():
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"] + [
        f"model.layers.{i}.mlp.up_proj.weight" for i in range(10)]
    chosen = sample_names(names)
    assert set(chosen) == set(names[:3]) | {f"model.layers.{i}.mlp.up_proj.weight" for i in (0, 5, 9)}


def _fake_soup(exp, tmp_path, weights, dtype):
    """Ingredients, a config, and a 'merged' model computed here the way linear defines it."""
    from safetensors.torch import save_file

    paths = make_runs(exp, (1, 2, 3))
    config = write_merge_config(tmp_path / "s.yaml", paths, weights=weights, dtype=dtype)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(paths[0] / name, out / name)
    cfg = json.loads((paths[0] / "config.json").read_text())
    cfg["dtype"] = dtype
    (out / "config.json").write_text(json.dumps(cfg))
    inputs = [tensors(p) for p in paths]
    merged = {}
    for name in inputs[0]:
        total = torch.zeros_like(inputs[0][name])
        for weight, source in zip(weights, inputs):
            total.addcmul_(source[name].to(getattr(torch, dtype)), torch.tensor(weight))
        merged[name] = (total / torch.tensor(weights).sum()).to(getattr(torch, dtype)).contiguous()
    save_file(merged, out / "model.safetensors")
    plan = load_merge_config(config)
    return plan, check_plan(plan, with_mergekit=False, tokenizer_model=str(tokenizer()[0])), out, merged, inputs


def test_verification_passes_a_true_mean_and_catches_one_ulp(exp_dir, tmp_path):
    from safetensors.torch import save_file

    plan, checkpoints, out, merged, _ = _fake_soup(exp_dir, tmp_path, [0.3, 0.7, 1.9], "float32")
    summary = verify_soup(out, plan, checkpoints, quiet=True)
    assert summary["exact_float32_tensors"] == 21 and summary["weights"] == [0.3, 0.7, 1.9]
    name = "model.layers.1.self_attn.k_proj.weight"
    merged[name].view(-1)[3] = torch.nextafter(merged[name].view(-1)[3], torch.tensor(10.0))
    save_file(merged, out / "model.safetensors")
    with pytest.raises(PipelineError, match=rf"model.safetensors: tensor {name}: differs .*float32 output must"):
        verify_soup(out, plan, checkpoints, quiet=True)
    # SOUP_VERIFY=sample skips the middle of a deep model only; with 2 layers it still sees layer 1
    with pytest.raises(PipelineError, match=name):
        verify_soup(out, plan, checkpoints, mode="sample", quiet=True)


def test_verification_catches_bf16_errors_tokenizer_and_config(exp_dir, tmp_path):
    from safetensors.torch import save_file

    plan, checkpoints, out, merged, inputs = _fake_soup(exp_dir, tmp_path, [1.0, 1.0, 1.0], "bfloat16")
    assert verify_soup(out, plan, checkpoints, quiet=True)["rounding_checked_tensors"] == 21
    name = "model.embed_tokens.weight"
    good = merged[name]
    merged[name] = inputs[0][name].to(torch.bfloat16)  # one seed's tensor instead of the mean
    save_file(merged, out / "model.safetensors")
    with pytest.raises(PipelineError, match=rf"tensor {name}: differs .* bfloat16 rounding allows"):
        verify_soup(out, plan, checkpoints, quiet=True)
    merged[name] = good.clone()
    merged[name][0, 0] = float("nan")
    save_file(merged, out / "model.safetensors")
    with pytest.raises(PipelineError, match=rf"tensor {name}: has NaN or infinite values"):
        verify_soup(out, plan, checkpoints, quiet=True)
    merged[name] = good
    save_file(merged, out / "model.safetensors")
    (out / "tokenizer.json").unlink()
    with pytest.raises(PipelineError, match=r"tokenizer.json: tokenizer file missing"):
        verify_soup(out, plan, checkpoints, quiet=True)
    shutil.copy(checkpoints[0].path / "tokenizer.json", out / "tokenizer.json")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(PipelineError, match="num_hidden_layers"):
        verify_soup(out, plan, checkpoints, quiet=True)


def test_tiny_runs_are_left_alone_when_present(exp_dir):
    first = make_runs(exp_dir, (5,))[0]
    stamp = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert make_runs(exp_dir, (5,))[0] == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamp
