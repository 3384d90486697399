"""Judge a training environment against its pins: one row per thing a job needs, with a status.

The facts come from pipeline/env_probe.py run by the environment's own Python (after sourcing
ENV_DIR/activate.sh when there is one, so the modules and the job settings are those a job gets);
files (Megatron-LM checkout, its built helper, tokenizer models) are also looked at from here.
Standard library only, like the probe: env_check.py must run on a bare GPU machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.environment import EnvironmentSpec, Layout

PROBE = Path(__file__).resolve().with_name("env_probe.py")
OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
PROBE_TIMEOUT_S = 600
# TransformerEngine from this version on failed with torch 2.6 + Megatron-LM v4 (why 1.9 is pinned)
TE_BROKEN_FROM = (1, 10)


@dataclass
class Row:
    check: str
    status: str
    found: str
    expected: str = ""


@dataclass
class Target:
    """What to check: an interpreter, optionally an ENV_DIR, the Megatron-LM and tokenizer files."""
    python: str                               # command or path
    layout: Layout | None = None
    megatron: Path | None = None
    tokenizers: list[tuple[Path, int | None]] = field(default_factory=list)
    gpu: bool = True


def version_tuple(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+-]", text or ""):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def base_version(text: str | None) -> str:
    return (text or "").split("+")[0]


def resolve_python(python: str) -> str | None:
    if os.sep in python:
        return python if os.path.isfile(python) and os.access(python, os.X_OK) else None
    return shutil.which(python)


def run_probe(target: Target, spec: EnvironmentSpec, timeout: float = PROBE_TIMEOUT_S) -> tuple[dict, str]:
    """Findings by key (tokenizer_load as a list), plus a note when the probe did not finish."""
    python = resolve_python(target.python)
    if python is None:
        return {}, f"interpreter not found: {target.python}"
    request = {
        "megatron": str(target.megatron) if target.megatron else None,
        "helper": spec.megatron_helper,
        "tokenizers": [str(path) for path, _ in target.tokenizers],
    }
    argv = [python, str(PROBE), json.dumps(request)]
    if target.layout is not None and target.layout.activate.is_file():
        argv = ["bash", "-c", 'source "$1" >&2 && shift && exec "$@"', "env-check",
                str(target.layout.activate), *argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                                stdin=subprocess.DEVNULL)
        stdout, stderr, status = result.stdout, result.stderr, result.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, status = f"timed out after {timeout:.0f}s", None
    findings: dict = {"tokenizer_load": []}
    for line in stdout.splitlines():
        if not line.startswith("ENVCHECK "):
            continue
        try:
            item = json.loads(line[len("ENVCHECK "):])
        except ValueError:
            continue
        key = item.pop("key", None)
        if key == "tokenizer_load":
            findings["tokenizer_load"].append(item)
        elif key:
            findings[key] = item
    note = ""
    if "done" not in findings:
        tail = [l for l in stderr.strip().splitlines() if l.strip()][-1:] or ["no output"]
        how = "timed out" if status is None else f"exit {status}"
        note = f"probe stopped early ({how}): {tail[0][:200]}"
    return findings, note


def _missing(findings: dict, key: str, note: str) -> Row | None:
    if key in findings:
        return None
    return Row(key, FAIL, f"not checked: {note or 'no answer'}")


def judge(target: Target, spec: EnvironmentSpec, findings: dict, note: str) -> list[Row]:
    rows: list[Row] = []
    layout = target.layout

    # activate.sh: what makes a job's environment
    if layout is None:
        rows.append(Row("activate.sh", SKIP, "no ENV_DIR: checking the interpreter as it is"))
    elif layout.activate.is_file():
        rows.append(Row("activate.sh", OK, str(layout.activate)))
    else:
        rows.append(Row("activate.sh", FAIL, f"missing: {layout.activate} (run make env)"))

    # Python
    row = _missing(findings, "python", note)
    if row:
        rows.append(Row("python", FAIL, f"{target.python}: {note or 'no answer'}", spec.python_version))
    else:
        found = findings["python"]["version"]
        want = version_tuple(spec.python_version)
        have = version_tuple(found)
        status = OK if have == want else (WARN if have[:2] == want[:2] else FAIL)
        rows.append(Row("python", status, f"{found} ({findings['python'].get('executable')})", spec.python_version))

    # torch and the GPUs
    torch = findings.get("torch")
    want_torch = f"{spec.torch_version}+{spec.cuda_wheel_tag}"
    cuda_mm = ".".join(spec.cuda_version.split(".")[:2])
    if torch is None:
        rows.append(Row("torch", FAIL, f"not checked: {note or 'no answer'}", want_torch))
    elif not torch.get("ok"):
        rows.append(Row("torch", FAIL, f"not importable: {torch.get('error')}", want_torch))
    else:
        build = torch.get("cuda_build")
        found = f"{torch.get('version')} (CUDA {build or 'none: CPU-only build'})"
        if not build:
            status = FAIL
        elif base_version(torch.get("version")) != spec.torch_version or build != cuda_mm:
            status = WARN
        else:
            status = OK
        rows.append(Row("torch", status, found, want_torch))

    vision = findings.get("torchvision")
    if vision is None:
        rows.append(Row("torchvision", FAIL if torch is None else WARN, f"not checked: {note or 'no answer'}",
                        spec.torchvision_version))
    elif not vision.get("ok"):
        rows.append(Row("torchvision", WARN, f"not importable: {vision.get('error')}", spec.torchvision_version))
    else:
        same = base_version(vision.get("version")) == spec.torchvision_version
        rows.append(Row("torchvision", OK if same else WARN, str(vision.get("version")), spec.torchvision_version))

    cuda = findings.get("cuda")
    if not target.gpu:
        rows.append(Row("cuda", SKIP, "--no-gpu"))
        rows.append(Row("gpus", SKIP, "--no-gpu"))
    elif cuda is None:
        reason = "torch not importable" if torch and not torch.get("ok") else f"not checked: {note or 'no answer'}"
        rows.append(Row("cuda", FAIL, reason, "available"))
        rows.append(Row("gpus", FAIL, reason, ">= 1"))
    elif not cuda.get("ok"):
        rows.append(Row("cuda", FAIL, f"error: {cuda.get('error')}", "available"))
        rows.append(Row("gpus", FAIL, "unknown", ">= 1"))
    else:
        available, count = cuda.get("available"), cuda.get("device_count", 0)
        rows.append(Row("cuda", OK if available else FAIL,
                        "available" if available else "not available (no GPU visible here, or a driver problem)",
                        "available"))
        names = cuda.get("names") or []
        label = f"{count}" + (f" x {names[0]}" if names and len(set(names)) == 1 else
                              (f" ({', '.join(names)})" if names else ""))
        rows.append(Row("gpus", OK if count > 0 else FAIL, label, ">= 1"))

    # the compiled stack
    te = findings.get("transformer_engine")
    want_te = spec.transformer_engine_version
    if _imported("transformer_engine", te, want_te, note, rows):
        version = te.get("version")
        if version_tuple(version)[:2] >= TE_BROKEN_FROM:
            rows.append(Row("transformer_engine", FAIL, f"{version}: >= 1.10 failed with torch 2.6 + Megatron-LM v4",
                            want_te))
        else:
            same = version_tuple(version) == version_tuple(want_te)
            rows.append(Row("transformer_engine", OK if same else WARN, str(version), want_te))

    apex = findings.get("apex")
    want_apex = f"commit {spec.apex_commit[:12]}, cuda_ext"
    if _imported("apex", apex, want_apex, note, rows):
        exts = apex.get("cuda_ext") or {}
        missing = [name for name, present in exts.items() if not present]
        found = "imported" + (f", without {', '.join(missing)} (built without --cuda_ext?)" if missing
                              else ", cuda_ext (amp_C, fused_layer_norm_cuda)")
        rows.append(Row("apex", WARN if missing else OK, found, want_apex))

    flash = findings.get("flash_attn")
    want_flash = spec.flash_attn_version
    if _imported("flash_attn", flash, want_flash, note, rows):
        same = version_tuple(flash.get("version")) == version_tuple(want_flash)
        rows.append(Row("flash_attn", OK if same else WARN, str(flash.get("version")), want_flash))

    # lm-evaluation-harness: only make eval EVAL_ENV=training needs it here, so its absence is a warning
    if spec.eval_harness:
        harness = findings.get("lm_eval")
        if harness is None or not harness.get("ok"):
            why = f"not importable: {harness.get('error')}" if harness else f"not checked: {note or 'no answer'}"
            rows.append(Row("lm_eval", WARN, f"{why} (needed only by make eval EVAL_ENV=training; make env installs "
                            "it)", spec.eval_version))
        else:
            same = harness.get("version") == spec.eval_version
            rows.append(Row("lm_eval", OK if same else WARN, str(harness.get("version")), spec.eval_version))

    # Megatron-LM and its helper
    megatron = target.megatron
    want_meg = f"{spec.megatron_repo.rstrip('/').split('/', 3)[-1]} {spec.megatron_ref}"
    if megatron is None:
        rows.append(Row("megatron", FAIL, "no Megatron-LM: give ENV_DIR or --megatron-path", want_meg))
        rows.append(Row("megatron_helper", FAIL, "no Megatron-LM", "built"))
    else:
        if not (megatron / "pretrain_gpt.py").is_file() or not (megatron / "megatron" / "core").is_dir():
            rows.append(Row("megatron", FAIL, f"missing: {megatron} (no pretrain_gpt.py / megatron/core)", want_meg))
        else:
            imported = findings.get("megatron_import")
            if imported is None:
                rows.append(Row("megatron", WARN, f"{megatron} (import not checked: {note or 'no answer'})", want_meg))
            elif not imported.get("ok"):
                rows.append(Row("megatron", FAIL, f"{megatron}: import failed: {imported.get('error')}", want_meg))
            else:
                version = imported.get("version")
                rows.append(Row("megatron", OK, f"{megatron}" + (f" (core {version})" if version else ""), want_meg))
        suffix = (findings.get("python") or {}).get("ext_suffix")
        stem = megatron / spec.megatron_helper
        helper = Path(f"{stem}{suffix}") if suffix else None
        if helper is None:
            candidates = sorted(stem.parent.glob(f"{stem.name}.*so")) if stem.parent.is_dir() else []
            helper = candidates[0] if candidates else None
        load = findings.get("megatron_helper_load")
        if helper is None or not helper.is_file():
            shown = helper or f"{stem}.*.so"
            rows.append(Row("megatron_helper", FAIL, f"not built: {shown} (make -C {stem.parent})", "built"))
        elif load is not None and not load.get("ok"):
            rows.append(Row("megatron_helper", FAIL, f"{helper.name} does not load: {load.get('error')}", "built"))
        else:
            rows.append(Row("megatron_helper", OK, helper.name + (" (loads)" if load else ""), "built"))

    # tokenizer models
    loads = {item.get("path"): item for item in findings.get("tokenizer_load", [])}
    if not target.tokenizers:
        rows.append(Row("tokenizer", FAIL, "no tokenizer model: give ENV_DIR or --tokenizer-model", "present"))
    for path, pieces in target.tokenizers:
        want = "present" + (f", {pieces} pieces" if pieces else "")
        load = loads.get(str(path))
        if not path.is_file():
            rows.append(Row("tokenizer", FAIL, f"missing: {path}", want))
        elif load is None or load.get("ok") is None:
            rows.append(Row("tokenizer", OK, f"{path.name} (present; not loaded)", want))
        elif not load.get("ok"):
            rows.append(Row("tokenizer", FAIL, f"{path.name}: {load.get('error')}", want))
        elif pieces and load.get("pieces") != pieces:
            rows.append(Row("tokenizer", FAIL, f"{path.name}: {load.get('pieces')} pieces", want))
        else:
            rows.append(Row("tokenizer", OK, f"{path.name} ({load.get('pieces')} pieces)", want))

    # the checkpoint-loading setting
    env = findings.get("env") or {}
    wo = findings.get("weights_only")
    want_wo = "checkpoints load"
    if wo is None:
        rows.append(Row("weights_only", FAIL, f"not checked: {note or 'torch not importable'}", want_wo))
    elif wo.get("ok"):
        setting = env.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        how = f"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD={setting}" if setting else "torch < 2.6 default"
        rows.append(Row("weights_only", OK, f"pickled checkpoint state loads ({how})", want_wo))
    else:
        rows.append(Row("weights_only", FAIL, "torch.load refuses a Megatron-style checkpoint (weights_only=True): "
                        "source activate.sh or export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1", want_wo))

    # the other job settings activate.sh exports
    if spec.job_env and "env" in findings:
        differ = [f"{k}={env.get(k) or '(unset)'} (pinned {v})" for k, v in spec.job_env.items() if env.get(k) != v]
        shown = " ".join(f"{k}={v}" for k, v in spec.job_env.items())
        rows.append(Row("job_env", WARN if differ else OK, "; ".join(differ) if differ else shown, "as pinned"))
    return rows


def format_table(rows: list[Row]) -> str:
    """check | status | expected | found, one line each (found last: it can be long)."""
    headers = Row("check", "status", "found", "expected")
    table = [headers, *rows]
    width = [max(len(r.check) for r in table), max(len(r.status) for r in table),
             max(len(r.expected or "-") for r in table)]
    return "\n".join(f"{r.check:<{width[0]}}  {r.status:<{width[1]}}  {r.expected or '-':<{width[2]}}  {r.found}".rstrip()
                     for r in table)


def failures(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.status == FAIL]


def _imported(name: str, finding: dict | None, want: str, note: str, rows: list) -> bool:
    """True when the probe imported `name`; otherwise adds its FAIL row (not checked / not importable)."""
    if finding is None:
        rows.append(Row(name, FAIL, f"not checked: {note or 'no answer'}", want))
        return False
    if not finding.get("ok"):
        rows.append(Row(name, FAIL, f"not importable: {finding.get('error')}", want))
        return False
    return True
