"""make args / scripts/train_args.py: the derived Megatron argument list of a run."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, run_script, shared_path
from pipeline.datalist import Entry
from pipeline.errors import PipelineError
from pipeline.megatron_args import RunSpec, resolve
from train_helpers import data_list, llmjp_50b_list, megatron_options

V4 = "7.7b_v4_3.5t_tokenizer_v3.1"
TASK = "v4-dolmino-mix-1124"


def value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} appears {args.count(flag)} times"
    return args[args.index(flag) + 1]


@pytest.fixture
def small_list(tmp_path):
    # 3 files, 100,000 tokens: ceil(100000 / (8192 * 1024)) = 1 iteration with the 7.7B params
    return data_list(tmp_path / "train_data_small.sh", [Entry(60000, "ds-v3.1-tokenized/web/a_text_document"),
                                                        Entry(30000, "ds-v3.1-tokenized/math/b_text_document"),
                                                        Entry(10000, "ds-v3.1-tokenized/wiki/c_text_document")])


def spec(exp, data, **kw):
    base = dict(exp=exp, task=TASK, param=V4, size="50B", seed=42, data_list=data, tokenizer_model="/tok/v3.1.model")
    return RunSpec(**{**base, **kw})


def test_make_args_derives_6900_iterations_from_the_llmjp_50b_list(make, exp_dir, tmp_path):
    mixture = llmjp_50b_list(shared_path("reference", "llmjp-v3.1-dolmino.train_data.all.sh"),
                             tmp_path / "train_data_50B.sh")
    result = make("args", f"TASK={TASK}", "SIZE=50B", f"PARAM={V4}", "SEED=666", f"DATA_LIST={mixture}",
                  "TOKENIZER_MODEL=/tok/llm-jp-tokenizer-100k.ver3.1.model")
    args = result.stdout.splitlines()
    assert value(args, "--train-iters") == "6900"
    assert value(args, "--global-batch-size") == "1024" and value(args, "--seq-length") == "8192"
    assert value(args, "--seed") == "666"
    assert "57,874,242,563 tokens in 36 files -> --train-iters 6900 from step 0" in result.stderr
    run = exp_dir / "runs" / TASK / V4 / "50B" / "seed666"
    assert value(args, "--data-cache-path") == str(run / "data_cache")
    assert value(args, "--save") == str(run / "checkpoints") and value(args, "--load") == str(run / "start")
    data = args[args.index("--data-path") + 1:args.index("--data-cache-path")]
    assert len(data) == 72 and sum(map(int, data[0::2])) == 57_874_242_563
    assert data[1] == str(exp_dir / "dolmino-mix-1124-v3.1-tokenized/dclm/dclm-0000-0009_text_document")
    assert not any(exp_dir.iterdir()), "make args writes nothing"


def test_record_says_which_iteration_mechanism_and_why(tmp_path):
    mixture = llmjp_50b_list(shared_path("reference", "llmjp-v3.1-dolmino.train_data.all.sh"),
                             tmp_path / "train_data_50B.sh")
    record = resolve(spec(tmp_path / "exp", mixture)).record()
    start = record["start"]
    assert record["train_iters"] == 6900 and start["starts_at_step"] == 0 and start["mechanism"] == "reset-counters"
    assert start["base_iteration"] == 432581 and start["train_iters_if_step_count_kept"] == 439481
    assert "--train-iters 439481 (= 432,581 + 6,900)" in start["not_used"]
    assert "consumed" in start["why"] and "--override-ckpt-iteration 0" in start["alternative"]
    assert record["train_iters_formula"] == "ceil(57,874,242,563 / 8192 / 1024) = 6,900"


def test_constant_schedule(tmp_path, small_list):
    args = resolve(spec(tmp_path, small_list)).args
    assert value(args, "--lr") == "3e-05" and value(args, "--min-lr") == "3e-05"
    assert value(args, "--lr-decay-style") == "constant" and value(args, "--lr-warmup-iters") == "0"
    assert "--lr-decay-iters" not in args and "--override-opt_param-scheduler" in args
    assert value(args, "--train-iters") == "1"


def test_linear_to_zero_schedule_spans_the_midtraining_iterations(tmp_path):
    doc = yaml.safe_load((REPO / "params" / f"{V4}.yaml").read_text())
    doc["schedule"] = {"style": "linear_to_zero", "lr": 3e-5}
    params = tmp_path / "decay.yaml"
    params.write_text(yaml.safe_dump(doc))
    mixture = data_list(tmp_path / "l.sh", [Entry(8192 * 1024 * 250 + 1, "x/a")])   # 251 iterations
    args = resolve(spec(tmp_path, mixture, param=str(params))).args
    assert value(args, "--lr") == "3e-05" and value(args, "--min-lr") == "0.0"
    assert value(args, "--lr-decay-style") == "linear" and value(args, "--lr-warmup-iters") == "0"
    assert value(args, "--lr-decay-iters") == value(args, "--train-iters") == "251"
    assert value(args, "--save") == str(tmp_path / "runs" / TASK / "decay" / "50B" / "seed42" / "checkpoints")


def test_model_and_parallel_arguments(tmp_path, small_list):
    args = resolve(spec(tmp_path, small_list)).args
    for flag, expected in [("--num-layers", "32"), ("--hidden-size", "4096"), ("--ffn-hidden-size", "14336"),
                           ("--num-attention-heads", "32"), ("--num-query-groups", "8"), ("--rotary-base", "500000"),
                           ("--norm-epsilon", "1e-05"), ("--normalization", "RMSNorm"), ("--adam-beta2", "0.95"),
                           ("--adam-eps", "1e-08"), ("--clip-grad", "1.0"), ("--weight-decay", "0.1"),
                           ("--micro-batch-size", "1"), ("--tensor-model-parallel-size", "1"),
                           ("--pipeline-model-parallel-size", "1"), ("--context-parallel-size", "1"),
                           ("--tokenizer-type", "Llama2Tokenizer"), ("--tokenizer-model", "/tok/v3.1.model"),
                           ("--transformer-impl", "transformer_engine"), ("--ckpt-format", "torch_dist")]:
        assert value(args, flag) == expected, flag
    for flag in ("--group-query-attention", "--swiglu", "--untie-embeddings-and-output-weights",
                 "--disable-bias-linear", "--sequence-parallel", "--use-distributed-optimizer", "--bf16",
                 "--exit-on-missing-checkpoint"):
        assert flag in args, flag


def test_launch_flags_follow_the_megatron_parser(tmp_path, small_list):
    """The option sets of the real parsers (tests/data/megatron_options, from megatron_probe.py)."""
    unknown = resolve(spec(tmp_path, small_list))       # no Megatron to ask: decided at job start
    assert not {"--use-mpi", "--use-flash-attn", "--attention-backend"} & set(unknown.args)
    assert "decided at job start" in " ".join(unknown.notes) and unknown.environment == {}

    v4 = resolve(spec(tmp_path, small_list, features=megatron_options("llmjp-v4")))
    assert "--use-flash-attn" in v4.args and "--use-mpi" in v4.args and "--attention-backend" not in v4.args
    assert v4.environment == {"NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "0", "NVTE_UNFUSED_ATTN": None}

    upstream = resolve(spec(tmp_path, small_list, features=megatron_options("upstream")))
    assert value(upstream.args, "--attention-backend") == "flash"
    assert "--use-flash-attn" not in upstream.args and "--use-mpi" not in upstream.args   # no such flag there
    assert upstream.environment == {"NVTE_FLASH_ATTN": None, "NVTE_FUSED_ATTN": None, "NVTE_UNFUSED_ATTN": None}
    assert upstream.environment_lines() == "unset NVTE_FLASH_ATTN\nunset NVTE_FUSED_ATTN\nunset NVTE_UNFUSED_ATTN\n"

    torchrun = resolve(spec(tmp_path, small_list, launcher="torchrun", features=megatron_options("llmjp-v4"))).args
    assert "--use-mpi" not in torchrun and len(torchrun) == len(v4.args) - 1


@pytest.mark.parametrize("megatron", ["upstream", "llmjp-v4"])
@pytest.mark.parametrize("param", [V4, f"{V4}_curriculum", "tiny"])
@pytest.mark.parametrize("mode", ["train", "convert"])
def test_every_generated_flag_is_known_to_the_megatron(tmp_path, small_list, megatron, param, mode):
    resolved = resolve(spec(tmp_path, small_list, param=param, features=megatron_options(megatron)), mode)
    assert megatron_options(megatron).unknown(resolved.args) == []


def test_an_unknown_flag_is_refused_before_the_job(tmp_path, small_list):
    doc = yaml.safe_load((REPO / "params" / f"{V4}.yaml").read_text())
    doc["data"]["args"] = "file"             # --data-args-path: upstream only
    params = tmp_path / "file.yaml"
    params.write_text(yaml.safe_dump(doc))
    with pytest.raises(PipelineError, match=r"core 0\.10\.0rc0\) does not know 1 generated argument\(s\): "
                                            r"--data-args-path"):
        resolve(spec(tmp_path, small_list, param=str(params), features=megatron_options("llmjp-v4")))


def test_wandb_only_when_configured(tmp_path, small_list):
    off = resolve(spec(tmp_path, small_list, wandb_entity="llm-jp"))
    assert not any(a.startswith("--wandb") for a in off.args) and "WANDB_PROJECT is not" in off.notes[0]
    on = resolve(spec(tmp_path, small_list, wandb_entity="llm-jp", wandb_project="midtrain")).args
    assert value(on, "--wandb-entity") == "llm-jp" and value(on, "--wandb-project") == "midtrain"
    assert value(on, "--wandb-exp-name") == f"{TASK}_{V4}_50B_seed42"


def test_convert_mode(tmp_path, small_list):
    args = resolve(spec(tmp_path, small_list, wandb_project="p"), "convert", load=tmp_path / "tmpload",
                   convert_save=tmp_path / "torch").args
    assert value(args, "--load") == str(tmp_path / "tmpload") and "--save" not in args
    assert value(args, "--ckpt-convert-format") == "torch"
    assert value(args, "--ckpt-convert-save") == str(tmp_path / "torch")
    assert not any(a.startswith("--wandb") for a in args) and value(args, "--num-layers") == "32"


def test_data_args_file_mode(tmp_path, small_list):
    doc = yaml.safe_load((REPO / "params" / f"{V4}.yaml").read_text())
    doc["data"]["args"] = "file"
    params = tmp_path / "file.yaml"
    params.write_text(yaml.safe_dump(doc))
    resolved = resolve(spec(tmp_path, small_list, param=str(params)))
    assert "--data-path" not in resolved.args
    assert value(resolved.args, "--data-args-path") == str(resolved.spec.run_dir / "data_args.txt")
    assert resolved.data_args_text().split() == ["60000", str(tmp_path / "ds-v3.1-tokenized/web/a_text_document"),
                                                 "30000", str(tmp_path / "ds-v3.1-tokenized/math/b_text_document"),
                                                 "10000", str(tmp_path / "ds-v3.1-tokenized/wiki/c_text_document")]
    with pytest.raises(PipelineError, match="whitespace, which --data-args-path cannot carry"):
        resolve(spec(tmp_path / "with space", small_list, param=str(params)))


def test_odd_values_are_one_line_each(make, tmp_path, exp_dir):
    # through make (whose knobs cannot hold a single quote or $): spaces, commas, double quotes
    mixture = data_list(tmp_path / "l.sh", [Entry(5, "a/c_text_document")])
    result = make("args", f"DATA_LIST={mixture}", 'TOKENIZER_MODEL=/tok/with space, "q".model',
                  "WANDB_PROJECT=p q", "WANDB_ENTITY=a,b")
    args = result.stdout.splitlines()
    assert value(args, "--tokenizer-model") == '/tok/with space, "q".model'
    assert value(args, "--wandb-project") == "p q" and value(args, "--wandb-entity") == "a,b"
    # through the API: an EXP_DIR with spaces and both quotes
    exp = tmp_path / "exp dir, with 'quotes' and \"more\""
    args = resolve(spec(exp, mixture)).args
    assert value(args, "--data-path") == "5" and args[args.index("--data-path") + 2] == f"{exp}/a/c_text_document"
    with pytest.raises(PipelineError, match="newline"):
        resolve(spec(tmp_path, mixture, wandb_project="two\nlines"))


def test_missing_list_and_tokenizer_fail_clearly(make, tmp_path, exp_dir):
    result = make("args", "TASK=no-such-task", "SIZE=9B", "TOKENIZER_MODEL=/t", check=False)
    assert result.returncode != 0 and "tasks/no-such-task/train_data_9B.sh: data list not found" in result.stderr
    assert "make mix TASK=no-such-task SIZE=9B" in result.stderr
    mixture = data_list(tmp_path / "l.sh", [Entry(5, "a")])
    result = make("args", f"DATA_LIST={mixture}", "TOKENIZER_MODEL=", "ENV_DIR=", check=False)
    assert result.returncode != 0 and "TOKENIZER_MODEL" in result.stderr and result.stdout == ""
    with_env = make("args", f"DATA_LIST={mixture}", f"ENV_DIR={tmp_path}/env").stdout.splitlines()
    assert value(with_env, "--tokenizer-model") == \
        f"{tmp_path}/env/src/llm-jp-tokenizer/models/ver3.1/llm-jp-tokenizer-100k.ver3.1.model"


def test_write_records_list_and_derivation(tmp_path, small_list):
    out = run_script("train_args", "--exp-dir", str(tmp_path), "--task", TASK, "--param", V4, "--size", "50B",
                     "--seed", "7", "--data-list", str(small_list), "--tokenizer-model", "/t", "--write",
                     "--world-size", "16", "--resolved-at", "job 5.pbs1")
    run = tmp_path / "runs" / TASK / V4 / "50B" / "seed7"
    assert out.stdout.strip() == str(run)
    lines = (run / "train_args.txt").read_text().splitlines()
    record = json.loads((run / "train_args.json").read_text())
    assert record["arguments"] == lines and record["resolved_at"] == "job 5.pbs1" and record["world_size"] == 16
    assert record["data_files"] == 3 and record["total_tokens"] == 100000 and record["provenance"]["git_commit"]
    bad = run_script("train_args", "--exp-dir", str(tmp_path), "--task", TASK, "--param", V4, "--size", "50B",
                     "--seed", "7", "--data-list", str(small_list), "--tokenizer-model", "/t", "--world-size", "24",
                     check=False)
    assert bad.returncode != 0 and "data-parallel size 24" in bad.stderr
