"""SCHEDULER=pbs on a real PBS server (OpenPBS built from ../shared/vendor by tests/pbs_cluster.py, two nodes,
ABCI's queues, started once per session): the data chain as dependent jobs gives the bytes SCHEDULER=local gives,
make status tells apart every way a job ends (and what it can still tell without job history), array subjobs keep
their output apart, a job started in $HOME finds its repo, values reach the job as they are or are refused before
qsub, a live train job is found, qdel leaves no output under its final name, make chain's jobs run init, train,
convert and soup in order, and a training job on two nodes launches its ranks with real mpirun from the node file.
Skipped, with the reason, where the OpenPBS source, root, namespaces or the build are missing. The section at
the end checks the same readings against tests/fakepbs, which answers as the real server does."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEMO, REPO, run_script
from tokenize_helpers import corpus_texts, tiny_sp_model, write_jsonl
from train_helpers import data_list, distributed_megatron, write_tokenized

PBS = ("SCHEDULER=pbs", "PBS_GROUP=grp", "PBS_QUEUE=rt_HC")
DATASET = "dolmino-mix-1124"
UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream_ckpt"


@pytest.fixture
def real_pbs(pbs_cluster, monkeypatch):
    """The real server's clients first on PATH (for this process and the makes it starts), job history on."""
    monkeypatch.setenv("PATH", f"{pbs_cluster.bin}{os.pathsep}{os.environ['PATH']}")
    pbs_cluster.set_history(True)
    return pbs_cluster


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_sp_model(tmp_path_factory.getbasetemp() / "pbs-tokenizer")


def submit(exp: Path, template: Path, name: str, *args: str, check: bool = True):
    """scripts/submit.py under PBS; the job id it prints (or the CompletedProcess with check=False)."""
    result = run_script("submit", "--scheduler", "pbs", "--group", "grp", "--queue", "rt_HC", "--exp-dir", str(exp),
                        "--template", str(template), "--name", name, *args, check=check)
    return result.stdout.strip() if check else result


def probe_template(folder: Path, body: str, name: str = "probe.pbs") -> Path:
    path = folder / name
    path.write_text("#!/bin/bash\nset -euo pipefail\nsource \"${REPO_DIR}/pbs/common.sh\"\njob_start\n" + body)
    return path


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def status_line(out: str, job_id: str) -> str:
    found = [line for line in out.splitlines() if f" {job_id} " in line]
    assert found, f"{job_id} not in make status:\n{out}"
    return found[0]


def test_the_data_chain_as_dependent_jobs_gives_the_bytes_of_a_local_run(real_pbs, make, tmp_path, model):
    def knobs(exp: Path, *extra: str) -> tuple[str, ...]:
        return (f"EXP_DIR={exp}", f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny", "ALLOW_PARTIAL=1",
                "TASK=demo", "SIZE=demo", "PARAM=tiny", f"TASK_OUT={exp / 'task'}", *extra)

    local, pbs = tmp_path / "local", tmp_path / "pbs"
    for exp in (local, pbs):
        run_script("demo_data", "--output", str(exp / DATASET), "--docs", "5", folder=DEMO)
    make("data", *knobs(local))

    # every job submitted at once, each after the one before; merge waits for the whole extract array;
    # tokenize, submitted while merge has not run, is one job that plans when it starts
    extract = make("-s", "extract", *knobs(pbs, *PBS, "EXTRACT_CHUNKS=3")).stdout.strip()
    assert re.fullmatch(r"\d+\[\]\.node1", extract), extract
    merge = make("-s", "merge", *knobs(pbs, *PBS, f"DEPEND=afterok:{extract}")).stdout.strip()
    tokenize = make("-s", "tokenize", *knobs(pbs, *PBS, f"DEPEND=afterok:{merge}")).stdout.strip()
    step = REPO / "pbs" / "run_step.pbs"
    counted = submit(pbs, step, "count", "--var", "STEP=count", "--var",
                     f"STEP_ARGS=--exp-dir {pbs} --task demo --tokenizer-name tiny --out-dir {pbs / 'task'}",
                     "--depend", f"afterok:{tokenize}")
    mixed = submit(pbs, step, "mix", "--var", "STEP=mix", "--var",
                   f"STEP_ARGS=--task demo --size demo --param tiny --out-dir {pbs / 'task'}",
                   "--depend", f"afterok:{counted}")
    records = real_pbs.wait([extract, merge, tokenize, counted, mixed], timeout=300)
    assert len(records) == 1 + 3 + 4 and {r["Exit_status"] for r in records.values()} == {0}, records
    # with merge done, tokenize is an array of one index per file: the same bytes again
    array = make("-s", "tokenize", *knobs(pbs, *PBS, "TOKENIZER_NAME=again")).stdout.strip()
    indices = {k: v for k, v in real_pbs.wait([array], timeout=120).items() if k != array}
    assert len(indices) > 1 and {r["Exit_status"] for r in indices.values()} == {0}, indices
    assert {k: v for k, v in files_of(pbs / f"{DATASET}-again-tokenized").items() if not k.endswith(".json")} \
        == {k: v for k, v in files_of(local / f"{DATASET}-tiny-tokenized").items() if not k.endswith(".json")}

    for tree in (f"{DATASET}-extracted-merged", f"{DATASET}-tiny-tokenized"):
        ours = {k: v for k, v in files_of(pbs / tree).items() if not k.endswith(".json")}
        assert ours == {k: v for k, v in files_of(local / tree).items() if not k.endswith(".json")}
        assert any(k.endswith(".bin") for k in ours) or tree.endswith("merged")
    for name in ("train_data.all.sh", "train_data_demo.sh", "train_data_demo.md"):
        assert (pbs / "task" / name).read_text().replace(str(pbs), "EXP") == \
            (local / "task" / name).read_text().replace(str(local), "EXP"), name
    jobs = [json.loads(line) for line in (pbs / "jobs.jsonl").read_text().splitlines()]
    assert [j["scheduler"] for j in jobs] == ["pbs"] * 6 and jobs[0]["array"] == "0-2"
    assert "PLAN_ARGS" in jobs[2]["variables"] and jobs[5]["array"] == f"0-{len(indices) - 1}"
    status = make("status", f"EXP_DIR={pbs}", *PBS[:1]).stdout
    assert re.search(r"F \(exit 0, 3 subjobs\)", status_line(status, extract)), status


def test_a_failed_extract_chunk_never_leads_to_a_merged_tree(real_pbs, make, exp_dir):
    run_script("demo_data", "--output", str(exp_dir / DATASET), "--docs", "5", folder=DEMO)
    broken = sorted((exp_dir / DATASET).rglob("*.gz"))[0]
    broken.write_bytes(b"not gzip at all")
    extract = make("-s", "extract", *PBS, "EXTRACT_CHUNKS=3", "ALLOW_PARTIAL=1").stdout.strip()
    merge = make("-s", "merge", *PBS, f"DEPEND=afterok:{extract}").stdout.strip()
    records = real_pbs.wait([extract, merge])
    subjobs = [v["Exit_status"] for k, v in records.items() if "[" in k and k != extract]
    assert sorted(status != 0 for status in subjobs) == [False, False, True], subjobs
    # OpenPBS gives an array the Exit_status of whichever subjob ended last, and afterok on the array reads that:
    # so merge was either deleted or ran; when it ran, it found extract incomplete and wrote nothing
    ran = "Exit_status" in records[merge]
    if ran:
        assert records[merge]["Exit_status"] != 0
        assert "extract is not complete" in (exp_dir / "logs" / f"merge-{DATASET}-{merge}.log").read_text()
    merged = exp_dir / f"{DATASET}-extracted-merged"
    assert not merged.exists() or not [p for p in merged.rglob("*") if p.is_file()]
    status = make("status", *PBS).stdout
    assert re.search(r"F \(1 of 3 subjobs failed: \[\d\] exit [1-9]", status_line(status, extract)), status
    assert re.search(r"F \(exit [1-9]\d*\)" if ran else r"F \(deleted: its dependency failed\)",
                     status_line(status, merge)), status


def test_make_status_tells_every_way_a_job_ended_and_what_it_can_without_history(real_pbs, make, exp_dir,
                                                                                   tmp_path):
    from pipeline.preflight import live_job
    ok = submit(exp_dir, probe_template(tmp_path, "true\n", "ok.pbs"), "ok")
    fails = submit(exp_dir, probe_template(tmp_path, "exit 3\n", "fails.pbs"), "fails")
    after = submit(exp_dir, probe_template(tmp_path, "touch \"${EXP_DIR}/ran\"\n", "after.pbs"), "after",
                   "--depend", f"afterok:{fails}")
    sleeper = probe_template(tmp_path, "sleep 120\n", "sleeper.pbs")
    walltime = submit(exp_dir, sleeper, "walltime", "--walltime", "00:00:02")
    deleted = submit(exp_dir, sleeper, "deleted")
    array = submit(exp_dir, probe_template(tmp_path, '[[ "${PBS_ARRAY_INDEX}" != 1 ]] || exit 4\n', "array.pbs"),
                   "array", "--array", "0-2")
    run = exp_dir / "runs" / "t" / "p" / "50B" / "seed1"
    running = submit(exp_dir, probe_template(tmp_path, "sleep 120\n", "train.pbs"), "train-t", "--var",
                     f"RUN_DIR={run}")
    real_pbs.wait([deleted, running], until="R")
    subprocess.run(["qdel", deleted], check=True)
    real_pbs.wait([ok, fails, after, walltime, deleted, array], timeout=120)
    assert not (exp_dir / "ran").exists()

    out = make("status", *PBS).stdout
    expected = {ok: r"F \(exit 0\)", fails: r"F \(exit 3\)", after: r"F \(deleted: its dependency failed\)",
                walltime: r"F \(killed: walltime exceeded\)", deleted: r"F \(deleted by qdel\)",
                array: r"F \(1 of 3 subjobs failed: \[1\] exit 4\)", running: r"\sR(\s|$)"}
    for job_id, state in expected.items():
        assert re.search(state, status_line(out, job_id)), (job_id, state, out)
    assert live_job(exp_dir, run, "pbs") == (running, "R")

    # without job history PBS forgets a job as it ends, and qstat -x answers nothing, not even for a running
    # job: that one is still found live, and the others are told from their own logs where they wrote one
    real_pbs.set_history(False)
    try:
        assert live_job(exp_dir, run, "pbs") == (running, "R")
        out = make("status", *PBS).stdout
        expected = {ok: r"ended: exit 0 \(its log; unknown to qstat\)", fails: r"ended: exit 3 \(its log",
                    after: r"unknown to qstat .*no exit status in its log",
                    array: r"ended: 1 of 3 subjobs failed: \[1\] exit 4 \(their logs", running: r"\sR(\s|$)"}
        for job_id, state in expected.items():
            assert re.search(state, status_line(out, job_id)), (job_id, state, out)
        subprocess.run(["qdel", running], check=True)
        deadline = time.monotonic() + 60
        while live_job(exp_dir, run, "pbs") is not None:
            assert time.monotonic() < deadline, "the qdel'ed train job is still live"
            time.sleep(0.5)
    finally:
        real_pbs.set_history(True)


def test_array_subjobs_keep_their_output_apart(real_pbs, exp_dir, tmp_path):
    body = 'echo "index ${PBS_ARRAY_INDEX} of ${PBS_JOBID} on $(hostname)"\n'
    job = submit(exp_dir, probe_template(tmp_path, body), "apart", "--array", "0-3")
    records = real_pbs.wait([job])
    number, suffix = job.split("[]")
    for index in range(4):
        subjob = f"{number}[{index}]{suffix}"
        assert records[subjob]["Exit_status"] == 0
        # qsub -o <logs>/: PBS names each subjob's own file after it; pbs/common.sh's log and status likewise
        assert f"index {index} of {subjob}" in (exp_dir / "logs" / f"{subjob}.OU").read_text()
        tag = f"apart-{number}_{index}_{suffix}"
        assert f"index {index} of {subjob}" in (exp_dir / "logs" / f"{tag}.log").read_text()
        assert json.loads((exp_dir / "logs" / f"{tag}.status").read_text())["array_index"] == str(index)


def test_a_job_starts_in_home_and_still_finds_the_repo_and_exp(real_pbs, exp_dir, tmp_path):
    # the README's hand submission of pbs/run_step.pbs, as a user pastes it (from another folder than the repo)
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^qsub -P gXXX -q rt_HC .*?pbs/run_step\.pbs$", readme, re.M | re.S)[0]
    command = command.replace("$PWD/exp", str(exp_dir)).replace("$PWD", str(REPO)).replace("gXXX", "grp") \
        .replace("pbs/run_step.pbs", str(REPO / "pbs" / "run_step.pbs"))
    job = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    record = real_pbs.wait([job.strip()])[job.strip()]
    assert record["Exit_status"] == 0 and record["jobdir"] == os.environ.get("HOME", "/root")
    assert record["Variable_List"]["PBS_O_WORKDIR"] == str(tmp_path)
    log = (exp_dir / "logs" / f"run_step.pbs-{job.strip()}.log").read_text()
    assert f"Pipeline status for {DATASET} in {exp_dir}" in log and "tokenize-v3.1" in log


def test_values_reach_the_job_as_they_are_or_are_refused_before_qsub(real_pbs, exp_dir, tmp_path):
    value = "a,b c  $HOME $(touch x) `x` ; * end,"
    job = submit(exp_dir, probe_template(tmp_path, 'printf "%s|%s" "${VALUE}" "${AFTER}" > "${EXP_DIR}/value"\n'),
                 "value", "--var", f"VALUE={value}", "--var", "AFTER=end")
    assert real_pbs.wait([job])[job]["Exit_status"] == 0
    assert (exp_dir / "value").read_text() == f"{value}|end"
    assert not (REPO / "x").exists() and not (exp_dir / "x").exists()
    # the real qsub makes a quote inside a value a backslash and drops the variables after it: refused instead
    template = probe_template(tmp_path, "true\n")
    for bad in ("it's", 'say "x"', "back\\slash"):
        refused = submit(exp_dir, template, "bad", "--var", f"VALUE={bad}", check=False)
        assert refused.returncode != 0 and "qsub -v cannot pass" in refused.stderr
    assert len((exp_dir / "jobs.jsonl").read_text().splitlines()) == 1


def test_qdel_of_a_running_tokenize_leaves_no_file_under_a_final_name(real_pbs, make, exp_dir, model):
    merged = exp_dir / f"{DATASET}-extracted-merged" / "big" / "big-all.jsonl"
    write_jsonl(merged, corpus_texts(seed=3) * 60)          # tens of MB: seconds of tokenizing
    stat = merged.stat()
    record = exp_dir / ".state" / DATASET / "merge" / "done.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"outputs": [{"path": "big/big-all.jsonl", "source": "big", "bytes": stat.st_size,
                                               "documents": 1, "mtime_ns": stat.st_mtime_ns}]}))
    job = make("-s", "tokenize", *PBS, f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny",
               "TOKENIZE_WORKERS=1").stdout.strip()
    log = exp_dir / "logs" / f"tokenize-{DATASET}-tiny-{job}.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and "input PLAN=" in log.read_text()):
        assert time.monotonic() < deadline, "the tokenize job did not start"
        time.sleep(0.2)
    time.sleep(1.0)
    subprocess.run(["qdel", job], check=True)
    assert real_pbs.wait([job])[job]["substate"] == 91
    out = exp_dir / f"{DATASET}-tiny-tokenized"
    finals = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")] if out.exists() else []
    assert finals == [], f"under final names after qdel: {finals}"
    assert not (exp_dir / ".state" / DATASET / "tokenize-tiny" / "done.json").exists()


def test_two_nodes_launch_their_ranks_with_real_mpirun_from_the_node_file(real_pbs, make, setup):
    if not shutil.which("mpirun"):
        pytest.skip("no mpirun here (apt-get install openmpi-bin)")
    setup.init(42)
    megatron = distributed_megatron(setup.tmp / "Megatron-dist", "llmjp-v4")
    job = make("train", "-s", *setup.knobs(MEGATRON_PATH=megatron), *PBS[:2], "PBS_QUEUE=rt_HF", "NODES=2",
               "LAUNCHER=mpi", "GPUS_PER_NODE=1", f"TRAIN_PYTHON={sys.executable}").stdout.strip()
    run = setup.run(42)
    record = real_pbs.wait([job], timeout=240)[job]
    assert record["Exit_status"] == 0, (run / f"train-{job.split('.')[0]}.err")
    assert record["exec_host"].split("+")[0].split("/")[0] == "node1" and "node2" in record["exec_host"]
    # rank 0 on the node file's first host, rank 1 on the second, started by mpirun (OpenMPI's variables mapped by
    # pbs/rank_env.sh); one gloo group across both hosts, met at the first one
    ranks = [json.loads((run / f"launch-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["host"]) for r in ranks] == [(0, "node1"), (1, "node2")]
    assert all(r["world_size"] == 2 and r["sum"] == 1 + 2 and r["master_addr"] == "node1" and r["local_rank"] == "0"
               and r["local_world_size"] == "1" for r in ranks)
    resolved = json.loads((run / "train_args.json").read_text())
    assert resolved["world_size"] == 2 and resolved["launcher"] == "mpi"
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == str(resolved["train_iters"])
    log = (setup.exp / "logs" / f"{record['Job_Name']}-{job}.log").read_text()
    assert "launch: mpi on 2 node(s) x 1 GPUs, MASTER_ADDR=node1" in log


def test_chain_runs_init_train_convert_and_soup_as_dependent_jobs(real_pbs, make, exp_dir, tmp_path):
    """make chain under PBS on a checkpoint written by upstream Megatron-LM: every job of the training half
    through qsub with afterok, each doing its real work but the training itself (the stand-in, launched by real
    mpirun, saves the start checkpoint as its final iteration), so each seed's conversion equals converting the
    base."""
    if not shutil.which("mpirun"):
        pytest.skip("no mpirun here (apt-get install openmpi-bin)")
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
    soup = make("chain", "-s", *PBS[:2], "PBS_QUEUE=rt_HF", "CPU_QUEUE=rt_HC", "TASK=t", "PARAM=tiny", "SIZE=mid",
                "SEEDS=1 2", f"BASE_CKPT={base}", f"DATA_LIST={listed}",
                f"TOKENIZER_MODEL={UPSTREAM / 'tokenizer.model'}", f"MEGATRON_PATH={megatron}",
                f"TRAIN_PYTHON={sys.executable}", "LAUNCHER=mpi", "GPUS_PER_NODE=1", "CONVERTER=native",
                f"HF_TOKENIZER_DIR={tokenizer}", "CONVERT_DTYPE=fp32", "SOUP_NAME=pbs-soup",
                f"SOUP_CONFIG_DIR={tmp_path / 'merge'}").stdout.strip()
    jobs = [json.loads(line) for line in (exp_dir / "jobs.jsonl").read_text().splitlines()]
    assert [j["template"].rsplit("/", 1)[1] for j in jobs] == ["run_step.pbs", "train.pbs", "convert.pbs"] * 2 \
        + ["soup.pbs"] and jobs[-1]["job_id"] == soup
    records = real_pbs.wait([j["job_id"] for j in jobs], timeout=400)
    assert {r["Exit_status"] for r in records.values()} == {0}, {k: v.get("Exit_status") for k, v in records.items()}
    assert [records[j["job_id"]]["queue"] for j in jobs[:3]] == ["rt_HC", "rt_HF", "rt_HC"]

    convert_checkpoint(UPSTREAM / "mid-seed1", tmp_path / "direct", tokenizer=tokenizer, dtype="fp32",
                       show_progress=False, log=lambda _: None)
    want = {name: tensor for f in sorted((tmp_path / "direct").glob("*.safetensors"))
            for name, tensor in load_file(f).items()}
    for seed in (1, 2):
        converted = exp_dir / "runs" / "t" / "tiny" / "mid" / f"seed{seed}" / "checkpoints_hf" / "iter_0000003"
        got = {name: tensor for f in sorted(converted.glob("*.safetensors")) for name, tensor in load_file(f).items()}
        assert got.keys() == want.keys() and all(got[n].equal(want[n]) for n in want), seed
    record = json.loads((exp_dir / "soups" / "pbs-soup" / "soup.json").read_text())
    assert record["verification"]["tensors"] == len(want)


# --- the same readings on tests/fakepbs, which answers as the real server does ----------------------------
def test_status_tells_how_each_job_ended_from_qstat_records(make, exp_dir, fake_pbs, tmp_path):
    template = REPO / "tests" / "data" / "echo_vars.pbs"
    ids = [run_script("submit", "--template", str(template), "--name", f"j{n}", "--exp-dir", str(exp_dir),
                      "--scheduler", "pbs", "--group", "g", "--queue", "q", "--var", f"OUT_DIR={tmp_path}",
                      *(["--array", "0-2"] if n == 6 else [])).stdout.strip() for n in range(8)]
    # (state, Exit_status, substate) as the real server reports them; a non-root job qdel'ed while running
    # exits 256 + SIGTERM
    for job_id, args in zip(ids, [("F", 0), ("F", 3), ("F", None, 92), ("F", -29), ("F", 271, 91),
                                  ("F", None, 91), ("B",), ("Q",)]):
        fake_pbs.set_state(job_id, *args)
    subjobs = [ids[6].replace("[]", f"[{i}]") for i in range(3)]
    for subjob, status in zip(subjobs, (0, 4, -29)):
        fake_pbs.set_state(subjob, "F", status)
    fake_pbs.set_state(ids[6], "F", 0, 93)     # the array's own Exit_status: its last subjob's
    out = make("status", "SCHEDULER=pbs").stdout
    expected = [r"F \(exit 0\)", r"F \(exit 3\)", r"F \(deleted before it ran\)", r"F \(killed: walltime exceeded\)",
                r"F \(deleted by qdel\)", r"F \(deleted by qdel before it ran\)",
                r"F \(2 of 3 subjobs failed: \[1\] exit 4, \[2\] killed: walltime exceeded\)", r"\sQ(\s|$)"]
    for job_id, state in zip(ids, expected):
        assert re.search(state, status_line(out, job_id)), (job_id, state, out)


def test_without_job_history_a_running_job_is_still_found(make, exp_dir, fake_pbs, setup, monkeypatch):
    from pipeline.preflight import live_job
    setup.init(42)
    knobs = (*setup.knobs(), "SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=rt_HF")
    first = make("train", "-s", *knobs).stdout.strip()
    fake_pbs.set_state(first, "R")
    monkeypatch.setenv("FAKEPBS_NO_HISTORY", "1")
    assert live_job(setup.exp, setup.run(42), "pbs") == (first, "R")
    refused = make("train", *knobs, check=False)
    assert refused.returncode != 0 and f"job {first} of this run is still live (state R)" in refused.stderr
    fake_pbs.set_state(first, "F", 0)
    assert live_job(setup.exp, setup.run(42), "pbs") is None
    status = make("status", "SCHEDULER=pbs").stdout
    assert re.search(r"unknown to qstat \(no job history\?\); no exit status in its log", status_line(status, first))


def test_mpirun_gets_the_node_files_hosts_and_reaches_them_through_pbs_tmrsh(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("gpu01\ngpu02\n")
    tmrsh = tmp_path / "pbs" / "bin" / "pbs_tmrsh"          # found through pbs.conf: a job's PATH may lack it
    tmrsh.parent.mkdir(parents=True)
    tmrsh.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    tmrsh.chmod(0o755)
    conf = tmp_path / "pbs.conf"
    conf.write_text(f"PBS_SERVER=pbs1\nPBS_EXEC={tmp_path / 'pbs'}\n")
    script = (f'source {REPO}/pbs/megatron.sh; PBS_NODEFILE={nodefile}; PBS_JOBID=4711.pbs1; GPUS_PER_NODE=8; '
              'LAUNCHER=mpi; TRAIN_PYTHON=python3; REPO_DIR=/repo; '
              'job_gpus; job_launcher; megatron_launch pretrain_gpt.py; printf "%s\\n" "${launch[@]}"')

    def launch(**env) -> list[str]:
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", "PBS_CONF_FILE": str(conf), **env}).stdout.split("\n")

    argv = launch()
    assert argv[:12] == ["mpirun", "--display-allocation", "--report-bindings", "--oversubscribe", "-np", "16",
                         "--npernode", "8", "-bind-to", "none", "-map-by", "slot"]
    assert argv[12:20] == ["--host", "gpu01:8,gpu02:8", "--mca", "plm_rsh_agent", "/repo/pbs/tm_rsh.sh",
                           "--mca", "plm_rsh_no_tree_spawn", "1"]
    assert "plm_rsh_agent" not in launch(OMPI_MCA_plm_rsh_agent="ssh")      # the site's or the user's choice
    nodefile.write_text("gpu01\n")
    assert "plm_rsh_agent" not in launch() and "gpu01:8" in launch()        # one node: nothing to reach
    # the agent: OpenMPI hands over the daemon's command line as one text, as to ssh; a shell on the host runs it
    given = ' orted -mca ess "env" -mca orte_hnp_uri "1.0;tcp://10.0.0.1:4000"'
    agent = subprocess.run(["bash", str(REPO / "pbs" / "tm_rsh.sh"), "gpu02", given], capture_output=True, text=True,
                           check=True, env={"PATH": "/usr/bin:/bin", "PBS_TMRSH": str(tmrsh)}).stdout
    assert agent.split("\n")[:4] == ["gpu02", "/bin/sh", "-c", given]
