"""The installer of the training environment: ordered, named steps of shell commands.

Each step's commands run with `bash` (strict mode, cluster modules loaded, the venv active once it
exists), their output shown and appended to ENV_DIR/logs/<NN>-<step>.log. A finished step leaves
ENV_DIR/.steps/<step>.json holding a fingerprint of its commands; a re-run skips the steps whose
sentinel matches and starts at the first that is missing or changed (a failed one), re-running
everything after it. A failure names the step, the command and its log.

Test hook: with a runner (ENV_SETUP_RUNNER or --runner), each command runs as
`RUNNER STEP COMMAND` instead of through bash, so the ordering and resume logic can be exercised
without building anything.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

from pipeline.atomic import write_json, write_text
from pipeline.environment import MODULE_INIT, EnvironmentSpec, Layout, render_activate, render_modules
from pipeline.errors import fail
from pipeline.provenance import git_commit, now_iso, provenance

RUNNER_ENV = "ENV_SETUP_RUNNER"


@dataclass
class Step:
    name: str
    title: str                                   # one line, with the pinned versions
    commands: list[str] = field(default_factory=list)
    action: Callable[[], None] | None = None     # work done in Python after the commands
    action_text: str = ""                        # what the action does, for the dry run and the fingerprint

    def fingerprint(self) -> str:
        text = "\n".join(self.commands) + "\n#action: " + self.action_text
        return hashlib.sha256(text.encode()).hexdigest()


def _q(value: str | os.PathLike) -> str:
    return shlex.quote(str(value))


def helper_build_command(spec: EnvironmentSpec, layout: Layout) -> str:
    """`make` in megatron/core/datasets with the venv's Python, whatever the Makefile hard-codes.

    The fork's Makefile takes the extension suffix from a fixed ~/.pyenv python3-config and the
    pybind11 flags from whatever `python3` is first on PATH; command-line variables override both,
    so no Megatron file is edited.
    """
    py = _q(layout.venv_python)
    datasets = Path(spec.megatron_helper).parent
    stem = Path(spec.megatron_helper).name
    return (f"make -C {_q(layout.megatron / datasets)} LIBNAME={_q(stem)} "
            f"LIBEXT=\"$({py} -c 'import sysconfig; print(sysconfig.get_config_var(\"EXT_SUFFIX\"))')\" "
            f"CPPFLAGS=\"$({py} -m pybind11 --includes)\"")


def helper_verify_command(spec: EnvironmentSpec, layout: Layout) -> str:
    """Load the built helper by its file path (no Megatron import needed)."""
    code = ('import importlib.util as u, sys, sysconfig; '
            'path = sys.argv[1] + sysconfig.get_config_var("EXT_SUFFIX"); '
            'spec = u.spec_from_file_location(path.rsplit("/", 1)[-1].split(".")[0], path); '
            'spec.loader.exec_module(u.module_from_spec(spec)); print("built and loaded", path)')
    return f"{_q(layout.venv_python)} -c {_q(code)} {_q(layout.megatron / spec.megatron_helper)}"


def plan(spec: EnvironmentSpec, layout: Layout, write_activate: Callable[[], None] | None = None) -> list[Step]:
    """The installer's steps, in order, with every command resolved (pinned versions included).

    Build parallelism is not part of a command (they read $MAX_JOBS), so a step's fingerprint does
    not change with the machine it runs on.
    """
    src = layout.src
    pip = f"{_q(layout.venv_python)} -m pip"
    py_dir = src / f"Python-{spec.python_version}"
    tarball = src / f"Python-{spec.python_version}.tgz"
    configure = " ".join(_q(f) for f in spec.python_configure_flags)
    apex, tok = src / "apex", layout.tokenizer
    models = " ".join(_q(tok / m.path) for m in spec.tokenizer_models)
    steps = [
        Step("python", f"Python {spec.python_version} built from source into {layout.python_prefix}", [
            f"rm -rf {_q(py_dir)} {_q(layout.python_prefix)}",
            f"mkdir -p {_q(src)}",
            f"curl -fsSL --retry 3 -o {_q(tarball)} {_q(spec.python_url)}",
            f"tar -xzf {_q(tarball)} -C {_q(src)}",
            f"cd {_q(py_dir)} && ./configure --prefix={_q(layout.python_prefix)} {configure}".rstrip(),
            f"make -C {_q(py_dir)} -j \"$MAX_JOBS\"",
            f"make -C {_q(py_dir)} install",
            f"{_q(layout.python_prefix / 'bin' / 'python3')} -c 'import ssl, ctypes, sqlite3, bz2, lzma'",
        ]),
        Step("venv", f"virtual environment {layout.venv} with pip {spec.pip_version}", [
            f"rm -rf {_q(layout.venv)}",
            f"{_q(layout.python_prefix / 'bin' / 'python3')} -m venv {_q(layout.venv)}",
            f"{pip} install --no-cache-dir pip=={spec.pip_version}",
        ]),
        Step("torch", f"torch {spec.torch_version} + torchvision {spec.torchvision_version} "
                      f"({spec.cuda_wheel_tag}, CUDA {spec.cuda_version})", [
            f"{pip} install --no-cache-dir --index-url {_q(spec.torch_index_url)} "
            f"torch=={spec.torch_version} torchvision=={spec.torchvision_version}",
            f"{_q(layout.venv_python)} -c 'import torch; print(torch.__version__, torch.version.cuda)'",
        ]),
        Step("requirements", f"{len(spec.requirements)} pinned Python packages", [
            f"{pip} install --no-cache-dir " + " ".join(_q(r) for r in spec.requirements),
        ]),
        Step("apex", f"apex {spec.apex_commit} (cpp_ext, cuda_ext)", [
            f"rm -rf {_q(apex)}",
            f"git clone --recurse-submodules {_q(spec.apex_repo)} {_q(apex)}",
            f"git -C {_q(apex)} checkout {spec.apex_commit}",
            f"git -C {_q(apex)} submodule update --init --recursive",
            f"cd {_q(apex)} && {pip} install -v --no-cache-dir --no-build-isolation "
            "--config-settings '--build-option=--cpp_ext' --config-settings '--build-option=--cuda_ext' ./",
        ]),
        Step("flash_attn", f"flash-attn {spec.flash_attn_version}", [
            f"{pip} install --no-cache-dir --no-build-isolation flash-attn=={spec.flash_attn_version}",
        ]),
        Step("transformer_engine", f"TransformerEngine {spec.transformer_engine_version} (pytorch)", [
            f"{pip} install --no-cache-dir --no-build-isolation "
            f"{_q(f'transformer_engine[pytorch]=={spec.transformer_engine_version}')}",
        ]),
        Step("megatron", f"Megatron-LM {spec.megatron_repo} {spec.megatron_ref}, C++ dataset helper built", [
            f"rm -rf {_q(layout.megatron)}",
            f"git clone --branch {spec.megatron_ref} {_q(spec.megatron_repo)} {_q(layout.megatron)}",
            helper_build_command(spec, layout),
            helper_verify_command(spec, layout),
        ]),
        Step("tokenizer", f"llm-jp-tokenizer {spec.tokenizer_ref} "
                          f"({', '.join(Path(m.path).name for m in spec.tokenizer_models)})", [
            f"rm -rf {_q(tok)}",
            f"git clone {_q(spec.tokenizer_repo)} {_q(tok)}",
            f"git -C {_q(tok)} checkout {spec.tokenizer_ref}",
            f"ls -l {models}",
        ]),
        *([Step("eval_harness", f"lm-evaluation-harness {spec.eval_version} and {len(spec.eval_requirements)} "
                                "pinned packages (make eval EVAL_ENV=training)", [
            f"{pip} install --no-cache-dir " + " ".join(_q(r) for r in (spec.eval_harness, *spec.eval_requirements)),
            f"{_q(layout.venv_python)} -c 'import lm_eval.tasks, importlib.metadata as m; print(\"lm-eval\", "
            "m.version(\"lm_eval\"))'",
        ])] if spec.eval_harness else []),
        Step("activate", f"write {layout.activate} and {layout.manifest.name}", [],
             action=write_activate,
             action_text=render_activate(spec, layout)),
    ]
    return steps


def command_prelude(spec: EnvironmentSpec, layout: Layout, jobs: int | str) -> str:
    """What every step command runs after: strict mode, modules, build settings, the venv when present."""
    exports = {"MAX_JOBS": str(jobs), **spec.build_env}
    return (
        "set -euo pipefail\n"
        + render_modules(spec.modules, note=False)
        + "".join(f"export {k}={_q(v)}\n" for k, v in exports.items())
        + f"if [ -f {_q(layout.venv / 'bin' / 'activate')} ]; then set +u; "
          f"source {_q(layout.venv / 'bin' / 'activate')}; set -u; fi\n"
    )


# ---------------------------------------------------------------------------------------------
# Running the plan
# ---------------------------------------------------------------------------------------------
def sentinel_path(layout: Layout, step: Step) -> Path:
    return layout.steps / f"{step.name}.json"


def step_done(layout: Layout, step: Step) -> bool:
    path = sentinel_path(layout, step)
    try:
        return json.loads(path.read_text()).get("fingerprint") == step.fingerprint()
    except (OSError, ValueError, AttributeError):
        return False


def first_pending(layout: Layout, steps: list[Step]) -> int:
    """Index of the first step to run (len(steps) when all are done): everything after it runs too."""
    for index, step in enumerate(steps):
        if not step_done(layout, step):
            return index
    return len(steps)


def print_plan(spec: EnvironmentSpec, layout: Layout, steps: list[Step], jobs: int | str,
               out: TextIO = sys.stdout) -> None:
    """The dry run: every command with its pinned versions, in order; nothing is run or written."""
    start = first_pending(layout, steps) if layout.steps.is_dir() else 0
    print(f"# dry run: the training environment from {spec.source} into {layout.root}; nothing is run",
          file=out)
    print(f"# modules: {' '.join(spec.modules) or '(none)'}", file=out)
    exports = {"MAX_JOBS": str(jobs), **spec.build_env}
    print(f"# build settings: {' '.join(f'{k}={v}' for k, v in exports.items())}", file=out)
    for index, step in enumerate(steps):
        state = "  (done: would be skipped)" if index < start else ""
        print(f"[{index + 1}/{len(steps)}] {step.name}: {step.title}{state}", file=out)
        for command in step.commands:
            print(f"  $ {command}", file=out)
        if step.action_text and step.name == "activate":
            print(f"  writes {layout.activate}:", file=out)
            for line in step.action_text.splitlines():
                print(f"    | {line}", file=out)


@contextlib.contextmanager
def install_lock(layout: Layout) -> Iterator[None]:
    import fcntl
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".install.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fail(f"{layout.root}: another installer is running into this ENV_DIR (lock {handle.name})")
        yield


def _run_command(argv: list[str], log: TextIO, quiet: bool) -> int:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if not quiet:
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.wait()


def run_plan(spec: EnvironmentSpec, layout: Layout, steps: list[Step], jobs: int | str,
             runner: str | None = None, quiet: bool = False) -> list[str]:
    """Run the pending steps in order; returns the names of the steps that ran."""
    ran: list[str] = []
    with install_lock(layout):
        start = first_pending(layout, steps)
        for step in steps[:start]:
            print(f"skip [{steps.index(step) + 1}/{len(steps)}] {step.name}: done "
                  f"({sentinel_path(layout, step)})", flush=True)
        if start == len(steps):
            print(f"{layout.root}: every step is done; nothing to do", flush=True)
            return ran
        # everything from `start` on runs again: its inputs may have changed
        for step in steps[start:]:
            sentinel_path(layout, step).unlink(missing_ok=True)
        layout.logs.mkdir(parents=True, exist_ok=True)
        prelude = command_prelude(spec, layout, jobs)
        if not runner and spec.modules:
            has_module = subprocess.run(["bash", "-c", MODULE_INIT + "command -v module"],
                                        capture_output=True).returncode == 0
            print(f"modules: {' '.join(spec.modules)}" if has_module else
                  f"note: no 'module' command here; not loading {' '.join(spec.modules)} "
                  "(building against the CUDA toolkit already installed)", flush=True)
        for index in range(start, len(steps)):
            step = steps[index]
            log_path = layout.logs / f"{index + 1:02d}-{step.name}.log"
            print(f"==> [{index + 1}/{len(steps)}] {step.name}: {step.title}", flush=True)
            started = now_iso()
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"==> {started} step {step.name}: {step.title}\n")
                for command in step.commands:
                    print(f"$ {command}", flush=True)
                    log.write(f"$ {command}\n")
                    log.flush()
                    argv = [runner, step.name, command] if runner else ["bash", "-c", prelude + command]
                    try:
                        status = _run_command(argv, log, quiet)
                    except OSError as exc:
                        fail(f"{log_path}: step {step.name} could not start {argv[0]!r}: {exc}")
                    if status != 0:
                        log.write(f"==> step {step.name} FAILED (exit {status}): {command}\n")
                        fail(f"{log_path}: step '{step.name}' failed (exit {status}) running: {command}\n"
                             f"  fix the cause and re-run: the installer resumes at step '{step.name}'")
                if step.action is not None:
                    step.action()
                log.write(f"==> {now_iso()} step {step.name} done\n")
            write_json(sentinel_path(layout, step), {"step": step.name, "title": step.title,
                                                     "fingerprint": step.fingerprint(), "started": started,
                                                     "finished": now_iso(), "commands": step.commands})
            ran.append(step.name)
    return ran


def write_activate_files(spec: EnvironmentSpec, layout: Layout, steps: list[Step]) -> None:
    """activate.sh (deterministic) and environment.json (provenance: pins, steps, commit, host)."""
    write_text(layout.activate, render_activate(spec, layout))
    write_json(layout.manifest, provenance(
        env_dir=str(layout.root), config=str(spec.source), pins=spec.pins(),
        activate=str(layout.activate), megatron_path=str(layout.megatron),
        tokenizer_models=[str(layout.tokenizer / m.path) for m in spec.tokenizer_models],
        steps=[{"name": s.name, "title": s.title, "fingerprint": s.fingerprint()} for s in steps],
        repo_commit=git_commit()))
