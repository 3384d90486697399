"""The submission layer: scripts/submit.py under PBS (strict qsub stand-in) and locally."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO, run_script

TEMPLATE = REPO / "tests" / "data" / "echo_vars.pbs"
JOBS_MK = REPO / "tests" / "data" / "jobs.mk"
PBS_ARGS = ["--scheduler", "pbs", "--group", "grp", "--queue", "rt_HC"]


def submit(exp_dir, *args, check=True):
    return run_script("submit", "--template", str(TEMPLATE), "--exp-dir", str(exp_dir), *args, check=check)


def test_chain_of_three_submissions_depends_on_previous_ids(fake_pbs, exp_dir, tmp_path):
    ids = []
    for step in range(3):
        depend = ["--depend", ids[-1]] if ids else []
        result = submit(exp_dir, "--name", f"step{step}", *PBS_ARGS, "--var", f"OUT_DIR={tmp_path}", *depend)
        job_id = result.stdout.strip()
        assert job_id == result.stdout.strip().splitlines()[0], "job id must be alone on stdout"
        ids.append(job_id)
    subs = fake_pbs.submissions()
    assert [s["job_id"] for s in subs] == ids
    assert subs[0]["depend"] == []
    assert subs[1]["depend"] == [["afterok", [ids[0]]]]
    assert subs[2]["depend"] == [["afterok", [ids[1]]]]
    assert "-W" in subs[2]["argv"] and f"depend=afterok:{ids[1]}" in subs[2]["argv"]
    records = [json.loads(line) for line in (exp_dir / "jobs.jsonl").read_text().splitlines()]
    assert [r["job_id"] for r in records] == ids
    assert records[2]["depend"] == f"afterok:{ids[1]}"
    assert all(r["git_commit"] and r["template"] == str(TEMPLATE) for r in records)


@pytest.mark.parametrize("given, expected", [
    ("afterok:1.pbs1:2.pbs1", "afterok:1.pbs1:2.pbs1"),
    ("afterany:5.pbs1", "afterany:5.pbs1"),
    ("1.pbs1 2.pbs1", "afterok:1.pbs1:2.pbs1"),
    ("7[].pbs1", "afterok:7[].pbs1"),
    ("afterok:1.pbs1,afternotok:2.pbs1", "afterok:1.pbs1,afternotok:2.pbs1"),
])
def test_depend_forms(fake_pbs, exp_dir, tmp_path, given, expected):
    submit(exp_dir, "--name", "dep", *PBS_ARGS, "--var", f"OUT_DIR={tmp_path}", "--depend", given)
    assert f"depend={expected}" in fake_pbs.submissions()[-1]["argv"]


@pytest.mark.parametrize("bad", ["afterok:", "after_ok:1.pbs1", "abc", "afterok:1.pbs1;rm"])
def test_bad_depend_is_refused_before_qsub(fake_pbs, exp_dir, tmp_path, bad):
    result = submit(exp_dir, "--name", "dep", *PBS_ARGS, "--var", f"OUT_DIR={tmp_path}", "--depend", bad,
                    check=False)
    assert result.returncode != 0 and "DEPEND" in result.stderr
    assert fake_pbs.submissions() == []


@pytest.mark.parametrize("value", ["a,b c", "/path with space/x", "a,b c  $HOME $(touch x) `x` ; * end,", "",
                                   "ünï 日本"])
def test_odd_values_survive_qsub_v(fake_pbs, exp_dir, tmp_path, value):
    submit(exp_dir, "--name", "odd", *PBS_ARGS, "--var", f"OUT_DIR={tmp_path}", "--var", f"ODD={value}")
    assert fake_pbs.submissions()[-1]["variables"]["ODD"] == value


@pytest.mark.parametrize("value", ["it's", 'say "x"', "it's \"both\"", "back\\slash"])
def test_a_value_qsub_would_garble_is_refused(fake_pbs, exp_dir, tmp_path, value):
    # the real qsub turns quotes inside a value into backslashes and drops the variables after it (test_pbs.py)
    result = submit(exp_dir, "--name", "odd", *PBS_ARGS, "--var", f"OUT_DIR={tmp_path}", "--var", f"ODD={value}",
                    check=False)
    assert result.returncode != 0 and "--var ODD=" in result.stderr and "cannot pass" in result.stderr
    assert fake_pbs.submissions() == []


def test_odd_value_survives_locally(exp_dir, tmp_path):
    submit(exp_dir, "--name", "odd", "--var", f"OUT_DIR={tmp_path}", "--var", "ODD=a,b c 'q'")
    assert "ODD=a,b c 'q'" in (tmp_path / "single.env").read_text()


def test_pbs_resources_reservation_and_array(fake_pbs, exp_dir, tmp_path):
    out = submit(exp_dir, "--name", "arr", "--scheduler", "pbs", "--group", "grp", "--queue", "R1234",
                 "--rtype", "rt_HF", "--nodes", "16", "--walltime", "12:00:00", "--array", "0-7",
                 "--var", f"OUT_DIR={tmp_path}").stdout.strip()
    assert out.endswith("[].pbs1")
    sub = fake_pbs.submissions()[-1]
    assert sub["resources"] == {"select": "16", "walltime": "12:00:00"}
    assert sub["queue"] == "R1234" and sub["project"] == "grp" and sub["array"] == "0-7"
    assert sub["variables"]["RTYPE"] == "rt_HF"
    assert sub["variables"]["REPO_DIR"] == str(REPO) and sub["variables"]["EXP_DIR"] == str(exp_dir)


@pytest.mark.parametrize("missing, flags", [("PBS_GROUP", ["--queue", "rt_HC"]), ("PBS_QUEUE", ["--group", "g"])])
def test_pbs_without_group_or_queue_names_the_variable(fake_pbs, exp_dir, tmp_path, missing, flags):
    result = submit(exp_dir, "--name", "x", "--scheduler", "pbs", *flags, "--var", f"OUT_DIR={tmp_path}",
                    check=False)
    assert result.returncode != 0 and missing in result.stderr
    assert fake_pbs.submissions() == []


def test_qsub_failure_exits_nonzero_with_its_message(fake_pbs, exp_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_QSUB_FAIL", "Unauthorized Request (group quota)")
    result = submit(exp_dir, "--name", "x", *PBS_ARGS, "--var", f"OUT_DIR={tmp_path}", check=False)
    assert result.returncode != 0
    assert "Unauthorized Request (group quota)" in result.stderr
    assert not (exp_dir / "jobs.jsonl").exists()


def test_dry_run_prints_qsub_command_and_submits_nothing(fake_pbs, exp_dir, tmp_path):
    result = submit(exp_dir, "--name", "x", *PBS_ARGS, "--var", f"OUT_DIR={tmp_path}", "--depend", "5.pbs1",
                    "--dry-run")
    assert result.stdout.startswith("qsub -N x -P grp -q rt_HC -l select=1")
    assert "depend=afterok:5.pbs1" in result.stdout
    assert fake_pbs.submissions() == []


def test_local_array_runs_every_index_with_pbs_environment(exp_dir, tmp_path):
    submit(exp_dir, "--name", "arr", "--array", "0-6:2", "--parallel", "2", "--var", f"OUT_DIR={tmp_path}")
    envs = {p.stem: p.read_text() for p in tmp_path.glob("*.env")}
    assert sorted(envs) == ["0", "2", "4", "6"]
    for index, text in envs.items():
        assert f"[{index}].local" in text and "PBS_JOBNAME=arr" in text and "NODEFILE_HOSTS=" in text
    logs = sorted((exp_dir / "logs").glob("arr-*.status"))
    assert len(logs) == 4
    assert all(json.loads(p.read_text())["status"] == 0 for p in logs)


def test_local_failure_propagates_status_and_names_index(exp_dir, tmp_path):
    result = submit(exp_dir, "--name", "arr", "--array", "0-3", "--var", f"OUT_DIR={tmp_path}",
                    "--var", "FAIL_INDEX=2", check=False)
    assert result.returncode == 3
    assert "array indices 2" in result.stderr
    assert len(list(tmp_path.glob("*.env"))) == 4, "the other indices still ran"
    record = json.loads((exp_dir / "jobs.jsonl").read_text().splitlines()[-1])
    assert record["exit_status"] == 3 and record["failed_indices"] == [2]


def test_template_missing_input_fails_clearly(exp_dir):
    result = submit(exp_dir, "--name", "x", check=False)
    assert result.returncode != 0 and "OUT_DIR must be passed" in result.stderr


def test_failing_template_fails_the_make_target(make, tmp_path):
    result = make("-f", str(REPO / "Makefile"), "-f", str(JOBS_MK), "test-job", f"TEMPLATE={TEMPLATE}",
                  f"JOB_VARS=OUT_DIR={tmp_path} FAIL=1", check=False)
    assert result.returncode != 0
    assert "failing on purpose" in result.stdout + result.stderr
    ok = make("-f", str(REPO / "Makefile"), "-f", str(JOBS_MK), "test-job", f"TEMPLATE={TEMPLATE}",
              f"JOB_VARS=OUT_DIR={tmp_path}", "ARRAY=0-2")
    assert ok.returncode == 0 and sorted(p.stem for p in tmp_path.glob("*.env")) == ["0", "1", "2", "single"]


def test_make_n_submits_nothing(fake_pbs, make, tmp_path):
    result = make("-n", "-f", str(REPO / "Makefile"), "-f", str(JOBS_MK), "test-job", "SCHEDULER=pbs",
                  "PBS_GROUP=g", "PBS_QUEUE=q", f"TEMPLATE={TEMPLATE}", f"JOB_VARS=OUT_DIR={tmp_path}")
    assert "submit.py" in result.stdout
    assert fake_pbs.submissions() == []
    make("-f", str(REPO / "Makefile"), "-f", str(JOBS_MK), "test-job", "SCHEDULER=pbs", "PBS_GROUP=g",
         "PBS_QUEUE=q", f"TEMPLATE={TEMPLATE}", f"JOB_VARS=OUT_DIR={tmp_path}")
    assert len(fake_pbs.submissions()) == 1


def test_every_pbs_template_parses_and_passes_the_strict_qsub(fake_pbs, tmp_path):
    templates = sorted((REPO / "pbs").glob("*.pbs"))
    assert templates
    for template in templates:
        subprocess.run(["bash", "-n", str(template)], check=True)
        text = template.read_text()
        assert "set -euo pipefail" in text, f"{template.name}: no strict mode"
        result = subprocess.run(["qsub", "-P", "g", "-q", "rt_HC", "-l", "select=1", str(template)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{template.name}: {result.stderr}"
