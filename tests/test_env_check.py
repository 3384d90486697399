"""env-check: a table with one status per line, non-zero exit naming each missing piece; the probe
against the real (CPU) torch; no PyYAML needed; `make env-check` locally and under PBS."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO, SCRIPTS, run_script, shared_path
from env_helpers import EXT_SUFFIX, env_without, healthy_findings, make_fake_env, set_answers

ALL_CHECKS = ["activate.sh", "python", "torch", "torchvision", "cuda", "gpus", "transformer_engine", "apex",
              "flash_attn", "lm_eval", "megatron", "megatron_helper", "tokenizer", "weights_only", "job_env",
              "megatron_launch"]
NOT_IMPORTABLE = {"ok": False, "error": "ModuleNotFoundError: No module named 'x'"}


def table(stdout: str) -> dict[str, tuple[str, str]]:
    """check -> (status, found) from the `check  status  expected  found` lines."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^(\S+)\s+(ok|warn|FAIL|skip)\s+(.*?)\s{2,}(.*)$", line)
        if match:
            rows[match[1]] = (match[2], match[4])
    return rows


def check(env_dir, *args, env=None):
    return run_script("env_check", "--env-dir", str(env_dir), *args, check=False,
                      env=env if env is not None else {})


def test_healthy_environment_passes_every_check(tmp_path):
    layout = make_fake_env(tmp_path / "env")
    result = check(layout.root, env=env_without("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "NVTE_FUSED_ATTN",
                                                "CUDA_DEVICE_MAX_CONNECTIONS"))
    rows = table(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(rows) == ALL_CHECKS
    assert {name: status for name, (status, _) in rows.items()} == {name: "ok" for name in ALL_CHECKS}
    assert "8 x NVIDIA H200" in rows["gpus"][1]
    assert f"helpers{EXT_SUFFIX} (loads)" in rows["megatron_helper"][1]
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1" in rows["weights_only"][1], "activate.sh was sourced first"
    assert "16 ok, 0 warn, 0 FAIL" in result.stdout
    assert "--use-mpi" in rows["megatron_launch"][1], "the parser of the fork has it"


def _drop(path):
    def change(layout, findings):
        target = layout.root / path
        if target.is_dir():
            import shutil
            shutil.rmtree(target)
        else:
            target.unlink()
    return change


def _finding(key, value):
    def change(layout, findings):
        findings[key] = value
    return change


@pytest.mark.parametrize("change, failing", [
    (_finding("transformer_engine", NOT_IMPORTABLE), {"transformer_engine"}),
    (_finding("apex", NOT_IMPORTABLE), {"apex"}),
    (_finding("flash_attn", NOT_IMPORTABLE), {"flash_attn"}),
    (_finding("torch", NOT_IMPORTABLE), {"torch", "cuda", "gpus", "weights_only"}),
    (_finding("torch", {"ok": True, "version": "2.6.0+cpu", "cuda_build": None}), {"torch"}),
    (_finding("cuda", {"ok": True, "available": False, "device_count": 0, "names": []}), {"cuda", "gpus"}),
    (_finding("transformer_engine", {"ok": True, "version": "1.13.0"}), {"transformer_engine"}),
    (_finding("python", {"version": "3.11.7", "executable": "x", "ext_suffix": ".cpython-311-x86_64-linux-gnu.so"}),
     {"python", "megatron_helper"}),
    (_finding("megatron_import", {"ok": False, "error": "ImportError: cannot import name 'x'"}), {"megatron"}),
    (_drop(f"src/Megatron-LM/megatron/core/datasets/helpers{EXT_SUFFIX}"), {"megatron_helper"}),
    (_drop("src/Megatron-LM"), {"megatron", "megatron_helper"}),
    (_drop("src/llm-jp-tokenizer/models/ver3.1/llm-jp-tokenizer-100k.ver3.1.model"), {"tokenizer"}),
    (_drop("activate.sh"), {"activate.sh", "weights_only"}),
    (_drop("venv/bin/python"), {"python", "torch", "torchvision", "cuda", "gpus", "transformer_engine", "apex",
                                "flash_attn", "weights_only", "megatron_launch"}),
])
def test_each_missing_piece_is_reported_by_name(tmp_path, change, failing):
    layout = make_fake_env(tmp_path / "env")
    findings = healthy_findings(layout.root)
    change(layout, findings)
    if (layout.venv / "bin").is_dir() and (layout.venv / "bin" / "python").exists():
        set_answers(layout.root, findings)
    result = check(layout.root, env=env_without("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"))
    rows = table(result.stdout)
    assert result.returncode != 0
    assert {name for name, (status, _) in rows.items() if status == "FAIL"} == failing, result.stdout
    named = result.stderr.split("cannot run the jobs:")[1]
    assert all(name in named for name in failing), result.stderr
    assert str(layout.root) in result.stderr


def test_differences_that_do_not_stop_a_job_are_warnings(tmp_path):
    layout = make_fake_env(tmp_path / "env")
    findings = healthy_findings(layout.root)
    findings["torch"]["version"] = "2.6.1+cu124"
    findings["apex"]["cuda_ext"]["amp_C"] = False
    set_answers(layout.root, findings)
    result = check(layout.root, env={"NVTE_FUSED_ATTN": "1"})
    rows = table(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows["torch"][0] == rows["apex"][0] == rows["job_env"][0] == "warn"
    assert "NVTE_FUSED_ATTN=1 (pinned 0)" in rows["job_env"][1]


def test_lm_eval_is_reported_and_its_absence_is_only_a_warning(tmp_path):
    layout = make_fake_env(tmp_path / "env")
    rows = table(check(layout.root).stdout)
    assert rows["lm_eval"][0] == "ok" and "0.4.13" in rows["lm_eval"][1]
    findings = healthy_findings(layout.root)
    findings["lm_eval"] = NOT_IMPORTABLE
    set_answers(layout.root, findings)
    result = check(layout.root)
    rows = table(result.stdout)
    assert result.returncode == 0 and rows["lm_eval"][0] == "warn" and "EVAL_ENV=training" in rows["lm_eval"][1]


def test_a_crashing_import_leaves_the_earlier_findings(tmp_path):
    layout = make_fake_env(tmp_path / "env")
    set_answers(layout.root, healthy_findings(layout.root), crash_at="flash_attn")
    result = check(layout.root)
    rows = table(result.stdout)
    assert result.returncode != 0
    assert rows["torch"][0] == rows["apex"][0] == rows["weights_only"][0] == "ok"
    assert rows["flash_attn"][0] == rows["transformer_engine"][0] == "FAIL"
    assert "probe stopped early (exit 134): Fatal Python error: Aborted (in flash_attn)" in rows["flash_attn"][1]


def test_gpu_checks_can_be_skipped_on_a_login_node(tmp_path):
    layout = make_fake_env(tmp_path / "env")
    findings = healthy_findings(layout.root)
    findings["cuda"] = {"ok": True, "available": False, "device_count": 0, "names": []}
    set_answers(layout.root, findings)
    result = check(layout.root, "--no-gpu")
    rows = table(result.stdout)
    assert result.returncode == 0 and rows["cuda"][0] == rows["gpus"][0] == "skip"


def test_real_probe_with_this_interpreter_and_cpu_torch():
    """The probe itself, against the real torch of the test venv (CPU build, so no CUDA)."""
    import torch
    plain = run_script("env_check", "--python", sys.executable, check=False,
                       env=env_without("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"))
    rows = table(plain.stdout)
    assert plain.returncode != 0
    assert rows["activate.sh"][0] == "skip"
    assert rows["python"][1].startswith("%d.%d.%d" % sys.version_info[:3])
    assert rows["torch"][1].startswith(torch.__version__)
    assert rows["cuda"][0] == "FAIL" and rows["megatron"][0] == "FAIL" and rows["tokenizer"][0] == "FAIL"
    assert rows["weights_only"][0] == "FAIL", "torch >= 2.6 refuses Megatron's pickles by default"
    forced = run_script("env_check", "--python", sys.executable, check=False,
                        env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert table(forced.stdout)["weights_only"][0] == "ok"


def test_real_probe_loads_the_real_tokenizer():
    model = shared_path("tokenizers", "llm-jp-tokenizer-100k.ver3.1.model")
    result = run_script("env_check", "--python", sys.executable, "--tokenizer-model", str(model), check=False)
    status, text = table(result.stdout)["tokenizer"]
    assert status == "ok" and "llm-jp-tokenizer-100k.ver3.1.model (98452 pieces)" in text


def test_env_check_runs_without_pyyaml(tmp_path):
    """On a bare GPU machine: the pins are TOML, read with the standard library when PyYAML is missing."""
    layout = make_fake_env(tmp_path / "env")
    blocker = tmp_path / "noyaml" / "yaml"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'yaml'\", name='yaml')\n")
    result = subprocess.run([sys.executable, str(SCRIPTS / "env_check.py"), "--env-dir", str(layout.root)],
                            capture_output=True, text=True, env={**env_without("PYTHONPATH"),
                                                                 "PYTHONPATH": str(tmp_path / "noyaml")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 ok" in result.stdout


def test_make_env_check_locally_and_under_pbs(make, fake_pbs, tmp_path, exp_dir):
    layout = make_fake_env(tmp_path / "env")
    out = make("env-check", f"ENV_DIR={layout.root}").stdout
    assert table(out)["weights_only"][0] == "ok"
    failed = make("env-check", f"ENV_DIR={tmp_path / 'absent'}", check=False)
    assert failed.returncode != 0 and "ENV_DIR does not exist" in failed.stderr
    make("env-check", f"ENV_DIR={layout.root}", "SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=rt_HG",
         "ENV_CHECK_ARGS=--no-gpu")
    (sub,) = fake_pbs.submissions()
    assert sub["script"] == str(REPO / "pbs" / "run_step.pbs") and sub["variables"]["STEP"] == "env_check"
    args = sub["variables"]["STEP_ARGS"]
    assert f"--env-dir={layout.root}" in args and "--no-gpu" in args
    # the template's own parsing of STEP_ARGS gives the same check
    result = subprocess.run(["bash", str(REPO / "pbs" / "run_step.pbs")], capture_output=True, text=True,
                            env={**env_without("PBS_ARRAY_INDEX"), **sub["variables"]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^cuda\s+skip", result.stdout, re.M)


def test_real_probe_sees_the_gpus():
    """GPU machines only: CUDA visible and the GPU count, as the probe reports them."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU here")
    result = run_script("env_check", "--python", sys.executable, check=False)
    rows = table(result.stdout)
    assert rows["cuda"][0] == "ok"
    assert rows["gpus"][0] == "ok" and rows["gpus"][1].startswith(str(torch.cuda.device_count()))
