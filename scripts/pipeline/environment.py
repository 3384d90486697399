"""The training environment: its pinned description (params/environment.toml), where its parts live
under ENV_DIR, and the activate.sh that jobs source.

Only the standard library is needed (the description is TOML, read with tomllib), so env_check.py
also runs on a GPU machine whose Python has no PyYAML.

    spec = load_environment(path)            # validated: unknown/missing keys name file and key
    layout = Layout(env_dir)                 # ENV_DIR/python, venv, src/Megatron-LM, activate.sh, ...
    text = render_activate(spec, layout)     # the activate.sh contract (see ACTIVATE_EXPORTS)
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Section
from pipeline.errors import fail
from pipeline.paths import PARAMS_DIR

DEFAULT_CONFIG = PARAMS_DIR / "environment.toml"
SHA1 = re.compile(r"^[0-9a-f]{40}$")
VERSION = re.compile(r"^\d+(\.\d+)*([a-z0-9.+-]*)$")
MODULE_NAME = re.compile(r"^[A-Za-z0-9_.+/-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# The pinned description
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerModel:
    path: str               # relative to the tokenizer checkout
    pieces: int | None      # expected vocabulary size, when known


@dataclass(frozen=True)
class EnvironmentSpec:
    source: Path
    python_version: str
    python_url: str
    python_configure_flags: tuple[str, ...]
    pip_version: str
    cuda_version: str
    cuda_wheel_tag: str
    torch_version: str
    torchvision_version: str
    torch_index_url: str
    requirements: tuple[str, ...]
    apex_repo: str
    apex_commit: str
    flash_attn_version: str
    transformer_engine_version: str
    megatron_repo: str
    megatron_ref: str
    megatron_helper: str
    tokenizer_repo: str
    tokenizer_ref: str
    tokenizer_models: tuple[TokenizerModel, ...]
    modules: tuple[str, ...]
    build_env: dict[str, str] = field(default_factory=dict)
    job_env: dict[str, str] = field(default_factory=dict)
    eval_harness: str = ""                    # lm-eval's pin ([eval]), for make eval EVAL_ENV=training
    eval_requirements: tuple[str, ...] = ()   # its dependencies, resolved with the pins above

    @property
    def eval_version(self) -> str:
        return self.eval_harness.rpartition("==")[2]

    def pins(self) -> dict[str, Any]:
        """The pinned versions, flat, for provenance and the check."""
        return {
            "python": self.python_version, "pip": self.pip_version, "cuda": self.cuda_version,
            "torch": self.torch_version, "torchvision": self.torchvision_version,
            "torch_wheels": self.cuda_wheel_tag, "apex_commit": self.apex_commit,
            "flash_attn": self.flash_attn_version, "transformer_engine": self.transformer_engine_version,
            "megatron": f"{self.megatron_repo}@{self.megatron_ref}",
            "tokenizer": f"{self.tokenizer_repo}@{self.tokenizer_ref}",
            "tokenizer_models": [m.path for m in self.tokenizer_models],
            "modules": list(self.modules), "requirements": list(self.requirements),
            "job_env": dict(self.job_env), "lm_eval": self.eval_version,
        }


def _version(section: Section, key: str) -> str:
    value = section.get(key, str)
    if not VERSION.match(value):
        fail(f"{section.where(key)}: {value!r} is not a version like 1.2.3 (quote it: \"{value}\")")
    return value


def _text(section: Section, key: str, pattern: re.Pattern | None = None, what: str = "") -> str:
    value = section.get(key, str)
    if not value.strip():
        fail(f"{section.where(key)}: must not be empty")
    if pattern is not None and not pattern.match(value):
        fail(f"{section.where(key)}: {value!r} is not {what}")
    if any(c in value for c in "\n'\"`$\\"):
        fail(f"{section.where(key)}: {value!r} holds a quote, backslash, $ or newline")
    return value


def _string_list(section: Section, key: str) -> tuple[str, ...]:
    values = section.get(key, list)
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            fail(f"{section.where(key)}[{index}]: expected a non-empty string, got {value!r}")
        if any(c in value for c in "\n'\"`$\\"):
            fail(f"{section.where(key)}[{index}]: {value!r} holds a quote, backslash, $ or newline")
    return tuple(values)


def _env_map(section: Section, key: str) -> dict[str, str]:
    mapping = section.section(key, default={})
    result = {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            fail(f"{mapping.where(str(name))}: not a valid environment variable name")
        if not isinstance(value, str):
            fail(f"{mapping.where(name)}: expected a quoted string, got {type(value).__name__} ({value!r})")
        if any(c in value for c in "\n'\"`$\\"):
            fail(f"{mapping.where(name)}: {value!r} holds a quote, backslash, $ or newline")
        result[name] = value
    return result


def load_toml(path: Path) -> dict:
    """The TOML document at `path`; fails naming the file (and the line, for a syntax error)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            fail(f"{path}: reading TOML needs Python >= 3.11 (tomllib) or the tomli package")
    if not path.is_file():
        fail(f"{path}: config file not found")
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        fail(f"{path}: invalid TOML: {exc}")


def load_environment(path: str | os.PathLike = DEFAULT_CONFIG) -> EnvironmentSpec:
    path = Path(path)
    doc = Section(load_toml(path), path)
    doc.check_keys(required={"python", "cuda", "torch", "requirements", "apex", "flash_attn",
                             "transformer_engine", "megatron", "tokenizer", "modules"},
                   optional={"build_env", "job_env", "eval"})
    python = doc.section("python")
    python.check_keys(required={"version", "url", "pip"}, optional={"configure_flags"})
    cuda = doc.section("cuda")
    cuda.check_keys(required={"version", "wheel_tag"})
    torch = doc.section("torch")
    torch.check_keys(required={"version", "torchvision", "index_url"})
    apex = doc.section("apex")
    apex.check_keys(required={"repo", "commit"})
    flash = doc.section("flash_attn")
    flash.check_keys(required={"version"})
    te = doc.section("transformer_engine")
    te.check_keys(required={"version"})
    megatron = doc.section("megatron")
    megatron.check_keys(required={"repo", "ref", "helper"})
    tokenizer = doc.section("tokenizer")
    tokenizer.check_keys(required={"repo", "ref", "models"})

    apex_commit = apex.get("commit", (str, type(None)))
    if not apex_commit:
        fail(f"{apex.where('commit')}: must be set to the 40-hex apex commit to build (no default: "
             "an unpinned apex is not reproducible)")
    if not SHA1.match(apex_commit):
        fail(f"{apex.where('commit')}: {apex_commit!r} is not a 40-hex git commit")

    models = []
    for index, item in enumerate(tokenizer.get("models", list)):
        model = Section(item, path, f"tokenizer.models[{index}]")
        model.check_keys(required={"path"}, optional={"pieces"})
        rel = _text(model, "path")
        if rel.startswith("/") or ".." in Path(rel).parts:
            fail(f"{model.where('path')}: {rel!r} must be relative to the tokenizer checkout")
        pieces = model.get("pieces", int, None)
        if pieces is not None and pieces <= 0:
            fail(f"{model.where('pieces')}: must be positive")
        models.append(TokenizerModel(rel, pieces))
    if not models:
        fail(f"{tokenizer.where('models')}: list at least one tokenizer model")

    cuda_version = _version(cuda, "version")
    wheel_tag = _text(cuda, "wheel_tag", re.compile(r"^cu\d+$"), "a wheel tag like cu124")
    major, minor = cuda_version.split(".")[:2]
    if wheel_tag != f"cu{major}{minor}":
        fail(f"{cuda.where('wheel_tag')}: {wheel_tag!r} does not match cuda.version {cuda_version} "
             f"(expected cu{major}{minor})")
    helper = _text(megatron, "helper")
    if helper.startswith("/") or ".." in Path(helper).parts:
        fail(f"{megatron.where('helper')}: must be relative to the Megatron-LM checkout")
    harness, eval_requirements = "", ()
    if "eval" in doc.data:
        evaluation = doc.section("eval")
        evaluation.check_keys(required={"harness", "requirements"})
        harness = _text(evaluation, "harness", re.compile(r"^lm-eval(\[[a-z0-9,_-]+\])?==\d[\w.]*$"),
                        "a pin like lm-eval[hf]==0.4.13")
        eval_requirements = _string_list(evaluation, "requirements")
    modules = _string_list(doc, "modules")
    for index, module in enumerate(modules):
        if not MODULE_NAME.match(module):
            fail(f"{doc.where('modules')}[{index}]: {module!r} is not a module name like cuda/12.4/12.4.1")
    return EnvironmentSpec(
        source=path,
        python_version=_version(python, "version"),
        python_url=_text(python, "url"),
        python_configure_flags=_string_list(python, "configure_flags") if "configure_flags" in python.data else (),
        pip_version=_version(python, "pip"),
        cuda_version=cuda_version,
        cuda_wheel_tag=wheel_tag,
        torch_version=_version(torch, "version"),
        torchvision_version=_version(torch, "torchvision"),
        torch_index_url=_text(torch, "index_url"),
        requirements=_string_list(doc, "requirements"),
        apex_repo=_text(apex, "repo"),
        apex_commit=apex_commit,
        flash_attn_version=_version(flash, "version"),
        transformer_engine_version=_version(te, "version"),
        megatron_repo=_text(megatron, "repo"),
        megatron_ref=_text(megatron, "ref", re.compile(r"^[A-Za-z0-9_.+/-]+$"), "a git tag, branch or commit"),
        megatron_helper=helper,
        tokenizer_repo=_text(tokenizer, "repo"),
        tokenizer_ref=_text(tokenizer, "ref", re.compile(r"^[A-Za-z0-9_.+/-]+$"), "a git tag, branch or commit"),
        tokenizer_models=tuple(models),
        modules=modules,
        build_env=_env_map(doc, "build_env"),
        job_env=_env_map(doc, "job_env"),
        eval_harness=harness,
        eval_requirements=eval_requirements,
    )


# ---------------------------------------------------------------------------------------------
# Where things live under ENV_DIR
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def of(cls, env_dir: str | os.PathLike) -> "Layout":
        return cls(Path(os.path.abspath(os.path.expanduser(str(env_dir)))))

    @property
    def python_prefix(self) -> Path:
        return self.root / "python"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def venv_python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def megatron(self) -> Path:
        return self.src / "Megatron-LM"

    @property
    def tokenizer(self) -> Path:
        return self.src / "llm-jp-tokenizer"

    @property
    def activate(self) -> Path:
        return self.root / "activate.sh"

    @property
    def manifest(self) -> Path:
        return self.root / "environment.json"

    @property
    def steps(self) -> Path:
        return self.root / ".steps"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


# ---------------------------------------------------------------------------------------------
# activate.sh: what train.pbs / convert.pbs source
# ---------------------------------------------------------------------------------------------
# The contract: after `source $ENV_DIR/activate.sh` these are exported (plus spec.job_env).
ACTIVATE_EXPORTS = ("ENV_DIR", "VIRTUAL_ENV", "MEGATRON_PATH", "LLMJP_TOKENIZER_DIR")
# job_env entries a job may not override (the checkpoints cannot be read without it)
FORCED_JOB_ENV = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)


# makes `module` available where the site has it but a batch shell has not set it up
MODULE_INIT = ("if ! command -v module >/dev/null 2>&1 && [ -f /etc/profile.d/modules.sh ]; then\n"
               "    source /etc/profile.d/modules.sh\n"
               "fi\n")


def render_modules(modules: tuple[str, ...], indent: str = "", note: bool = True) -> str:
    """Shell lines that load `modules` when a `module` command exists (sourcing its init if needed);
    otherwise a note on stderr (or nothing, with note=False)."""
    if not modules:
        return ""
    missing = ("    echo \"note: no 'module' command here; not loading: " + " ".join(modules)
               + " (using the CUDA libraries already installed)\" >&2") if note else "    :"
    lines = [
        *MODULE_INIT.splitlines(),
        "if command -v module >/dev/null 2>&1; then",
        *(f"    module load {shlex.quote(m)}" for m in modules),
        "else",
        missing,
        "fi",
    ]
    return "".join(f"{indent}{line}\n" for line in lines)


def render_activate(spec: EnvironmentSpec, layout: Layout) -> str:
    """The text of ENV_DIR/activate.sh; depends only on the spec and ENV_DIR (byte-identical re-runs)."""
    q = shlex.quote
    tokenizer_lines = "".join(
        f"#   tokenizer model: ${{LLMJP_TOKENIZER_DIR}}/{m.path}\n" for m in spec.tokenizer_models)
    job_lines = []
    for name, value in spec.job_env.items():
        if name in FORCED_JOB_ENV:
            job_lines.append(f"export {name}={q(value)}")
        else:
            job_lines.append(f"export {name}=\"${{{name}:-{value}}}\"")
    return (
        "# Generated by scripts/env_setup.py from "
        f"{spec.source.name}; do not edit (re-run `make env`).\n"
        "# Source it (bash) before running Megatron-LM: it loads the cluster modules, activates the venv\n"
        "# and exports the settings this stack needs, so no Megatron file is patched by hand.\n"
        f"# Exports: {' '.join(ACTIVATE_EXPORTS + tuple(spec.job_env))}\n"
        f"#   python {spec.python_version}, torch {spec.torch_version}+{spec.cuda_wheel_tag}, "
        f"TransformerEngine {spec.transformer_engine_version}, flash-attn {spec.flash_attn_version}, "
        f"apex {spec.apex_commit[:12]}, Megatron-LM {spec.megatron_ref}\n"
        f"{tokenizer_lines}"
        "\n"
        "_env_had_nounset=0\n"
        "case $- in *u*) _env_had_nounset=1; set +u ;; esac\n"
        f"export ENV_DIR={q(str(layout.root))}\n"
        f"{render_modules(spec.modules)}"
        "source \"${ENV_DIR}/venv/bin/activate\"\n"
        "export MEGATRON_PATH=\"${ENV_DIR}/src/Megatron-LM\"\n"
        "export LLMJP_TOKENIZER_DIR=\"${ENV_DIR}/src/llm-jp-tokenizer\"\n"
        + "".join(f"{line}\n" for line in job_lines) +
        "if [ \"${_env_had_nounset}\" = 1 ]; then set -u; fi\n"
        "unset _env_had_nounset\n"
    )
