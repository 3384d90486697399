"""The Makefile's contract: help, knob validation, idempotent setup, status, and no leaked site values."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO, run_script

PIPELINE_TARGETS = ("setup test lint demo bench status download extract merge tokenize count mix args init train "
                    "train-seeds chain hf-tokenizer convert soup-config soup env env-check report").split()


def test_help_is_default_and_lists_every_target(make):
    out = make().stdout
    listed = set(re.findall(r"^  ([a-z][a-z0-9-]*)\s", out, re.M))
    assert set(PIPELINE_TARGETS) <= listed, f"missing from help: {set(PIPELINE_TARGETS) - listed}"


@pytest.mark.parametrize("knob, message", [
    ("SCHEDULER=lsf", "SCHEDULER must be one of"),
    ("NODES=two", "NODES must be a whole number"),
    ("NODES=0", "NODES must be at least 1"),
    ("SEED=4x", "SEED must be a whole number"),
])
def test_bad_knobs_fail_with_a_clear_message(make, knob, message):
    result = make("help", knob, check=False)
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.parametrize("old, new", [("VERIFY=1", "VERIFY_HASHES=1"), ("VERIFY=sample", "SOUP_VERIFY=sample"),
                                      ("MERGE=merge/x.yaml", "SOUP_CONFIG="), ("MERGE_DIR=m", "SOUP_CONFIG_DIR="),
                                      ("NAME=x", "SOUP_NAME="), ("CUDA=1", "SOUP_CUDA=1")])
def test_a_renamed_knob_is_refused_with_its_new_name(make, old, new):
    # each name means one thing now; an old one would otherwise be ignored without a word
    result = make("help", old, check=False)
    assert result.returncode != 0 and f"{old.split('=')[0]} was renamed" in result.stderr and new in result.stderr


def test_setup_is_idempotent(make):
    make("setup")
    again = make("setup")
    assert "pip install" not in again.stdout and "venv" not in again.stdout


def test_local_mk_is_included_and_ignored_by_git(make, tmp_path):
    local = REPO / "local.mk"
    assert not local.exists(), "a developer's local.mk must not be present in the tree under test"
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "local.mk"])
    assert ignored.returncode == 0
    local.write_text("PBS_GROUP := site-group-from-local-mk\n")
    try:
        assert "PBS_GROUP" in make("help").stdout
        printed = make("-pq", "help", check=False).stdout
        assert "PBS_GROUP := site-group-from-local-mk" in printed
    finally:
        local.unlink()


def test_no_site_values_have_defaults(make):
    printed = make("-pq", "help", check=False).stdout
    for knob in ("PBS_GROUP", "PBS_QUEUE", "PBS_RTYPE", "TOKENIZER_MODEL", "MEGATRON_PATH", "ENV_DIR", "DEPEND"):
        assert re.search(rf"^{knob} =\s*$", printed, re.M), f"{knob} must default to empty"
    cluster_paths = "/" + "groups/|gcg5[0-9]+"  # spelled in pieces so this file does not match itself
    tracked = subprocess.run(["git", "-C", str(REPO), "grep", "-nE", cluster_paths, "--", ":!*.md"],
                             capture_output=True, text=True)
    assert tracked.stdout == "", f"cluster-specific paths in tracked files:\n{tracked.stdout}"


def test_status_on_an_empty_exp_dir(make):
    out = make("status").stdout
    for stage in ("download", "extract", "merge", "tokenize-v3.1"):
        assert re.search(rf"^{stage}\s+missing", out, re.M)
    assert "none submitted" in out


def test_status_shows_stage_states_and_pbs_job_states(make, exp_dir, fake_pbs, tmp_path):
    (exp_dir / "dolmino-mix-1124" / "data").mkdir(parents=True)
    (exp_dir / "dolmino-mix-1124" / "data" / "x.jsonl").write_text("{}\n")
    done = exp_dir / ".state" / "dolmino-mix-1124" / "download"
    done.mkdir(parents=True)
    (done / "done.json").write_text("{}")
    (exp_dir / "dolmino-mix-1124-extracted").mkdir()
    (exp_dir / "dolmino-mix-1124-extracted" / "a.jsonl").write_text("{}\n")
    template = REPO / "tests" / "data" / "echo_vars.pbs"
    job = run_script("submit", "--template", str(template), "--name", "tok", "--exp-dir", str(exp_dir),
                     "--scheduler", "pbs", "--group", "g", "--queue", "q", "--var", f"OUT_DIR={tmp_path}")
    job_id = job.stdout.strip()
    fake_pbs.set_state(job_id, "F", exit_status=0)
    out = make("status", "SCHEDULER=pbs").stdout
    assert re.search(r"^download\s+done\s+1 files", out, re.M)
    assert re.search(r"^extract\s+partial", out, re.M)
    assert re.search(rf"{re.escape(job_id)}\s+tok\s+F \(exit 0\)", out)


def test_sample_has_the_dolmino_layout_and_traps(tmp_path):
    from pipeline.sample import generate
    sample = generate(tmp_path / "ds", docs=8)
    paths = [f.path for f in sample.files]
    for needle in (".json.zst", ".json.gz", ".jsonl.gz", ".jsonl.zst", "probem-solving", "gsm8k/main/test/",
                   "dclm/0011/", "codesearchnet-owmfilter/ruby/0000.jsonl.gz", "tulu_math/personahub_math_v5/"):
        assert any(needle in p for p in paths), needle
    assert any(f.test_split for f in sample.files) and any(f.blank_lines for f in sample.files)
    plain = (tmp_path / "ds" / "data/math/dolmino_math_synth/basic_math/mult.jsonl").read_bytes()
    assert not plain.endswith(b"\n"), "dolmino_math_synth files end without a newline"
    again = generate(tmp_path / "ds2", docs=8)
    for f in again.files:
        assert (tmp_path / "ds" / f.path).read_bytes() == (tmp_path / "ds2" / f.path).read_bytes()


def test_not_built_targets_fail_loudly(make):
    # every target either works or says it is not built; none silently does nothing
    for target in PIPELINE_TARGETS:
        if target in ("setup", "test", "demo", "status"):
            continue
        result = make("-n", target, check=False)
        assert result.returncode == 0 or "not built yet" in result.stderr


JOB_TARGETS = "download extract merge clean-intermediate tokenize env train train-seeds chain convert soup".split()


@pytest.mark.parametrize("target", JOB_TARGETS)
def test_make_n_of_a_job_target_submits_nothing(make, fake_pbs, target):
    # every knob a target could want, so make -n prints the whole recipe; nothing may reach qsub
    result = make("-n", target, "SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=q", "ENV_DIR=/nonexistent/env",
                  "TOKENIZER_MODEL=/nonexistent/tok.model", "BASE_CKPT=/nonexistent/ckpt", check=False)
    assert result.returncode == 0, result.stderr
    assert fake_pbs.submissions() == []


def test_each_job_has_one_walltime_knob_and_walltime_overrides_it(make, fake_pbs):
    pbs = ("SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=q")
    assert "--walltime '12:00:00'" in make("-n", "extract", *pbs).stdout
    assert "--walltime '01:30:00'" in make("-n", "extract", *pbs, "EXTRACT_WALLTIME=01:30:00").stdout
    assert "--walltime '00:05:00'" in make("-n", "extract", *pbs, "EXTRACT_WALLTIME=01:30:00",
                                           "WALLTIME=00:05:00").stdout
    assert "--walltime '02:00:00'" in make("-n", "soup", *pbs, "SOUP_CONFIG=/x.yaml", "SOUP_WALLTIME=02:00:00").stdout


def test_make_data_runs_here_only(make):
    result = make("data", "SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=q", check=False)
    assert result.returncode == 2 and "one after another on this machine" in result.stderr
