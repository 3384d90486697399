"""make train / train-seeds / chain: preflight, PBS submissions (strict qsub stand-in) and the local launch."""
from __future__ import annotations

import json
import os
import socket


from conftest import REPO, write_executable
from pipeline.megatron_ckpt import TRACKER
from train_helpers import PREFIXES, TASK, V4, fake_megatron, read_json

PBS = ["SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=rt_HF"]
CONVERT = ["CONVERTER=native", "VOCAB_SIZE=99"]      # make convert's CPU converter: no Megatron needed


def test_pbs_train_is_one_submission_with_resources_and_dependency(make, fake_pbs, setup):
    setup.init(666)
    result = make("train", "-s", *setup.knobs(), *PBS, "NODES=16", "SEED=666", "DEPEND=afterok:123.pbs1")
    subs = fake_pbs.submissions()
    assert len(subs) == 1 and result.stdout.strip() == subs[0]["job_id"] == "1000.pbs1"
    sub = subs[0]
    assert sub["resources"]["select"] == "16" and sub["project"] == "g" and sub["queue"] == "rt_HF"
    assert sub["depend"] == [["afterok", ["123.pbs1"]]] and "depend=afterok:123.pbs1" in sub["argv"]
    assert sub["resources"]["walltime"] == "168:00:00" and sub["script"] == str(REPO / "pbs" / "train.pbs")
    run = setup.run(666)
    assert sub["variables"]["RUN_DIR"] == str(run) and sub["variables"]["SEED"] == "666"
    assert sub["variables"]["TOKENIZER_MODEL"] == str(setup.tokenizer)
    record = read_json(run / "train_args.json")
    assert record["resolved_at"] == "submission" and record["train_iters"] == 1
    assert record["arguments"] == (run / "train_args.txt").read_text().splitlines()
    jobs = [json.loads(line) for line in (setup.exp / "jobs.jsonl").read_text().splitlines()]
    assert jobs[-1]["job_id"] == "1000.pbs1" and jobs[-1]["variables"]["RUN_DIR"] == str(run)


def test_preflight_lists_every_problem_and_submits_nothing(make, fake_pbs, setup):
    first = next(iter(PREFIXES))
    (setup.exp / f"{first}.bin").unlink()
    (setup.exp / "dolmino-mix-1124-v3.1-tokenized/wiki/wiki-all_text_document.idx").write_bytes(b"garbage")
    result = make("train", *setup.knobs(TOKENIZER_MODEL=str(setup.tmp / "none.model"),
                                        MEGATRON_PATH=str(setup.tmp)), *PBS, "NODES=3", check=False)
    err = result.stderr
    assert result.returncode != 0 and "preflight for" in err and fake_pbs.submissions() == []
    assert "1 of 3 data prefixes are not tokenized" in err and f"{first} (.bin missing)" in err
    assert "wiki-all_text_document.idx: not a Megatron index" in err
    assert "none.model: not found" in err and "no pretrain_gpt.py there" in err
    assert "not initialised; run make init" in err
    assert "data-parallel size 24" in err      # 3 nodes x 8 GPUs do not split a batch of 1024


def test_live_job_of_the_same_run_is_refused_unless_force(make, fake_pbs, setup):
    setup.init(42)
    first = make("train", "-s", *setup.knobs(), *PBS).stdout.strip()
    for state in ("Q", "R", "H"):
        fake_pbs.set_state(first, state)
        refused = make("train", *setup.knobs(), *PBS, check=False)
        assert refused.returncode != 0 and f"job {first} of this run is still live (state {state})" in refused.stderr
    forced = make("train", "-s", *setup.knobs(), *PBS, "FORCE=1").stdout.strip()
    fake_pbs.set_state(forced, "F", 0)
    fake_pbs.set_state(first, "F", 0)     # every job of the run has ended (the older one too)
    again = make("train", "-s", *setup.knobs(), *PBS).stdout.strip()
    assert len(fake_pbs.submissions()) == 3 and again not in (first, forced)


def test_an_older_live_job_is_found_after_a_later_forced_one_finished(make, fake_pbs, setup):
    setup.init(42)
    older = make("train", "-s", *setup.knobs(), *PBS).stdout.strip()
    fake_pbs.set_state(older, "R")
    forced = make("train", "-s", *setup.knobs(), *PBS, "FORCE=1").stdout.strip()
    fake_pbs.set_state(forced, "F", 0)
    third = make("train", *setup.knobs(), *PBS, check=False)
    assert third.returncode != 0 and f"job {older} of this run is still live (state R)" in third.stderr
    assert len(fake_pbs.submissions()) == 2


def test_a_hanging_qstat_times_out_with_a_message(make, fake_pbs, setup, tmp_path):
    setup.init(42)
    make("train", "-s", *setup.knobs(), *PBS)
    write_executable(tmp_path / "hang" / "qstat", "#!/bin/sh\nexec sleep 60\n")
    result = make("train", *setup.knobs(), *PBS, "PBS_TIMEOUT=1", check=False,
                  env={"PATH": f"{tmp_path / 'hang'}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "qstat did not answer within 1 s (check for a live train job of" in result.stderr
    assert "(FORCE=1 skips the check)" in result.stderr and len(fake_pbs.submissions()) == 1


def test_train_seeds_submits_one_run_per_seed(make, fake_pbs, setup):
    setup.init(42, 666, 42069)
    ids = make("train-seeds", "-s", *setup.knobs(), *PBS, "SEEDS=42 666 42069", "NODES=2").stdout.split()
    subs = fake_pbs.submissions()
    assert [s["job_id"] for s in subs] == ids and len(ids) == 3
    assert [s["variables"]["SEED"] for s in subs] == ["42", "666", "42069"]
    assert all(s["resources"]["select"] == "2" for s in subs)
    bad = make("train-seeds", *setup.knobs(), *PBS, "SEEDS=42 x", check=False)
    assert bad.returncode != 0 and "SEEDS='42 x'" in bad.stderr


def test_chain_is_init_train_convert_per_seed_then_one_soup(make, fake_pbs, setup):
    merge_dir = setup.tmp / "merge"
    result = make("chain", "-s", *setup.knobs(), *PBS, "SEEDS=42 666 42069", "NODES=16", "CPU_QUEUE=rt_HC",
                  f"BASE_CKPT={setup.pretrained}", "BASE_ITER=30", "DEPEND=afterok:77.pbs1", *CONVERT,
                  f"SOUP_CONFIG_DIR={merge_dir}")
    subs = fake_pbs.submissions()
    assert len(subs) == 10
    converts = []
    for n, seed in enumerate(("42", "666", "42069")):
        init, train, conv = subs[3 * n:3 * n + 3]
        assert init["script"] == str(REPO / "pbs" / "run_step.pbs") and init["variables"]["STEP"] == "init_run"
        assert f"--seed {seed}" in init["variables"]["STEP_ARGS"] and "--base-iter 30" in init["variables"]["STEP_ARGS"]
        assert init["depend"] == [["afterok", ["77.pbs1"]]] and init["queue"] == "rt_HC"
        assert train["script"] == str(REPO / "pbs" / "train.pbs") and train["resources"]["select"] == "16"
        assert train["depend"] == [["afterok", [init["job_id"]]]] and train["variables"]["SEED"] == seed
        assert conv["script"] == str(REPO / "pbs" / "convert.pbs")
        assert conv["depend"] == [["afterok", [train["job_id"]]]] and conv["variables"]["CONVERTER"] == "native"
        assert conv["variables"]["ITER"] == "1" and conv["variables"]["RUN_DIR"] == str(setup.run(seed))
        assert conv["resources"]["select"] == "1" and conv["queue"] == "rt_HC"  # native: a CPU job
        converts.append(conv["job_id"])
    soup = subs[-1]
    assert soup["script"] == str(REPO / "pbs" / "soup.pbs") and soup["depend"] == [["afterok", converts]]
    assert result.stdout.strip() == soup["job_id"] and soup["queue"] == "rt_HC"
    config = merge_dir / f"{TASK}_{V4}_50B.yaml"
    assert soup["variables"]["SOUP_CONFIG"] == str(config) and config.is_file()
    text = config.read_text()
    assert all(f"{setup.run(s)}/checkpoints_hf/iter_0000001" in text for s in ("42", "666", "42069"))


def test_curriculum_chain_waits_for_the_earlier_stage(make, fake_pbs, setup):
    setup.init(42)
    stage1 = make("train", "-s", *setup.knobs(), *PBS).stdout.strip()
    fake_pbs.set_state(stage1, "R")
    make("chain", "-s", *setup.knobs(PARAM=f"{V4}_curriculum", TASK="v4-megamath-pro-max", SIZE="80B"), *PBS,
         "SEEDS=42", *CONVERT, f"SOUP_CONFIG_DIR={setup.tmp / 'merge'}")
    init = fake_pbs.submissions()[1]
    assert init["variables"]["STEP"] == "init_run" and init["depend"] == [["afterok", [stage1]]]
    fake_pbs.set_state(stage1, "F", 0)
    orphan = make("chain", *setup.knobs(PARAM=f"{V4}_curriculum", TASK="v4-megamath-pro-max", SIZE="80B"), *PBS,
                  "SEEDS=666", *CONVERT, f"SOUP_CONFIG_DIR={setup.tmp / 'merge'}", check=False)
    assert orphan.returncode != 0 and "earlier stage has no checkpoint yet and no live train job" in orphan.stderr


def test_local_train_launches_megatron_with_the_resolved_arguments(make, setup, launch):
    env_dir, record = launch
    setup.init(42)
    knobs = [k for k in setup.knobs() if not k.startswith("MEGATRON_PATH=")]
    make("train", *knobs, f"ENV_DIR={env_dir}", "GPUS_PER_NODE=2", "WANDB_PROJECT=p q, r")
    run = setup.run(42)
    call = read_json(record)
    args = (run / "train_args.txt").read_text().splitlines()
    assert call["argv"][:4] == ["--display-allocation", "--report-bindings", "--oversubscribe", "-np"]
    assert call["argv"][4:7] == ["2", "--npernode", "2"]
    at = call["argv"].index(f"{env_dir}/src/Megatron-LM/pretrain_gpt.py")
    assert call["argv"][at - 1] == "python" and call["argv"][at + 1:] == args
    assert "--use-mpi" in args and args[args.index("--wandb-project") + 1] == "p q, r"
    assert call["env"] == {"MASTER_ADDR": socket.gethostname(), "MASTER_PORT": call["env"]["MASTER_PORT"],
                           "CUDA_DEVICE_MAX_CONNECTIONS": "1", "NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "0",
                           "NVTE_UNFUSED_ATTN": None, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "FROM_ACTIVATE": "yes"}
    assert call["cwd"] == str(run) and 10000 <= int(call["env"]["MASTER_PORT"]) < 60000
    outs = list(run.glob("train-*.out"))
    assert len(outs) == 1 and "iteration        1/       4" in outs[0].read_text()
    assert "fake megatron warning" in outs[0].with_suffix(".err").read_text()
    job = read_json(run / "train_args.json")
    assert job["resolved_at"].startswith("job ") and job["resolved_at"].endswith(".local")
    assert job["world_size"] == 2 and job["launcher"] == "mpi"


def test_local_torchrun_and_megatron_override(make, setup, launch, tmp_path):
    env_dir, record = launch
    setup.init(42)
    other = fake_megatron(tmp_path / "other-megatron")
    knobs = [k for k in setup.knobs() if not k.startswith("MEGATRON_PATH=")]
    make("train", *knobs, f"ENV_DIR={env_dir}", f"MEGATRON_PATH={other}", "GPUS_PER_NODE=1", "LAUNCHER=torchrun")
    call = read_json(record)
    assert call["argv"][:6] == ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "1"]
    at = call["argv"].index(f"{other}/pretrain_gpt.py")
    assert "--use-mpi" not in call["argv"][at:] and "--train-iters" in call["argv"][at:]


def test_local_failure_fails_the_target(make, setup, launch, monkeypatch):
    env_dir, _ = launch
    setup.init(42)
    monkeypatch.setenv("FAKE_MPIRUN_STATUS", "3")
    knobs = [k for k in setup.knobs() if not k.startswith("MEGATRON_PATH=")]
    result = make("train", *knobs, f"ENV_DIR={env_dir}", "GPUS_PER_NODE=1", check=False)
    assert result.returncode != 0 and "training exited with status 3" in result.stdout + result.stderr
    assert "fake megatron warning" in result.stdout + result.stderr


def test_resubmitted_job_resumes_from_the_run_own_checkpoints(make, setup, launch):
    env_dir, record = launch
    setup.init(42)
    run = setup.run(42)
    (run / "checkpoints" / "iter_0000001").mkdir(parents=True)
    (run / "checkpoints" / TRACKER).write_text("1")
    knobs = [k for k in setup.knobs() if not k.startswith("MEGATRON_PATH=")]
    make("train", *knobs, f"ENV_DIR={env_dir}", "GPUS_PER_NODE=1")
    argv = read_json(record)["argv"]
    assert argv[argv.index("--load") + 1] == str(run / "checkpoints")
    assert read_json(run / "train_args.json")["start"]["loads"] == "own checkpoints (resume)"
