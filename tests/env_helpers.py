"""Fixtures for the environment tests: a fake ENV_DIR whose `python` answers the probe with canned
findings, and a stub runner for the installer's commands."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

from conftest import write_executable
from pipeline.environment import Layout, load_environment, render_activate

EXT_SUFFIX = ".cpython-310-x86_64-linux-gnu.so"
STEPS = ["python", "venv", "torch", "requirements", "apex", "flash_attn", "transformer_engine", "megatron",
         "tokenizer", "eval_harness", "activate"]

# What a healthy environment's probe reports (weights_only, helper and tokenizer loads are computed
# by the fake from its environment and the files, the way the real probe would find them).
HEALTHY = {
    "python": {"version": "3.10.4", "executable": "{python}", "prefix": "{env}/venv", "ext_suffix": EXT_SUFFIX,
               "venv": True},
    "torch": {"ok": True, "version": "2.6.0+cu124", "cuda_build": "12.4"},
    "cuda": {"ok": True, "available": True, "device_count": 8, "names": ["NVIDIA H200"] * 8},
    "torchvision": {"ok": True, "version": "0.21.0+cu124"},
    "apex": {"ok": True, "version": "0.1", "cuda_ext": {"amp_C": True, "fused_layer_norm_cuda": True}},
    "flash_attn": {"ok": True, "version": "2.5.8"},
    "transformer_engine": {"ok": True, "version": "1.9.0+e79d915"},
    "megatron_import": {"ok": True, "version": "0.10.0"},
    "lm_eval": {"ok": True, "version": "0.4.13"},
}

FAKE_PYTHON = r'''#!{interpreter}
"""A stand-in for an environment's python: answers scripts/pipeline/env_probe.py from answers.json."""
import json, os, sys
if len(sys.argv) > 1 and sys.argv[1].endswith("megatron_probe.py"):   # asking Megatron's parser: a real run
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "answers.json")) as handle:
    answers = json.load(handle)
request = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {{}}

def emit(key, **fields):
    fields["key"] = key
    print("ENVCHECK " + json.dumps(fields), flush=True)

def crash(key):
    if answers.get("crash_at") == key:
        print("Fatal Python error: Aborted (in " + key + ")", file=sys.stderr)
        sys.exit(134)

findings = answers["findings"]
torch = findings.get("torch") or {{}}
for key in ("python", "torch", "cuda"):
    crash(key)
    if key in findings and (key != "cuda" or torch.get("ok")):
        emit(key, **findings[key])
if torch.get("ok"):
    crash("weights_only")
    forced = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1"
    if forced or tuple(int(p) for p in torch["version"].split("+")[0].split(".")[:2]) < (2, 6):
        emit("weights_only", ok=True, loaded=True)
    else:
        emit("weights_only", ok=False, error="UnpicklingError: Weights only load failed.")
emit("env", **{{k: os.environ.get(k) for k in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "CUDA_DEVICE_MAX_CONNECTIONS",
                                                "NVTE_FUSED_ATTN", "MEGATRON_PATH", "VIRTUAL_ENV")}})
for key in ("torchvision", "apex", "flash_attn", "transformer_engine", "megatron_import", "lm_eval"):
    crash(key)
    if key in findings:
        emit(key, **findings[key])
if request.get("megatron"):
    path = os.path.join(request["megatron"], request["helper"]) + findings["python"]["ext_suffix"]
    emit("megatron_helper_load", ok=os.path.isfile(path), path=path,
         error=None if os.path.isfile(path) else "not built")
for path in request.get("tokenizers", []):
    if os.path.isfile(path):
        emit("tokenizer_load", path=path, ok=True, pieces=answers.get("pieces", 98452))
    else:
        emit("tokenizer_load", path=path, ok=False, error="missing")
emit("done")
'''


def healthy_findings(env: Path) -> dict:
    findings = copy.deepcopy(HEALTHY)
    python = findings["python"]
    python["executable"] = str(env / "venv" / "bin" / "python")
    python["prefix"] = str(env / "venv")
    return findings


def set_answers(env: Path, findings: dict, **extra) -> None:
    (env / "venv" / "bin" / "answers.json").write_text(json.dumps({"findings": findings, **extra}))


def make_fake_env(env: Path, findings: dict | None = None, activate: bool = True) -> Layout:
    """A complete-looking ENV_DIR: venv with the fake python, Megatron-LM with its built helper,
    the tokenizer model, and (by default) the real activate.sh for it."""
    layout = Layout.of(env)
    spec = load_environment()
    bin_dir = layout.venv / "bin"
    write_executable(bin_dir / "python", FAKE_PYTHON.format(interpreter=sys.executable))
    (bin_dir / "activate").write_text(f'export VIRTUAL_ENV="{layout.venv}"\nexport PATH="{bin_dir}:$PATH"\n')
    set_answers(env, healthy_findings(env) if findings is None else findings)
    (layout.megatron / "megatron" / "core" / "datasets").mkdir(parents=True)
    (layout.megatron / "pretrain_gpt.py").write_text("# stand-in\n")
    (layout.megatron / "megatron" / "core" / "__init__.py").write_text("")
    from train_helpers import write_fake_parser
    write_fake_parser(layout.megatron)      # the parser of the LLM-jp v4 fork (its saved option list)
    (layout.megatron / f"{spec.megatron_helper}{EXT_SUFFIX}").write_bytes(b"\x7fELF stand-in")
    for model in spec.tokenizer_models:
        (layout.tokenizer / model.path).parent.mkdir(parents=True, exist_ok=True)
        (layout.tokenizer / model.path).write_bytes(b"stand-in model")
    if activate:
        layout.activate.write_text(render_activate(spec, layout))
    return layout


STUB_RUNNER = r'''#!/bin/bash
# Stand-in for the installer's bash: records "STEP<TAB>COMMAND", fails where FAIL_STEP says.
printf '%s\t%s\n' "$1" "$2" >> "${STUB_LOG:?}"
echo "stub ran $1"
if [ "${FAIL_STEP:-}" = "$1" ]; then
    echo "stub: step $1 fails on purpose" >&2
    exit 7
fi
'''


def stub_runner(folder: Path) -> Path:
    return write_executable(folder / "stub_runner.sh", STUB_RUNNER)


def stub_log_steps(log: Path) -> list[str]:
    """Step names in the order they ran, one per step (commands of a step collapse)."""
    if not log.exists():
        return []
    steps: list[str] = []
    for line in log.read_text().splitlines():
        step = line.split("\t", 1)[0]
        if not steps or steps[-1] != step:
            steps.append(step)
    return steps


def env_without(*names: str) -> dict:
    return {k: v for k, v in os.environ.items() if k not in names}
