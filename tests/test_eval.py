"""make eval, eval-data, eval-report and the eval rows of make status, on the CPU with the real lm-evaluation-harness.

Two runs converted with the native converter from checkpoints upstream Megatron-LM wrote
(tests/data/upstream_ckpt), their soup (mergekit) and a base converted with make convert-base are evaluated by
make gpu-check's own eval step (tests/gpu/gpu_check.py, Check.evaluate): make eval-data stages a small
multiple-choice dataset from the project's local hub server, make eval runs the harness on it and on local-ppl
(held-out text of the sample), make eval-report compares them. The tests then read what the user reads.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from eval_helpers import MC_REPO, MC_TASK, PPL_TASK, forward_loglikelihood, harness_loglikelihood, mc_repo, \
    write_suite
from gpu.gpu_check import BASE_SEED, SEEDS, Check
from hub_server import HubServer
from pipeline.eval_results import read_record, result_dir

UPSTREAM = REPO / "tests" / "data" / "upstream_ckpt"
ITER = "iter_0000050"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """make gpu-check's eval step on the CPU: the Check, its rows, and the experiment it evaluated."""
    from pipeline.convert_native import convert_checkpoint
    from pipeline.hf_tokenizer import write_hf_tokenizer
    work = tmp_path_factory.mktemp("eval") / "work"
    check = Check(work, work / "no-megatron", UPSTREAM / "tokenizer.model", "python3")
    # the sample whose GSM8K test split is the held-out text (make gpu-check's data step writes it there)
    subprocess.run([sys.executable, str(REPO / "demo" / "demo_data.py"), "--output",
                    str(work / "exp" / "dolmino-mix-1124"), "--docs", "4"], check=True, capture_output=True)
    check.hf_tokenizer = work / "hf-tokenizer"
    write_hf_tokenizer(UPSTREAM / "tokenizer.model", check.hf_tokenizer)
    for seed in SEEDS:
        convert_checkpoint(UPSTREAM / f"mid-seed{seed}", check.run_dir("mid", seed) / "checkpoints_hf" / ITER,
                           tokenizer=check.hf_tokenizer, dtype="fp32", show_progress=False, log=lambda _: None)
    # the base run's checkpoints folder: here seed 2's final save stands in for the pretrained base
    shutil.copytree(UPSTREAM / "mid-seed2", check.run_dir("base", BASE_SEED) / "checkpoints",
                    ignore=shutil.ignore_patterns("train_args.json"))
    check.failed_steps |= {"mid1", "mid2"}     # no training logs here: the report row is skipped
    check.eval_jobs = 2                         # on the CPU, two models at once
    check.soup_report_status()
    check.evaluate()
    return check


def rows(check: Check) -> dict:
    return {r.name: r for r in check.rows}


def test_gpu_check_eval_step_passes_on_cpu(evaluated):
    found = rows(evaluated)
    for name in ("soup", "eval_base", "eval_seed1", "eval_seed2", "eval_soup", "eval_report", "eval_vs_forward"):
        assert found[name].status == "PASS", found[name]
    assert "cpu (float32)" in found["eval_seed1"].figure and "best ingredient" in found["eval_report"].figure



# ---------------------------------------------------------------------------------------------
# make runs on the evaluated experiment
# ---------------------------------------------------------------------------------------------
def run_make(check: Check, *args: str, ok: bool = True, **knobs: str) -> subprocess.CompletedProcess:
    """make TARGET with the check's knobs (EXP_DIR, SCHEDULER=local, TASK, PARAM, ...), then `knobs`."""
    cmd = ["make", "--no-print-directory", "-C", str(REPO), *args, *check.knobs(**knobs)]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if ok and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def eval_knobs(check: Check, **extra: str) -> dict:
    return {"EVAL_SUITE": str(check.work / "eval-suite" / "tiny.yaml"), "SIZE": "mid", "SEEDS": "1 2",
            "SOUP_NAME": "gpu-check-soup", "EVAL_TEXT": str(check.work / "held-out.jsonl"), **extra}


def model_folders(check: Check) -> dict[str, Path]:
    exp = check.work / "exp"
    return {"base": exp / "base_hf", "seed1": check.run_dir("mid", 1) / "checkpoints_hf" / ITER,
            "seed2": check.run_dir("mid", 2) / "checkpoints_hf" / ITER, "soup": exp / "soups" / "gpu-check-soup"}


def results_of(check: Check, label: str) -> Path:
    return result_dir(check.work / "exp", "tiny", model_folders(check)[label])


def jobs(check: Check) -> list[str]:
    path = check.work / "exp" / "jobs.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def test_each_model_keeps_the_harness_results_and_its_exact_command(evaluated):
    staged = json.loads((evaluated.work / "exp" / "eval" / "data" / "staged.json").read_text())["tasks"][MC_TASK]
    assert staged["repo"] == MC_REPO and staged["commit"] == "0123456789abcdef0123456789abcdef01234567"
    for label, folder in model_folders(evaluated).items():
        result = results_of(evaluated, label)
        record = read_record(result)
        assert record["model"]["folder"] == str(folder) and record["model"]["label"] == label
        # one harness run per BOS setting: the perplexity task's text without the tokenizer's BOS (the harness
        # puts its own prefix BOS before it), the multiple-choice contexts with it, as Megatron's documents start
        mc, ppl = record["runs"]
        assert mc["tasks"] == [MC_TASK] and ppl["tasks"] == [PPL_TASK]
        assert f"--model_args pretrained={folder},dtype=float32 " in mc["command_text"]
        assert f"--model_args pretrained={folder},dtype=float32,add_bos_token=False " in ppl["command_text"]
        for run in (mc, ppl):
            assert run["command"][1:4] == ["-m", "lm_eval", "run"]
            assert "--batch_size auto" in run["command_text"] and "--device cpu" in run["command_text"]
        harness = {**json.loads((result / mc["results_file"]).read_text()),   # the harness's own results JSON
                   "n-samples": {}, "results": {}}
        for run in (mc, ppl):
            own = json.loads((result / run["results_file"]).read_text())
            assert own["lm_eval_version"] == "0.4.13" and own["config"]["model_args"]["pretrained"] == str(folder)
            harness["n-samples"].update(own["n-samples"])
            harness["results"].update(own["results"])
        documents = record["eval_text"]["documents"]
        assert harness["n-samples"][MC_TASK]["effective"] == 6
        assert harness["n-samples"][PPL_TASK]["effective"] == documents
        assert 0 <= harness["results"][MC_TASK]["acc,none"] <= 1
        assert 0 < harness["results"][PPL_TASK]["bits_per_byte,none"] < 8    # better than not knowing the bytes
        assert record["datasets"][MC_TASK]["commit"] == staged["commit"]
        assert record["key"]["harness_version"] == "0.4.13"
        assert record["tokenizer"].startswith("40 probes encode as trained: tokenizer.model")


def test_the_harness_scores_the_model_the_converter_wrote(evaluated):
    """Its log-likelihood of one held-out text is the converted model's own forward pass (fp32, CPU)."""
    for label in ("seed1", "soup"):
        text, harness = harness_loglikelihood(results_of(evaluated, label))
        own = forward_loglikelihood(model_folders(evaluated)[label], text)
        assert abs(harness - own) <= 1e-4 * abs(own), (label, harness, own)
    seed1, seed2 = (harness_loglikelihood(results_of(evaluated, s))[1] for s in ("seed1", "seed2"))
    assert seed1 != seed2, "two different models score the text differently"


def test_a_second_make_eval_evaluates_nothing_again(evaluated, fake_pbs):
    before = jobs(evaluated)
    again = run_make(evaluated, "eval", **eval_knobs(evaluated))
    assert again.stderr.count("already evaluated on suite tiny") == 4 and "nothing to evaluate" in again.stderr
    assert jobs(evaluated) == before
    # another file in a model folder: that model only is evaluated again (here: submitted, not run)
    config = model_folders(evaluated)["seed2"] / "generation_config.json"
    original = config.read_bytes()
    try:
        config.write_text(json.dumps({**json.loads(original), "max_new_tokens": 7}))
        pbs = run_make(evaluated, "eval", **eval_knobs(evaluated, SCHEDULER="pbs", PBS_GROUP="g", PBS_QUEUE="q"))
        (sub,) = fake_pbs.submissions()
        assert sub["script"] == str(REPO / "pbs" / "eval.pbs") and "-J" not in sub["argv"]
        plan = json.loads(Path(sub["variables"]["EVAL_PLAN"]).read_text())
        assert [m["model"]["label"] for m in plan["models"]] == ["seed2"]
        assert pbs.stdout.strip().splitlines()[-1] == sub["job_id"]
    finally:
        config.write_bytes(original)
    assert "nothing to evaluate" in run_make(evaluated, "eval", **eval_knobs(evaluated)).stderr


def test_eval_report_prints_and_writes_the_table_and_the_chart(evaluated):
    out = run_make(evaluated, "eval-report", **eval_knobs(evaluated)).stdout
    header = next(line for line in out.splitlines() if line.startswith("task"))
    assert header.split()[:6] == ["task", "metric", "base", "seed1", "seed2", "soup"] and "soup - best" in header
    line = next(line for line in out.splitlines() if line.startswith(f"{PPL_TASK}  bits_per_byte"))
    assert " v " in line and "(+" in line and "(seed" in line    # lower is better; delta to base; best ingredient
    verdict = [line for line in out.splitlines() if "its best ingredient" in line]
    assert len(verdict) == 1 and verdict[0].startswith("suite tiny: the soup")
    report = evaluated.work / "exp" / "eval" / "reports" / "tiny" / "gpu-check-soup"
    with open(report / "report.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 * 4 and {r["model"] for r in table} == {"base", "seed1", "seed2", "soup"}
    soup = next(r for r in table if r["model"] == "soup" and r["metric"] == "acc,none")
    assert soup["role"] == "soup" and float(soup["stderr"]) > 0 and soup["delta_vs_base"] != ""
    markdown = (report / "report.md").read_text()
    assert "| task | metric | base | seed1 | seed2 | soup |" in markdown and verdict[0] in markdown
    assert "-m lm_eval run" in markdown and "![chart](report.png)" in markdown
    import matplotlib.image
    image = matplotlib.image.imread(report / "report.png")
    assert image.shape[0] > 300 and image.shape[1] > 600


def test_status_shows_each_models_eval_state(evaluated):
    out = run_make(evaluated, "status").stdout
    section = out.split("Evaluations (under")[1]
    done = [line for line in section.splitlines() if line.startswith("tiny ") and "  done  " in line]
    assert len(done) == 4 and any("soups/gpu-check-soup" in line for line in done)
    assert all("lm-eval 0.4.13, float32" in line for line in done)


def test_a_failing_evaluation_leaves_no_result_and_shows_in_status(evaluated, tmp_path):
    """A model whose config does not fit its weights: the checks pass, the harness fails to load it."""
    broken = tmp_path / "broken-model"
    shutil.copytree(model_folders(evaluated)["seed1"], broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    result = run_make(evaluated, "eval", ok=False, **eval_knobs(evaluated, EVAL_MODELS=str(broken)))
    assert result.returncode != 0 and "the harness exited 1 on tiny_mc" in result.stdout + result.stderr
    folder = result_dir(evaluated.work / "exp", "tiny", broken)
    assert not folder.exists() and not list(folder.parent.glob(f".{folder.name}.tmp.*")), "temporaries removed"
    assert (folder.parent / f".{folder.name}.failed.json").is_file()
    status = run_make(evaluated, "status").stdout
    assert any("broken-model" in line and "  failed  " in line for line in status.splitlines())


def bad_suite(check: Check, tmp: Path, replace: tuple[str, str]) -> str:
    text = (check.work / "eval-suite" / "tiny.yaml").read_text().replace(*replace)
    suite = check.work / "eval-suite" / f"bad-{abs(hash(replace)) % 10**8}.yaml"   # beside its tasks/ folder
    suite.write_text(text)
    return str(suite)


def without(folder: Path, tmp: Path, *names: str) -> str:
    copy = tmp / "partial-model"
    shutil.copytree(folder, copy)
    for name in names:
        (copy / name).unlink()
    return str(copy)


def model_only_tokenizer(folder: Path, tmp: Path) -> str:
    """A copy of `folder` whose tokenizer is the SentencePiece model alone (transformers builds its own from it,
    which encodes otherwise): what the evaluation must refuse to score."""
    copy = tmp / "model-only-tokenizer"
    shutil.copytree(folder, copy)
    (copy / "tokenizer.json").unlink()
    shutil.copyfile(UPSTREAM / "tokenizer.model", copy / "tokenizer.model")
    (copy / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                                            "eos_token": "</s>", "unk_token": "<unk>"}))
    return str(copy)


BAD_INPUTS = {
    "unknown task": (lambda c, t: {"EVAL_SUITE": bad_suite(c, t, ("task: tiny_mc", "task: tiny_mcq"))},
                     "tasks[0].task: 'tiny_mcq' is not a task of lm-eval 0.4.13 (closest: tiny_mc"),
    "missing model folder": (lambda c, t: {"EVAL_MODELS": str(t / "no-such-model")},
                             "no-such-model: no-such-model: model folder not found"),
    "incomplete model folder": (lambda c, t: {"EVAL_MODELS": without(model_folders(c)["seed1"], t,
                                                                     "model-00001-of-00001.safetensors")},
                                "partial-model/model-00001-of-00001.safetensors: model partial-model's weight shard "
                                "is missing"),
    "no tokenizer files": (lambda c, t: {"EVAL_MODELS": without(model_folders(c)["seed1"], t, "tokenizer.json")},
                           "no tokenizer files (tokenizer.json, tokenizer.model, vocab.json)"),
    "a tokenizer other than the training one": (
        lambda c, t: {"EVAL_MODELS": model_only_tokenizer(model_folders(c)["seed1"], t)},
        "its Hugging Face tokenizer does not encode as the training tokenizer"),
    "unknown suite key": (lambda c, t: {"EVAL_SUITE": bad_suite(c, t, ("num_fewshot: 0\n    metrics: [\"acc",
                                                                        "fewshot: 0\n    metrics: [\"acc"))},
                          "tasks[0]: unknown key(s) fewshot (allowed: dataset, limit, metrics, note, num_fewshot, "
                          "task)"),
    "dataset not staged": (
        lambda c, t: {"EXP_DIR": str(t / "fresh-exp"), "EVAL_MODELS": str(model_folders(c)["seed1"])},
        f"task tiny_mc reads dataset {MC_REPO}: not staged under"),
    "dataset staged from another repository": (
        lambda c, t: {"EVAL_SUITE": bad_suite(c, t, (f"repo: {MC_REPO}", "repo: pipeline-tests/other"))},
        f"task tiny_mc reads dataset pipeline-tests/other: staged from {MC_REPO}, not pipeline-tests/other"),
    "EVAL_TEXT missing": (lambda c, t: {"EVAL_TEXT": ""}, "EVAL_TEXT is not set: suite tiny scores the JSONL file"),
    "EVAL_TEXT without text": (
        lambda c, t: {"EVAL_TEXT": str(write(t / "notext.jsonl", '{"body": "x"}\n'))},
        "notext.jsonl:1: no string \"text\" field"),
    "gpu suite without GPU": (lambda c, t: {"EVAL_SUITE": bad_suite(c, t, ("device: any", "device: gpu"))},
                              "needs a GPU (device: gpu in"),
    "vllm without vLLM": (lambda c, t: {"EVAL_BACKEND": "vllm"}, "EVAL_BACKEND=vllm: vLLM is not installed"),
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_one_clear_line_and_no_job(evaluated, tmp_path, case):
    knobs, message = BAD_INPUTS[case]
    plans = evaluated.work / "exp" / "eval" / "plans"
    before = (jobs(evaluated), sorted(plans.glob("*.json")))
    result = run_make(evaluated, "eval", ok=False, **eval_knobs(evaluated, **knobs(evaluated, tmp_path)))
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and (jobs(evaluated), sorted(plans.glob("*.json"))) == before
    error = [line for line in result.stderr.splitlines() if line.startswith("error:") or line.startswith("  ")]
    if case != "a tokenizer other than the training one":   # that one shows both id sequences (tokenizer_check)
        assert len(error) <= 2, result.stderr     # the error line (and, for a list of problems, the one problem)


# ---------------------------------------------------------------------------------------------
# make chain, make eval-data's refusals, make eval-text, the shipped suites
# ---------------------------------------------------------------------------------------------
PBS = ["SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=rt_HF"]


def test_chain_submits_the_eval_job_after_the_conversions_and_the_soup(make, fake_pbs, setup, tmp_path):
    text = write(tmp_path / "held-out.jsonl", '{"text": "a held-out document"}\n')
    knobs = [*setup.knobs(), *PBS, "SEEDS=42 666", "CONVERTER=native", "VOCAB_SIZE=99", f"BASE_CKPT={setup.pretrained}",
             "BASE_ITER=30",
             f"SOUP_CONFIG_DIR={tmp_path / 'merge'}", "EVAL_SUITE=local-ppl", f"EVAL_TEXT={text}", "EVAL_QUEUE=rt_HG"]
    refused = make("chain", *[k for k in knobs if not k.startswith("EVAL_TEXT")], check=False)
    assert refused.returncode != 0 and "EVAL_TEXT is not set" in refused.stderr
    assert fake_pbs.submissions() == [], "a bad eval knob stops the chain before any job"
    planned = make("-n", "chain", *knobs).stdout
    assert "--eval-opt='--suite=local-ppl'" in planned and f"--eval-opt='--eval-text={text}'" in planned
    result = make("chain", "-s", *knobs)
    subs = fake_pbs.submissions()
    converts = [s["job_id"] for s in subs if s["script"].endswith("convert.pbs")]
    soup, evaluation = subs[-2:]
    assert soup["script"].endswith("soup.pbs") and evaluation["script"] == str(REPO / "pbs" / "eval.pbs")
    assert evaluation["depend"] == [["afterok", [*converts, soup["job_id"]]]] and evaluation["queue"] == "rt_HG"
    assert evaluation["argv"][evaluation["argv"].index("-J") + 1] == "0-2"
    plan = json.loads(Path(evaluation["variables"]["EVAL_PLAN"]).read_text())
    assert [(m["model"]["label"], m["model"]["pending"]) for m in plan["models"]] == \
        [("seed42", True), ("seed666", True), ("soup", True)]
    assert plan["models"][0]["model"]["folder"] == str(setup.run(42) / "checkpoints_hf" / "iter_0000001")
    assert "no base model" in result.stderr and f"chain: eval {evaluation['job_id']}" in result.stderr
    assert result.stdout.strip() == soup["job_id"], "stdout keeps the soup's id, as before"


def test_eval_data_refuses_a_gated_dataset_and_a_moved_pin(make, tmp_path):
    suite = write_suite(tmp_path / "suite")
    with HubServer(mc_repo(gated=True)) as hub:
        gated = make("eval-data", f"EVAL_SUITE={suite}", f"HF_ENDPOINT={hub.url}", check=False)
    assert gated.returncode != 0 and "Traceback" not in gated.stderr
    assert f"{MC_REPO} is gated: open https://huggingface.co/datasets/{MC_REPO}" in gated.stderr
    assert "accept its terms" in gated.stderr
    pinned = write_suite(tmp_path / "pinned")
    pinned.write_text(pinned.read_text().replace("revision: null", f"revision: {'f' * 40}"))
    with HubServer(mc_repo()) as hub:
        moved = make("eval-data", f"EVAL_SUITE={pinned}", f"HF_ENDPOINT={hub.url}", check=False)
    assert moved.returncode != 0 and f"pins {MC_REPO} at {'f' * 40}, but the hub's main is now 0123" in moved.stderr


def test_eval_text_samples_documents_of_files_the_mixture_does_not_use(exp_dir, tmp_path):
    from pipeline.eval_text import write_held_out
    merged = exp_dir / "dolmino-mix-1124-extracted-merged"
    files = {"dclm/dclm-0000-0009": 3, "dclm/dclm-0010-0019": 4, "flan/flan-all": 2, "pes2o/pes2o-all": 2,
             "stackexchange/stackexchange-all": 2, "wiki/wiki-all": 5, "math/gsm8k-all": 2}
    for name, count in files.items():
        write(merged / f"{name}.jsonl",
              "".join(json.dumps({"text": f"{name} document {i}"}) + "\n" for i in range(count)))
    prefix = "dolmino-mix-1124-demo-tokenized/{}_text_document".format
    lines = ["export TRAIN_DATA_PATH=(", *[f"    100 {prefix(n)}" for n in files], ")"]
    all_list = write(tmp_path / "all.sh", "\n".join(lines) + "\n")
    used = [n for n in files if n not in ("dclm/dclm-0010-0019", "wiki/wiki-all")]
    mix = write(tmp_path / "mix.sh", "\n".join(["export TRAIN_DATA_PATH=(", *[f"    50 {prefix(n)}" for n in used],
                                                 f"    0 {prefix('wiki/wiki-all')}", ")"]) + "\n")
    out = tmp_path / "held-out.jsonl"
    counts = write_held_out(exp_dir, "demo", "x", out, per_source=3, data_list=str(mix), all_list=str(all_list))
    assert counts == {"dclm": 3, "flan": 0, "pes2o": 0, "stackexchange": 0, "wiki": 3, "math": 0}
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {d["source"] for d in docs} == {"dclm", "wiki"} and all("dclm-0010-0019 document" in d["text"] or
                                                                   "wiki-all document" in d["text"] for d in docs)
    again = tmp_path / "again.jsonl"
    write_held_out(exp_dir, "demo", "x", again, per_source=3, data_list=str(mix), all_list=str(all_list))
    assert again.read_bytes() == out.read_bytes(), "seeded: the same documents every time"
    from pipeline.errors import PipelineError
    with pytest.raises(PipelineError, match="every file of task demo is in the mixture"):
        write_held_out(exp_dir, "demo", "x", out, per_source=3, data_list=str(all_list), all_list=str(all_list))


def test_the_shipped_suites_name_tasks_and_datasets_the_harness_has():
    """olmo2, ja, quick and local-ppl against the installed harness's registry (with the project's own tasks);
    each leaf task's dataset is the one its YAML reads."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml
    from pipeline.eval_suite import load_suite
    from pipeline.paths import EVAL_TASKS_DIR
    index = TaskManager(include_path=str(EVAL_TASKS_DIR)).task_index
    for name in ("olmo2", "ja", "quick", "local-ppl"):
        suite = load_suite(name)
        for task in suite.tasks:
            entry = index.get(task.task)
            assert entry is not None, (name, task.task)
            if task.hub and entry is not None and entry.yaml_path and entry.kind.name == "TASK":
                config = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
                assert config["dataset_path"] == task.hub.repo, (name, task.task)
    assert {t.task for t in load_suite("ja").tasks} == {
        t for t in index if t.startswith("ja_leaderboard_")}, "every task of the harness's Japanese leaderboard"


def test_the_soup_verdict_follows_each_metrics_direction():
    from pipeline.eval_report import Cell, Row, compare, suite_verdict
    ppl = Row("local_ppl", "bits_per_byte,none", False, {"seed1": Cell(2.0, None), "seed2": Cell(1.8, None),
                                                         "soup": Cell(1.7, None)})
    assert compare(ppl, ["seed1", "seed2"], "soup").best == "seed2"
    assert "the soup BEATS its best ingredient seed2" in suite_verdict([ppl], ["seed1", "seed2"], "soup", "x")
    acc = Row("mc", "acc,none", True, {"seed1": Cell(0.6, 0.01), "seed2": Cell(0.5, 0.01), "soup": Cell(0.55, 0.01)})
    comparison = compare(acc, ["seed1", "seed2"], "soup")
    assert comparison.best == "seed1" and abs(comparison.soup_vs_mean) < 1e-12
    mixed = suite_verdict([acc, ppl], ["seed1", "seed2"], "soup", "x")
    assert "does NOT beat its best ingredient seed1" in mixed and "higher-is-better metrics only" in mixed
