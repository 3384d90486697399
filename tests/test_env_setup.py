"""The environment installer: pins and step order in the dry run, resume after a failed step,
activate.sh's contract, config validation, and `make env` locally and under PBS."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_script
from env_helpers import STEPS, stub_log_steps, stub_runner, write_executable
from pipeline.environment import Layout, load_environment, render_activate

CONFIG = REPO / "params" / "environment.toml"
APEX_COMMIT = "312acb44f9fe05cab8c67bba6daa0e64d3737863"


def stub_env(tmp_path, fail_step: str = "") -> dict:
    env = {"ENV_SETUP_RUNNER": str(stub_runner(tmp_path)), "STUB_LOG": str(tmp_path / "stub.log")}
    env["FAIL_STEP"] = fail_step
    return env


def test_dry_run_prints_every_pin_in_step_order_and_does_nothing(make, tmp_path, exp_dir):
    env_dir = tmp_path / "env"
    out = make("-s", "env", f"ENV_DIR={env_dir}", "DRY_RUN=1").stdout
    assert re.findall(r"^\[(\d+)/11\] (\w+):", out, re.M) == [(str(i + 1), s) for i, s in enumerate(STEPS)]
    for pin in ("Python 3.10.4", "Python-3.10.4.tgz", "--enable-optimizations", "pip==24.3.1",
                "--index-url https://download.pytorch.org/whl/cu124 torch==2.6.0 torchvision==0.21.0",
                f"checkout {APEX_COMMIT}", "--build-option=--cuda_ext", "flash-attn==2.5.8",
                "'transformer_engine[pytorch]==1.9.0'", "git clone --branch v4 https://github.com/llm-jp/Megatron-LM",
                f"make -C {env_dir}/src/Megatron-LM/megatron/core/datasets", "numpy==1.26.4", "pybind11==2.13.6",
                "checkout 6a1a12776a615897150f574cfb20c823c7a43d15",
                "models/ver3.1/llm-jp-tokenizer-100k.ver3.1.model",
                "cuda/12.4/12.4.1 cudnn/9.5/9.5.1 hpcx/2.20 nccl/2.25/2.25.1-1",
                "export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1", "'lm-eval[hf,japanese-leaderboard]==0.4.13'"):
        assert pin in out, pin
    # apex is built after torch, TE after flash-attn (TE 1.9 accepts flash-attn <= 2.5.8), helper after clone
    assert out.index("torch==2.6.0") < out.index(f"checkout {APEX_COMMIT}") < out.index("flash-attn==2.5.8") \
        < out.index("transformer_engine[pytorch]") < out.index("git clone --branch v4")
    assert not env_dir.exists(), "a dry run must not create ENV_DIR"
    assert not (exp_dir / "jobs.jsonl").exists(), "a dry run must not submit"
    # the same through the environment variable, without make
    again = run_script("env_setup", "--env-dir", str(env_dir), env={"DRY_RUN": "1"}).stdout
    assert again == out


def test_failed_step_is_named_and_rerun_resumes_there(tmp_path):
    env_dir = tmp_path / "env"
    log = tmp_path / "stub.log"
    first = run_script("env_setup", "--env-dir", str(env_dir), env=stub_env(tmp_path, fail_step="apex"), check=False)
    assert first.returncode != 0
    assert "step 'apex' failed (exit 7)" in first.stderr and "01-" not in first.stderr
    assert "05-apex.log" in first.stderr, "the error names the step's log"
    assert stub_log_steps(log) == STEPS[:5]
    assert "stub: step apex fails on purpose" in (env_dir / "logs" / "05-apex.log").read_text()
    assert sorted(p.stem for p in (env_dir / ".steps").glob("*.json")) == sorted(STEPS[:4])
    assert not (env_dir / "activate.sh").exists()

    log.unlink()
    second = run_script("env_setup", "--env-dir", str(env_dir), env=stub_env(tmp_path))
    assert stub_log_steps(log) == STEPS[4:-1], "resumes at the failed step; earlier steps are not re-run"
    for step in STEPS[:4]:
        assert re.search(rf"^skip \[\d+/11\] {step}: done", second.stdout, re.M)
    activate = (env_dir / "activate.sh").read_bytes()
    manifest = json.loads((env_dir / "environment.json").read_text())
    assert manifest["pins"]["apex_commit"] == APEX_COMMIT and manifest["pins"]["transformer_engine"] == "1.9.0"
    assert [s["name"] for s in manifest["steps"]] == STEPS

    log.unlink()
    third = run_script("env_setup", "--env-dir", str(env_dir), env=stub_env(tmp_path))
    assert not log.exists(), "a complete environment runs nothing"
    assert "nothing to do" in third.stdout
    assert (env_dir / "activate.sh").read_bytes() == activate


def test_changed_pin_reruns_from_its_step(tmp_path):
    env_dir = tmp_path / "env"
    run_script("env_setup", "--env-dir", str(env_dir), env=stub_env(tmp_path))
    config = tmp_path / "environment.toml"
    config.write_text(CONFIG.read_text().replace('version = "2.5.8"', 'version = "2.5.7"'))
    (tmp_path / "stub.log").unlink()
    run_script("env_setup", "--env-dir", str(env_dir), "--config", str(config), env=stub_env(tmp_path))
    assert stub_log_steps(tmp_path / "stub.log") == ["flash_attn", "transformer_engine", "megatron", "tokenizer",
                                                             "eval_harness"]
    assert "flash-attn 2.5.7" in (env_dir / "activate.sh").read_text()


def test_activate_sh_contract(tmp_path):
    spec = load_environment()
    layout = Layout.of(tmp_path / "env")
    (layout.venv / "bin").mkdir(parents=True)
    (layout.venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV="{layout.venv}"\n')
    layout.activate.write_text(render_activate(spec, layout))
    fake_bin = tmp_path / "bin"
    write_executable(fake_bin / "module", '#!/bin/bash\necho "$*" >> "${MODULE_LOG:?}"\n')
    script = (f'set -euo pipefail; export NVTE_FUSED_ATTN=1; source {layout.activate}; '
              'for v in ENV_DIR VIRTUAL_ENV MEGATRON_PATH LLMJP_TOKENIZER_DIR TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD '
              'CUDA_DEVICE_MAX_CONNECTIONS NVTE_FUSED_ATTN; do echo "$v=${!v}"; done; '
              'case $- in *u*) echo nounset-kept;; esac')
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "MODULE_LOG": str(tmp_path / "m.log")}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert values == {"ENV_DIR": str(layout.root), "VIRTUAL_ENV": str(layout.venv),
                      "MEGATRON_PATH": str(layout.megatron), "LLMJP_TOKENIZER_DIR": str(layout.tokenizer),
                      "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1",
                      "NVTE_FUSED_ATTN": "1"}, "job settings default, but a value set by the job wins"
    assert "nounset-kept" in out
    assert (tmp_path / "m.log").read_text().splitlines() == [
        "load cuda/12.4/12.4.1", "load cudnn/9.5/9.5.1", "load hpcx/2.20", "load nccl/2.25/2.25.1-1"]
    # without a module command the modules are skipped with a note, not an error
    plain = subprocess.run(["bash", "-c", f"set -euo pipefail; source {layout.activate}; echo ok"],
                           capture_output=True, text=True, env={**os.environ, "PATH": "/usr/bin:/bin"})
    if shutil.which("module", path="/usr/bin:/bin") is None and not os.path.exists("/etc/profile.d/modules.sh"):
        assert plain.returncode == 0 and "no 'module' command" in plain.stderr


def test_megatron_helper_builds_with_the_venv_python_despite_the_makefile(tmp_path):
    """The fork's Makefile hard-codes ~/.pyenv/.../python3-config; the installer's make line overrides it."""
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("needs g++ and make")
    import sysconfig
    from pipeline.env_install import helper_build_command, helper_verify_command
    spec = load_environment()
    layout = Layout.of(tmp_path / "env")
    include = sysconfig.get_paths()["include"]
    write_executable(layout.venv_python, f'#!/bin/bash\nif [ "$*" = "-m pybind11 --includes" ]; then '
                                         f'echo "-I{include}"; else exec {sys.executable} "$@"; fi\n')
    datasets = layout.megatron / "megatron" / "core" / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "Makefile").write_text(
        "CXXFLAGS += -O3 -Wall -shared -std=c++11 -fPIC -fdiagnostics-color\n"
        "CPPFLAGS += $(shell python3 -m pybind11 --includes)\n"
        "LIBNAME = helpers\n"
        "LIBEXT = $(shell ~/.pyenv/versions/3.10.13/bin/python3-config --extension-suffix)\n\n"
        "default: $(LIBNAME)$(LIBEXT)\n\n"
        "%$(LIBEXT): %.cpp\n\t$(CXX) $(CXXFLAGS) $(CPPFLAGS) $< -o $@\n")
    (datasets / "helpers.cpp").write_text(
        '#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "helpers", NULL, -1, NULL};\n'
        'PyMODINIT_FUNC PyInit_helpers(void) { return PyModule_Create(&m); }\n')
    for command in (helper_build_command(spec, layout), helper_verify_command(spec, layout)):
        result = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    assert (datasets / f"helpers{sysconfig.get_config_var('EXT_SUFFIX')}").is_file()
    assert "built and loaded" in result.stdout


@pytest.mark.parametrize("change, message", [
    (('commit = "312acb44f9fe05cab8c67bba6daa0e64d3737863"', 'commit = ""'), "apex.commit: must be set"),
    (('commit = "312acb44f9fe05cab8c67bba6daa0e64d3737863"', 'commit = "main"'), "not a 40-hex git commit"),
    (("[flash_attn]\n", '[flash_attn]\nversoin = "2.5.8"\n'), "flash_attn: unknown key(s) versoin"),
    (('wheel_tag = "cu124"', 'wheel_tag = "cu121"'), "does not match cuda.version 12.4.1"),
    (('version = "1.9.0"', "version = 1.9"), "transformer_engine.version: expected str, got float"),
    (('NVTE_FUSED_ATTN = "0"', "NVTE_FUSED_ATTN = 0"), "job_env.NVTE_FUSED_ATTN: expected a quoted string"),
    (('ref = "v4"', "ref = v4"), "invalid TOML: Invalid value (at line"),
])
def test_bad_config_fails_naming_file_and_key(tmp_path, change, message):
    config = tmp_path / "environment.toml"
    text = CONFIG.read_text()
    assert change[0] in text
    config.write_text(text.replace(change[0], change[1], 1))
    result = run_script("env_setup", "--env-dir", str(tmp_path / "env"), "--config", str(config), "--dry-run",
                        check=False)
    assert result.returncode != 0
    assert str(config) in result.stderr and message in result.stderr, result.stderr


def test_missing_env_dir_fails_clearly(make):
    result = make("env", "ENV_DIR=", check=False)
    assert result.returncode != 0 and "set ENV_DIR" in result.stderr


def test_make_env_under_pbs_submits_setup_env_pbs(make, fake_pbs, tmp_path, exp_dir):
    env_dir = tmp_path / "env"
    job_id = make("-s", "env", f"ENV_DIR={env_dir}", "SCHEDULER=pbs", "PBS_GROUP=grp", "PBS_QUEUE=rt_HF").stdout.strip()
    (sub,) = fake_pbs.submissions()
    assert sub["job_id"] == job_id
    assert sub["script"] == str(REPO / "pbs" / "setup_env.pbs")
    assert sub["variables"] == {"REPO_DIR": str(REPO), "EXP_DIR": str(exp_dir), "ENV_DIR": str(env_dir),
                                "ENV_CONFIG": str(CONFIG)}
    assert sub["resources"] == {"select": "1", "walltime": "04:00:00"} and sub["name"] == "setup-env"
    assert not env_dir.exists()


def test_make_env_locally_runs_the_template_with_stubbed_steps(make, tmp_path, exp_dir):
    env_dir = tmp_path / "env"
    make("env", f"ENV_DIR={env_dir}", env=stub_env(tmp_path))
    assert stub_log_steps(tmp_path / "stub.log") == STEPS[:-1]
    assert (env_dir / "activate.sh").is_file()
    logs = list((exp_dir / "logs").glob("setup-env-*.log"))
    assert len(logs) == 1 and "input ENV_DIR=" in logs[0].read_text()


def test_real_bash_steps_get_the_build_settings_are_logged_and_stop_at_a_failure(tmp_path, capsys):
    from pipeline.env_install import Step, run_plan
    from pipeline.errors import PipelineError
    spec = load_environment()
    layout = Layout.of(tmp_path / "env")
    steps = [Step("one", "first", ["echo one-out MAX_JOBS=$MAX_JOBS ARCH=$TORCH_CUDA_ARCH_LIST"]),
             Step("two", "second", ["echo before", "exit 3", "echo never"]),
             Step("three", "third", ["echo not-reached"])]
    with pytest.raises(PipelineError, match=r"02-two.log: step 'two' failed \(exit 3\) running: exit 3"):
        run_plan(spec, layout, steps, jobs=3, quiet=True)
    assert "one-out MAX_JOBS=3 ARCH=9.0" in (layout.logs / "01-one.log").read_text()
    two = (layout.logs / "02-two.log").read_text()
    assert "before" in two and "never" not in two and "FAILED (exit 3)" in two
    assert (layout.steps / "one.json").is_file() and not (layout.steps / "two.json").exists()
    assert not (layout.logs / "03-three.log").exists()
    steps[1].commands = ["echo fixed"]
    assert run_plan(spec, layout, steps, jobs=3, quiet=True) == ["two", "three"]
