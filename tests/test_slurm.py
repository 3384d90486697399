"""SCHEDULER=slurm on a real Slurm cluster of two nodes (tests/slurm_cluster.py, started once per session): the
demo's data chain as dependent jobs gives the bytes SCHEDULER=local gives, a failed job leaves its dependents
unrun and make status says so, an array runs every index, scancel leaves no output under its final name,
a value with commas, spaces and quotes reaches the job as it is, a live train job is found, a training job
on two nodes forms one process group, and make chain's jobs run init, train, convert and soup in order.
Skipped, with the reason, where Slurm is not installed or cannot be started (it needs root)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEMO, REPO, run_script
from tokenize_helpers import corpus_texts, tiny_sp_model, write_jsonl
from train_helpers import data_list, distributed_megatron, write_tokenized

SLURM = ("SCHEDULER=slurm", "SLURM_ACCOUNT=testaccount", "SLURM_PARTITION=debug")
DATASET = "dolmino-mix-1124"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_sp_model(tmp_path_factory.getbasetemp() / "slurm-tokenizer")


def submit(exp: Path, template: Path, name: str, *args: str) -> str:
    """scripts/submit.py under Slurm; the job id it prints."""
    return run_script("submit", "--scheduler", "slurm", "--account", "testaccount", "--partition", "debug",
                      "--exp-dir", str(exp), "--template", str(template), "--name", name, *args).stdout.strip()


def probe_template(folder: Path, body: str, name: str = "probe.pbs") -> Path:
    path = folder / name
    path.write_text("#!/bin/bash\nset -euo pipefail\nsource \"${REPO_DIR}/pbs/common.sh\"\njob_start\n" + body)
    return path


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_data_chain_as_dependent_jobs_gives_the_bytes_of_a_local_run(slurm_cluster, make, tmp_path, model):
    def knobs(exp: Path, *extra: str) -> tuple[str, ...]:
        return (f"EXP_DIR={exp}", f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny", "ALLOW_PARTIAL=1",
                "TASK=demo", "SIZE=demo", "PARAM=tiny", f"TASK_OUT={exp / 'task'}", *extra)

    local, slurm = tmp_path / "local", tmp_path / "slurm"
    for exp in (local, slurm):
        run_script("demo_data", "--output", str(exp / DATASET), "--docs", "5", folder=DEMO)
    make("data", *knobs(local))

    # every job submitted at once, each after the one before; tokenize, submitted while merge has not run,
    # is one job that plans when it starts
    extract = make("-s", "extract", *knobs(slurm, *SLURM, "EXTRACT_CHUNKS=3")).stdout.strip()
    merge = make("-s", "merge", *knobs(slurm, *SLURM, f"DEPEND=afterok:{extract}")).stdout.strip()
    tokenize = make("-s", "tokenize", *knobs(slurm, *SLURM, f"DEPEND=afterok:{merge}")).stdout.strip()
    counted = submit(slurm, REPO / "pbs" / "run_step.pbs", "count", "--var", "STEP=count", "--var",
                     f"STEP_ARGS=--exp-dir {slurm} --task demo --tokenizer-name tiny --out-dir {slurm / 'task'}",
                     "--depend", f"afterok:{tokenize}")
    mixed = submit(slurm, REPO / "pbs" / "run_step.pbs", "mix", "--var", "STEP=mix", "--var",
                   f"STEP_ARGS=--task demo --size demo --param tiny --out-dir {slurm / 'task'}",
                   "--depend", f"afterok:{counted}")
    states = slurm_cluster.wait([extract, merge, tokenize, counted, mixed])
    assert set(states.values()) == {"COMPLETED"} and len(states) == 3 + 1 + 1 + 1 + 1, states
    # with merge done, tokenize is an array of one index per file: the same bytes again
    array = make("-s", "tokenize", *knobs(slurm, *SLURM, "TOKENIZER_NAME=again")).stdout.strip()
    indices = slurm_cluster.wait([array])
    assert len(indices) > 1 and set(indices.values()) == {"COMPLETED"}, indices
    assert {k: v for k, v in files_of(slurm / f"{DATASET}-again-tokenized").items() if not k.endswith(".json")} \
        == {k: v for k, v in files_of(local / f"{DATASET}-tiny-tokenized").items() if not k.endswith(".json")}

    for tree in (f"{DATASET}-extracted-merged", f"{DATASET}-tiny-tokenized"):
        ours = {k: v for k, v in files_of(slurm / tree).items() if not k.endswith(".json")}
        assert ours == {k: v for k, v in files_of(local / tree).items() if not k.endswith(".json")}
        assert any(k.endswith(".bin") for k in ours) or tree.endswith("merged")
    lists = ("train_data.all.sh", "train_data_demo.sh", "train_data_demo.md")
    for name in lists:
        assert (slurm / "task" / name).read_text().replace(str(slurm), "EXP") == \
            (local / "task" / name).read_text().replace(str(local), "EXP"), name
    jobs = [json.loads(line) for line in (slurm / "jobs.jsonl").read_text().splitlines()]
    assert [j["scheduler"] for j in jobs] == ["slurm"] * 6 and jobs[0]["array"] == "0-2"
    assert "PLAN_ARGS" in jobs[2]["variables"] and jobs[5]["array"] == f"0-{len(indices) - 1}"


def test_a_failed_job_leaves_its_dependents_unrun_and_status_says_so(slurm_cluster, make, exp_dir, tmp_path):
    failing = submit(exp_dir, probe_template(tmp_path, "exit 3\n"), "fails")
    after = submit(exp_dir, probe_template(tmp_path, "touch \"${EXP_DIR}/ran\"\n", "after.pbs"), "after",
                   "--depend", f"afterok:{failing}")
    states = slurm_cluster.wait([failing, after])
    assert states == {failing: "FAILED", after: "PENDING"}
    assert not (exp_dir / "ran").exists()
    status = make("status", *SLURM).stdout
    assert any(failing in line and "FAILED" in line for line in status.splitlines()), status
    assert any(after in line and "PENDING (DependencyNeverSatisfied)" in line for line in status.splitlines())
    subprocess.run(["scancel", after], check=True)


def test_an_array_runs_every_index_with_the_pbs_variables_mapped(slurm_cluster, exp_dir, tmp_path):
    body = ('printf "%s %s %s\\n" "${PBS_ARRAY_INDEX}" "${PBS_JOBID}" "$(sort -u "${PBS_NODEFILE}" | wc -l)" '
            '> "${EXP_DIR}/index-${PBS_ARRAY_INDEX}"\n')
    job = submit(exp_dir, probe_template(tmp_path, body), "array", "--array", "0-4")
    states = slurm_cluster.wait([job])
    assert sorted(states) == [f"{job}_{i}" for i in range(5)] and set(states.values()) == {"COMPLETED"}
    for i in range(5):
        assert (exp_dir / f"index-{i}").read_text().split() == [str(i), f"{job}_{i}", "1"]
        status = json.loads((exp_dir / "logs" / f"array-{job}_{i}.status").read_text())
        assert status["status"] == 0 and status["array_index"] == str(i)


def test_scancel_of_a_running_job_leaves_no_file_under_a_final_name(slurm_cluster, make, exp_dir, model):
    merged = exp_dir / f"{DATASET}-extracted-merged" / "big" / "big-all.jsonl"
    write_jsonl(merged, corpus_texts(seed=3) * 60)          # tens of MB: seconds of tokenizing
    stat = merged.stat()
    record = exp_dir / ".state" / DATASET / "merge" / "done.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"outputs": [{"path": "big/big-all.jsonl", "source": "big", "bytes": stat.st_size,
                                               "documents": 1, "mtime_ns": stat.st_mtime_ns}]}))
    job = make("-s", "tokenize", *SLURM, f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny",
               "TOKENIZE_WORKERS=1").stdout.strip()
    log = exp_dir / "logs" / f"tokenize-{DATASET}-tiny-{job}.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and "input PLAN=" in log.read_text()):
        assert time.monotonic() < deadline, "the tokenize job did not start"
        time.sleep(0.2)
    time.sleep(1.0)
    subprocess.run(["scancel", job], check=True)
    assert slurm_cluster.wait([job]) == {job: "CANCELLED"}
    out = exp_dir / f"{DATASET}-tiny-tokenized"
    finals = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")] if out.exists() else []
    assert finals == [], f"under final names after scancel: {finals}"
    assert not (exp_dir / ".state" / DATASET / "tokenize-tiny" / "done.json").exists()
    assert not list((exp_dir / ".state" / DATASET / "tokenize-tiny").glob("big/*.json"))


def test_a_value_with_commas_spaces_and_quotes_reaches_the_job_as_it_is(slurm_cluster, exp_dir, tmp_path):
    value = """a,b c  'single' "double" $HOME $(touch x) `x` \\ ; * end,"""
    job = submit(exp_dir, probe_template(tmp_path, 'printf "%s" "${VALUE}" > "${EXP_DIR}/value"\n'), "value",
                 "--var", f"VALUE={value}")
    assert slurm_cluster.wait([job]) == {job: "COMPLETED"}
    assert (exp_dir / "value").read_text() == value
    assert not (REPO / "x").exists() and not (exp_dir / "x").exists()


def test_a_live_train_job_is_found_and_a_finished_one_is_not(slurm_cluster, exp_dir, tmp_path):
    from pipeline.preflight import live_job
    run = exp_dir / "runs" / "t" / "p" / "50B" / "seed1"
    template = probe_template(tmp_path, "sleep 60\n", "train.pbs")   # named as the train template
    job = submit(exp_dir, template, "train-t", "--var", f"RUN_DIR={run}")
    deadline = time.monotonic() + 30
    while (found := live_job(exp_dir, run, "slurm")) is None or found[1] != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} not seen running: {found}"
        time.sleep(0.3)
    assert found == (job, "RUNNING")
    subprocess.run(["scancel", job], check=True)
    slurm_cluster.wait([job])
    assert live_job(exp_dir, run, "slurm") is None


def test_a_train_job_runs_under_slurm_on_the_node_list(slurm_cluster, make, setup, launch):
    # the same pbs/train.pbs as under PBS; the fake mpirun (on PATH, which sbatch passes on) records the launch
    env_dir, record = launch
    setup.init(42)
    knobs = [k for k in setup.knobs() if not k.startswith("MEGATRON_PATH=")]
    job = make("train", "-s", *knobs, *SLURM, f"ENV_DIR={env_dir}", "GPUS_PER_NODE=2").stdout.strip()
    assert slurm_cluster.wait([job]) == {job: "COMPLETED"}
    call = json.loads(record.read_text())
    assert call["argv"][3:7] == ["-np", "2", "--npernode", "2"]
    assert call["env"]["MASTER_ADDR"] == slurm_cluster.job_nodes(job)[0]
    resolved = json.loads((setup.run(42) / "train_args.json").read_text())
    assert resolved["resolved_at"] == f"job {job}" and resolved["world_size"] == 2
    again = make("train", *knobs, *SLURM, f"ENV_DIR={env_dir}", "GPUS_PER_NODE=2", check=False)
    assert again.returncode == 0, again.stderr    # finished: not a live job


def test_two_nodes_start_one_torchrun_each_that_meet_at_the_first_node(slurm_cluster, make, setup):
    if len(slurm_cluster.nodes) < 2:
        pytest.skip("this Slurm has one node (no mount namespace could name a second)")
    setup.init(42)
    megatron = distributed_megatron(setup.tmp / "Megatron-dist", "llmjp-v4")
    job = make("train", "-s", *setup.knobs(MEGATRON_PATH=megatron), *SLURM, "NODES=2", "LAUNCHER=torchrun",
               "GPUS_PER_NODE=1", f"TRAIN_PYTHON={sys.executable}").stdout.strip()
    assert slurm_cluster.wait([job], timeout=240) == {job: "COMPLETED"}, (setup.run(42) / f"train-{job}.err")
    nodes = slurm_cluster.job_nodes(job)
    assert nodes == ["node1", "node2"]
    run = setup.run(42)
    ranks = [json.loads((run / f"launch-rank{rank}.json").read_text()) for rank in (0, 1)]
    # srun started one torchrun per node, node rank = the node's place in the list; its two workers formed
    # one process group at the first node's name
    assert {(r["node_rank"], r["node"]) for r in ranks} == {("0", "node1"), ("1", "node2")}
    assert all(r["world_size"] == 2 and r["sum"] == 1 + 2 and r["master_addr"] == "node1" for r in ranks)
    resolved = json.loads((run / "train_args.json").read_text())
    assert resolved["world_size"] == 2 and resolved["launcher"] == "torchrun"
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == str(resolved["train_iters"])


UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream_ckpt"


def test_chain_runs_init_train_convert_and_soup_as_dependent_jobs(slurm_cluster, make, exp_dir, tmp_path):
    """make chain under Slurm on a checkpoint written by upstream Megatron-LM: every job of the training half
    through sbatch with afterok, each doing its real work but the training itself (the stand-in saves the
    start checkpoint as its final iteration), so each seed's conversion equals converting the base."""
    from pipeline.convert_native import convert_checkpoint
    from pipeline.hf_tokenizer import write_hf_tokenizer
    from safetensors.torch import load_file

    base = Path(shutil.copytree(UPSTREAM / "mid-seed1", tmp_path / "base",
                                ignore=shutil.ignore_patterns("train_args.json")))
    prefixes = {"data/a_text_document": 1500, "data/b_text_document": 600}   # 2,100 tokens: 3 iterations
    listed = data_list(tmp_path / "train_data_mid.sh", write_tokenized(exp_dir, prefixes))
    tokenizer = tmp_path / "hf-tokenizer"
    write_hf_tokenizer(UPSTREAM / "tokenizer.model", tokenizer)
    megatron = distributed_megatron(tmp_path / "Megatron-LM", "upstream")
    soup = make("chain", "-s", *SLURM, "TASK=t", "PARAM=tiny", "SIZE=mid", "SEEDS=1 2", f"BASE_CKPT={base}",
                f"DATA_LIST={listed}", f"TOKENIZER_MODEL={UPSTREAM / 'tokenizer.model'}",
                f"MEGATRON_PATH={megatron}", f"TRAIN_PYTHON={sys.executable}", "LAUNCHER=torchrun",
                "GPUS_PER_NODE=1", "CONVERTER=native", f"HF_TOKENIZER_DIR={tokenizer}", "CONVERT_DTYPE=fp32",
                "SOUP_NAME=slurm-soup", f"SOUP_CONFIG_DIR={tmp_path / 'merge'}").stdout.strip()
    jobs = [json.loads(line) for line in (exp_dir / "jobs.jsonl").read_text().splitlines()]
    assert [j["template"].rsplit("/", 1)[1] for j in jobs] == ["run_step.pbs", "train.pbs", "convert.pbs"] * 2 \
        + ["soup.pbs"] and jobs[-1]["job_id"] == soup
    states = slurm_cluster.wait([j["job_id"] for j in jobs], timeout=400)
    assert set(states.values()) == {"COMPLETED"}, states

    convert_checkpoint(UPSTREAM / "mid-seed1", tmp_path / "direct", tokenizer=tokenizer, dtype="fp32",
                       show_progress=False, log=lambda _: None)
    want = {name: tensor for f in sorted((tmp_path / "direct").glob("*.safetensors"))
            for name, tensor in load_file(f).items()}
    for seed in (1, 2):
        converted = exp_dir / "runs" / "t" / "tiny" / "mid" / f"seed{seed}" / "checkpoints_hf" / "iter_0000003"
        got = {name: tensor for f in sorted(converted.glob("*.safetensors")) for name, tensor in load_file(f).items()}
        assert got.keys() == want.keys() and all(got[n].equal(want[n]) for n in want), seed
    record = json.loads((exp_dir / "soups" / "slurm-soup" / "soup.json").read_text())
    assert record["verification"]["tensors"] == len(want)


# --- without a cluster -------------------------------------------------------------------------------
@pytest.mark.parametrize("missing, knob", [("SLURM_ACCOUNT=", "SLURM_ACCOUNT"),
                                           ("SLURM_PARTITION=", "SLURM_PARTITION")])
def test_the_account_and_partition_are_required(make, missing, knob):
    result = make("extract", *SLURM, missing, check=False)
    assert result.returncode != 0 and f"{knob} is not set: SCHEDULER=slurm needs it" in result.stderr


def test_several_nodes_under_slurm_start_one_torchrun_per_node(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("gpu01\ngpu02\n")
    script = (f'source {REPO}/pbs/megatron.sh; PBS_NODEFILE={nodefile}; PBS_JOBID=4711; SLURM_JOB_ID=4711; '
              'GPUS_PER_NODE=8 LAUNCHER=torchrun TRAIN_PYTHON=python3 REPO_DIR=/repo; '
              'job_gpus; job_launcher; megatron_launch pretrain_gpt.py; printf "%s\\n" "${launch[@]}"')
    line = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert line[:7] == ["srun", "--nodes", "2", "--ntasks-per-node", "1", "--kill-on-bad-exit=1", "bash"]
    assert line[7:13] == ["/repo/pbs/torchrun_node.sh", "python3", "2", "8", "gpu01", str(10000 + 4711)]
    # without Slurm torchrun stays on one node
    outside = subprocess.run(["bash", "-c", script.replace("SLURM_JOB_ID=4711; ", "")], capture_output=True,
                             text=True)
    assert outside.returncode == 2 and "LAUNCHER=torchrun runs on one node here" in outside.stderr
    node = subprocess.run(["bash", str(REPO / "pbs" / "torchrun_node.sh"), "echo", "2", "8", "gpu01", "14711",
                           "pretrain_gpt.py", "--x"], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "SLURM_NODEID": "1"}).stdout.split()
    assert node == ["-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "8",
                    "--master-addr", "gpu01", "--master-port", "14711", "pretrain_gpt.py", "--x"]
