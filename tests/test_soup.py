"""Model soups: make soup-config + make soup with the real mergekit on tiny Llama models (CPU, offline)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import REPO, run_script
from soup_helpers import PARAM, TASK, checkpoint, make_runs, tensors, tokenizer, write_merge_config

torch = pytest.importorskip("torch")
pytest.importorskip("mergekit")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # mergekit's numpy.core use

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
RUN_KNOBS = (f"TASK={TASK}", f"PARAM={PARAM}")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Offline, and the runs' training tokenizer as TOKENIZER_MODEL (make reads it from the environment)."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TOKENIZER_MODEL", str(tokenizer()[0]))


def test_soup_config_then_soup_is_the_exact_fp32_mean(make, exp_dir, tmp_path):
    paths = make_runs(exp_dir, (42, 666, 42069))
    merge_dir = tmp_path / "merge"
    make("soup-config", *RUN_KNOBS, "SIZE=50B", "SEEDS=42 666 42069", "SOUP_NAME=seeds", f"SOUP_CONFIG_DIR={merge_dir}",
         "SOUP_DTYPE=float32")
    config = merge_dir / "seeds.yaml"
    text = config.read_text()
    assert "# Merge base configuration:" in text and "#   train data: 3 x 50B" in text
    assert "merge_method: linear" in text and "dtype: float32" in text
    assert [line.split("model: ")[1] for line in text.splitlines() if "- model: " in line] == [str(p) for p in paths]
    assert text.count("weight: 1.0") == 3

    result = make("soup", f"SOUP_CONFIG={config}", "SOUP_SHARD_SIZE=5K")
    soup = exp_dir / "soups" / "seeds"
    assert "verified" in result.stdout
    assert len(list(soup.glob("model-*.safetensors"))) > 1, "output must be sharded"
    merged, ingredients = tensors(soup), [tensors(p) for p in paths]
    assert set(merged) == set(ingredients[0]) and len(merged) == 21
    for name, value in merged.items():
        a, b, c = (t[name] for t in ingredients)
        assert value.dtype == torch.float32
        assert torch.equal(value, (a + b + c) / 3), name
        assert not torch.equal(value, a)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (soup / name).read_bytes() == (paths[0] / name).read_bytes()
    config_out, config_in = (json.loads((d / "config.json").read_text()) for d in (soup, paths[0]))
    assert {k: v for k, v in config_out.items() if k != "dtype"} == {k: v for k, v in config_in.items() if k != "dtype"}
    record = json.loads((soup / "soup.json").read_text())
    assert record["verification"]["exact_float32_tensors"] == 21 and record["config"] == str(config)
    assert [i["path"] for i in record["ingredients"]] == [str(p) for p in paths]
    assert (soup / "mergekit_config.yml").read_text() == text

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in soup.iterdir()}
    again = make("soup", f"SOUP_CONFIG={config}", "SOUP_SHARD_SIZE=5K")
    assert "up to date" in again.stdout
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in soup.iterdir()} == before
    assert "up to date" in make("soup-config", *RUN_KNOBS, "SEEDS=42 666 42069", "SOUP_NAME=seeds",
                                f"SOUP_CONFIG_DIR={merge_dir}", "SOUP_DTYPE=float32").stdout


def test_mixed_sizes_latest_iteration_bf16_within_rounding(make, exp_dir, tmp_path):
    """The 13B recipe's shape: 3 x 100B + 1 x 300B, each at its latest converted iteration."""
    small = make_runs(exp_dir, (1, 2, 3), size="100B", iteration=10, dtype="bfloat16")
    make_runs(exp_dir, (2,), size="300B", iteration=5, dtype="bfloat16")
    large = make_runs(exp_dir, (2,), size="300B", iteration=20, dtype="bfloat16", )[0]
    (large.parent / "iter_0000030").mkdir()  # a conversion in progress (no config.json) is not "latest"
    merge_dir = tmp_path / "merge"
    make("soup-config", "soup", *RUN_KNOBS, "SEEDS=100B:1 100B:2 100B:3 300B:2", f"SOUP_CONFIG_DIR={merge_dir}",
         "SOUP_VERIFY=sample")
    config = merge_dir / "t_p_100B+300B.yaml"
    text = config.read_text()
    assert "#   train data: 3 x 100B + 1 x 300B" in text and "dtype: bfloat16" in text
    assert str(large) in text and "iter_0000005" not in text
    soup = exp_dir / "soups" / "t_p_100B+300B"
    merged, ingredients = tensors(soup), [tensors(p) for p in (*small, large)]
    for name, value in merged.items():
        inputs = [t[name].double() for t in ingredients]
        mean = sum(inputs) / 4
        magnitude = sum(t.abs() for t in inputs) / 4
        assert value.dtype == torch.bfloat16
        assert bool(((value.double() - mean).abs() <= 2 ** -7 * (magnitude + mean.abs())).all()), name
    check = json.loads((soup / "soup.json").read_text())["verification"]
    assert check["mode"] == "sample" and check["tensors_checked"] == check["tensors"] == 21  # 2 layers: all


def test_mismatched_ingredient_fails_naming_its_path(make, exp_dir, tmp_path):
    good = make_runs(exp_dir, (1, 2))
    odd = make_runs(exp_dir, (3,), hidden=48)[0]
    result = make("soup-config", *RUN_KNOBS, "SEEDS=1 2 3", f"SOUP_CONFIG_DIR={tmp_path / 'merge'}", check=False)
    assert result.returncode != 0 and str(odd) in result.stderr and "hidden_size" in result.stderr
    assert not (tmp_path / "merge").exists()

    config = write_merge_config(tmp_path / "odd.yaml", [*good, odd])
    result = make("soup", f"SOUP_CONFIG={config}", check=False)
    assert result.returncode != 0 and f"error: {odd}: architecture differs" in result.stdout + result.stderr
    assert not (exp_dir / "soups").exists(), "nothing may be merged when a check fails"


def test_errors_before_any_work(exp_dir, tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.soup import check_plan, load_merge_config

    paths = make_runs(exp_dir, (1, 2, 3))
    relative = write_merge_config(tmp_path / "rel.yaml", [paths[0], os.path.relpath(paths[1], REPO)])
    result = run_script("soup", "--config", str(relative), "--exp-dir", str(exp_dir), "--tokenizer-model",
                        str(tokenizer()[0]), check=False)
    assert result.returncode == 1 and f"error: {relative}:6: model:" in result.stderr
    assert "relative path" in result.stderr and not (exp_dir / "soups").exists()

    def error(config) -> str:
        with pytest.raises(PipelineError) as caught:
            check_plan(load_merge_config(config), tokenizer_model=str(tokenizer()[0]))
        return str(caught.value)

    absent = paths[2].with_name("iter_0000099")
    assert f"{absent}: ingredient not found" in error(write_merge_config(tmp_path / "m.yaml", [*paths[:2], absent]))
    assert "needs a base_model" in error(write_merge_config(tmp_path / "ta.yaml", paths, method="task_arithmetic"))
    assert "merge_method" in error(write_merge_config(tmp_path / "x.yaml", paths, method="averaging"))
    assert "dtype" in error(write_merge_config(tmp_path / "d.yaml", paths, dtype="float8"))
    (paths[2] / "tokenizer.json").write_text((paths[2] / "tokenizer.json").read_text() + "\n")
    assert f"{paths[2]}: tokenizer files differ" in error(write_merge_config(tmp_path / "tok.yaml", paths))
    assert not (exp_dir / "soups").exists()


def test_task_arithmetic_passes_through(make, exp_dir, tmp_path):
    base, *models = make_runs(exp_dir, (0, 1, 2))
    config = write_merge_config(tmp_path / "ta.yaml", models, method="task_arithmetic", weights=[0.5, 0.25],
                                base=base)
    make("soup", f"SOUP_CONFIG={config}")
    soup = exp_dir / "soups" / "ta"
    merged, b, m1, m2 = tensors(soup), tensors(base), tensors(models[0]), tensors(models[1])
    for name, value in merged.items():
        expected = b[name] + 0.5 * (m1[name] - b[name]) + 0.25 * (m2[name] - b[name])
        assert torch.allclose(value, expected, atol=1e-6), name
    check = json.loads((soup / "soup.json").read_text())["verification"]
    assert check["method"] == "task_arithmetic" and check["values"].startswith("not recomputed")


def test_pbs_submits_soup_pbs_after_checks(make, exp_dir, tmp_path, fake_pbs):
    paths = make_runs(exp_dir, (1, 2, 3))
    pbs = ("SCHEDULER=pbs", "PBS_GROUP=grp", "PBS_QUEUE=rt_HC")
    config = write_merge_config(tmp_path / "merge" / "s.yaml", paths)
    submitted = make("soup", *pbs, f"SOUP_CONFIG={config}", "SOUP_VERIFY=sample", "SOUP_CUDA=1")
    job_id = submitted.stdout.strip().splitlines()[-1]
    sub = fake_pbs.submissions()[-1]
    assert sub["job_id"] == job_id and sub["argv"][-1] == str(REPO / "pbs" / "soup.pbs") and sub["name"] == "soup-s"
    assert sub["variables"]["SOUP_CONFIG"] == str(config) and sub["variables"]["EXP_DIR"] == str(exp_dir)
    assert sub["variables"]["SOUP_VERIFY"] == "sample" and sub["variables"]["SOUP_CUDA"] == "1"
    assert sub["resources"]["walltime"] == "04:00:00"

    shutil.rmtree(paths[1])
    result = make("soup", *pbs, f"SOUP_CONFIG={config}", check=False)
    assert result.returncode != 0 and f"{paths[1]}: ingredient not found" in result.stderr
    assert len(fake_pbs.submissions()) == 1, "a failed check must not submit"

    # a chain: the runs are still training, so the config names ITER and the job waits on DEPEND
    merge_dir = tmp_path / "merge"
    make("soup-config", "soup", *pbs, *RUN_KNOBS, "SEEDS=7 8", "ITER=500", "DEPEND=12.pbs1",
         f"SOUP_CONFIG_DIR={merge_dir}")
    assert str(checkpoint(exp_dir, 7, iteration=500)) in (merge_dir / "t_p_50B.yaml").read_text()
    sub = fake_pbs.submissions()[-1]
    assert sub["depend"] == [["afterok", ["12.pbs1"]]]
    assert sub["variables"]["SOUP_CONFIG"] == str(merge_dir / "t_p_50B.yaml")
    pending = make("soup-config", *RUN_KNOBS, "SEEDS=7 8", "DEPEND=12.pbs1", "SOUP_NAME=x",
                   f"SOUP_CONFIG_DIR={merge_dir}", check=False)
    assert pending.returncode != 0 and "ITER=" in pending.stderr


def test_default_name_matches_the_makefile(make):
    from pipeline.soup import default_name, parse_ingredients

    for seeds in ("42 666 42069", "100B:1110 100B:2662 100B:6209 300B:2662", "42 300B:1@5"):
        printed = make("--eval", "print-soup-name: ; @echo $(SOUP_NAME)", "print-soup-name", "TASK=tk", "PARAM=pm",
                       "SIZE=50B", f"SEEDS={seeds}").stdout.strip()
        assert printed == default_name("tk", "pm", parse_ingredients(seeds, "50B"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (SOUP_CUDA=1)")
def test_cuda_soup_matches_the_mean(make, exp_dir, tmp_path):
    paths = make_runs(exp_dir, (1, 2, 3), dtype="bfloat16")
    config = write_merge_config(tmp_path / "gpu.yaml", paths, dtype="bfloat16")
    make("soup", f"SOUP_CONFIG={config}", "SOUP_CUDA=1")
    record = json.loads((exp_dir / "soups" / "gpu" / "soup.json").read_text())
    assert record["options"]["cuda"] is True and record["verification"]["rounding_checked_tensors"] == 21
