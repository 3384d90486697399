"""make convert / pbs/convert.pbs: the dry run, the Megatron path (stand-in Megatron-LM), the native path,
and what is submitted to PBS."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from convert_helpers import ITERATION, fake_megatron, fixture_checkpoints, load_hf, make_run, tiny_params, token_ids
from pipeline.convert_job import CONVERSION_FLAGS, ConvertRequest, step1_args, step2_argv
from pipeline.hf_folder import RECORD_FILE

ITER_NAME = f"iter_{ITERATION:07d}"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return fixture_checkpoints(tmp_path_factory)


@pytest.fixture
def run(ckpts, exp_dir, tmp_path):
    return make_run(exp_dir, ckpts["split"], tiny_params(tmp_path / "params"))


def make_vars(run: dict, **extra) -> list[str]:
    keys = ("TASK", "PARAM", "SIZE", "SEED", "DATA_LIST", "TOKENIZER_MODEL", "HF_TOKENIZER_DIR")
    return [f"{k}={run[k]}" for k in keys if k not in extra] + [f"{k}={v}" for k, v in extra.items()]


def request(run: dict, exp: Path, **extra) -> ConvertRequest:
    return ConvertRequest(exp=exp, task=run["TASK"], param=run["PARAM"], size=run["SIZE"], seed=int(run["SEED"]),
                          iteration=str(ITERATION), hf_tokenizer_dir=run["HF_TOKENIZER_DIR"],
                          tokenizer_model=run["TOKENIZER_MODEL"], data_list=run["DATA_LIST"], dtype="fp32", **extra)


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in list(run_dir.glob(".convert-tmp.*")) + list(run_dir.glob("checkpoints_hf/.*")))


def test_dry_run_shows_the_three_steps(make, run, exp_dir, tmp_path):
    megatron = fake_megatron(tmp_path / "fake")["MEGATRON_PATH"]
    out = make("convert", "DRY_RUN=1", *make_vars(run, MEGATRON_PATH=megatron, WANDB_PROJECT="proj")).stdout
    run_dir = run["run"]
    assert f"checkpoint: {run_dir}/checkpoints/{ITER_NAME}\n" in out, "ITER=latest resolved from the tracker"
    assert f"output: {run_dir}/checkpoints_hf/{ITER_NAME} " in out
    step1 = out[out.index("step 1/3"):out.index("step 2/3")]
    args = [shlex.split(line.rstrip(" \\"))[0] for line in step1.splitlines()[2:] if line.strip()]
    tmp = f"{run_dir}/.convert-tmp.<job>"
    pairs = dict(zip(args, args[1:]))
    assert pairs["--load"] == f"{tmp}/torch_dist" and pairs["--ckpt-convert-save"] == tmp
    assert pairs["--ckpt-convert-format"] == "torch" and pairs["--ckpt-format"] == "torch_dist"
    assert pairs["--num-layers"] == "4" and pairs["--ffn-hidden-size"] == "96" and pairs["--num-query-groups"] == "2"
    assert set(CONVERSION_FLAGS) <= set(args)
    assert "--save" not in args and not any(a.startswith("--wandb") for a in args)
    assert f"{megatron}/pretrain_gpt.py" in step1
    step2 = out[out.index("step 2/3"):out.index("step 3/3")].splitlines()[1]
    assert shlex.split(step2) == step2_argv(megatron, Path(tmp),
                                            Path(f"{run_dir}/checkpoints_hf/.{ITER_NAME}.tmp.<job>"),
                                            run["HF_TOKENIZER_DIR"], "bf16")
    step3 = out[out.index("step 3/3"):].splitlines()[1]
    assert f"{run['HF_TOKENIZER_DIR']}/tokenizer.json" in step3
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1" in out
    assert "pbs/convert.pbs" in out and "ITER=latest" in out
    assert not (exp_dir / "jobs.jsonl").exists() and leftovers(run_dir) == []


def test_megatron_job_runs_the_three_steps(make, run, exp_dir, tmp_path, ckpts):
    env = fake_megatron(tmp_path / "fake")
    make("convert", *make_vars(run, ITER=str(ITERATION), CONVERT_DTYPE="fp32", LAUNCHER="mpi", GPUS_PER_NODE="1",
                                WANDB_PROJECT="proj"), env=env)
    record = Path(env["FAKE_MEGATRON_RECORD"])
    step1 = json.loads(Path(f"{record}.step1.json").read_text())
    step2 = json.loads(Path(f"{record}.step2.json").read_text())
    tmp = Path(step1["argv"][step1["argv"].index("--ckpt-convert-save") + 1])
    run_dir = run["run"]
    assert tmp.parent == run_dir and tmp.name.startswith(".convert-tmp.")
    req = request(run, exp_dir, megatron_path=env["MEGATRON_PATH"], train_python=env["TRAIN_PYTHON"])
    assert step1["argv"] == step1_args(req, tmp, world_size=1), "step 1 = the run's own convert-mode arguments"
    assert "--use-mpi" in step1["argv"], "the fork's parser has --use-mpi: asked at job start"
    assert step1["env"]["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert step2["env"]["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    out_tmp = run_dir / "checkpoints_hf" / f".{ITER_NAME}.tmp.{_job_tag(tmp)}"
    assert step2["argv"] == step2_argv(env["MEGATRON_PATH"], tmp, out_tmp, run["HF_TOKENIZER_DIR"], "fp32")[2:]
    mpirun = Path(f"{record}.mpirun").read_text().split("\n")
    assert mpirun[mpirun.index("-np") + 1] == "1" and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in mpirun

    output = run_dir / "checkpoints_hf" / ITER_NAME
    converted = load_hf(output)
    with torch.no_grad():
        logits = converted(token_ids()).logits
        expected = ckpts["model"](token_ids()).logits
    assert torch.equal(logits[..., :250], expected), "the padded vocabulary is kept by the Megatron saver"
    tokenizer_json = Path(run["HF_TOKENIZER_DIR"]) / "tokenizer.json"
    assert (output / "tokenizer.json").read_bytes() == tokenizer_json.read_bytes()
    provenance = json.loads((output / RECORD_FILE).read_text())
    assert provenance["converter"] == "megatron" and provenance["step1_args"] == step1["argv"]
    check = provenance["tokenizer_check"]   # convert.py check-tokenizer, before the rename
    assert check["passed"] and check["tokenizer_model"] == str(Path(run["TOKENIZER_MODEL"]).resolve())
    assert leftovers(run_dir) == [], "temporary folders removed"


def _job_tag(tmp: Path) -> str:
    """The job number part of .convert-tmp.<job>.XXXXXX."""
    return tmp.name.split(".")[2]


def test_megatron_job_fails_when_the_saver_writes_nothing(make, run, exp_dir, tmp_path):
    env = {**fake_megatron(tmp_path / "fake"), "FAKE_STEP2": "silent-failure"}
    result = make("convert", *make_vars(run, LAUNCHER="mpi", GPUS_PER_NODE="1"), env=env, check=False)
    assert result.returncode != 0
    assert "step 2 wrote nothing" in result.stdout + result.stderr
    assert not (run["run"] / "checkpoints_hf" / ITER_NAME).exists()
    assert leftovers(run["run"]) == []
    status = [json.loads(p.read_text()) for p in (exp_dir / "logs").glob("convert-*.status")]
    assert [s["status"] for s in status] == [1]


def test_native_job_and_rerun(make, run, exp_dir, ckpts):
    make("convert", "CONVERTER=native", "CONVERT_DTYPE=fp32", *make_vars(run))
    output = run["run"] / "checkpoints_hf" / ITER_NAME
    converted = load_hf(output)
    vocab = converted.config.vocab_size
    with torch.no_grad():
        logits = converted(token_ids(vocab)).logits
        assert torch.equal(logits, ckpts["model"](token_ids(vocab)).logits[..., :vocab])
    record = json.loads((output / RECORD_FILE).read_text())
    assert record["converter"].startswith("native") and record["tokenizer_check"]["passed"]
    jobs = (exp_dir / "jobs.jsonl").read_text().splitlines()
    again = make("convert", "CONVERTER=native", *make_vars(run))
    assert "already converted" in again.stderr
    assert (exp_dir / "jobs.jsonl").read_text().splitlines() == jobs, "nothing submitted the second time"


def test_pbs_submission_and_refusals(make, run, fake_pbs):
    pbs = ["SCHEDULER=pbs", "PBS_GROUP=grp", "PBS_QUEUE=rt_HF", "CPU_QUEUE=rt_HC"]
    make("convert", *pbs, "CONVERTER=native", *make_vars(run))
    sub = fake_pbs.submissions()[-1]
    assert sub["queue"] == "rt_HC" and Path(sub["argv"][-1]).name == "convert.pbs"
    variables = sub["variables"]
    assert variables["ITER"] == "latest" and variables["CONVERTER"] == "native"
    assert variables["RUN_DIR"] == str(run["run"]) and variables["HF_TOKENIZER_DIR"] == run["HF_TOKENIZER_DIR"]

    refused = make("convert", *pbs, *[v for v in make_vars(run) if not v.startswith("HF_TOKENIZER_DIR")],
                   "ITER=99", check=False)
    assert refused.returncode != 0
    assert "HF_TOKENIZER_DIR is not set" in refused.stderr
    assert "iter_0000099: iteration folder missing" in refused.stderr
    assert "MEGATRON_PATH" in refused.stderr
    assert len(fake_pbs.submissions()) == 1, "nothing submitted"


def test_a_tokenizer_folder_that_encodes_otherwise_is_refused_before_submission(make, run, fake_pbs, tmp_path):
    from pipeline.hf_tokenizer import write_hf_tokenizer
    other = tmp_path / "other-hf"
    write_hf_tokenizer(Path(__file__).resolve().parent / "data" / "upstream_ckpt" / "tokenizer.model", other)
    pbs = ["SCHEDULER=pbs", "PBS_GROUP=grp", "PBS_QUEUE=rt_HF"]
    for converter in ("native", "megatron"):
        refused = make("convert", *pbs, f"CONVERTER={converter}", *make_vars(run, HF_TOKENIZER_DIR=str(other)),
                       check=False)
        assert refused.returncode != 0 and "make convert: not submitted" in refused.stderr, converter
        assert f"{other}: its Hugging Face tokenizer does not encode as the training tokenizer " \
               f"{run['TOKENIZER_MODEL']}" in refused.stderr
    assert fake_pbs.submissions() == []
    env = fake_megatron(tmp_path / "fake")
    plan = make("convert", "DRY_RUN=1", *make_vars(run, MEGATRON_PATH=env["MEGATRON_PATH"])).stdout
    assert "check the tokenizer: " in plan and "scripts/convert.py check-tokenizer" in plan
    assert "problem:" not in plan, "the run's own tokenizer folder passes"
