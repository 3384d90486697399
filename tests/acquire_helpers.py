"""Helpers shared by the download / extract / merge / clean-intermediate tests."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zstandard

from conftest import REPO, SCRIPTS

DOLMINO = "dolmino-mix-1124"

# what the built-in sample must turn into (the earlier pipeline's merged names, without data/)
SAMPLE_MERGED = sorted([
    "dclm/dclm-0000-0009.jsonl", "dclm/dclm-0010-0011.jsonl", "flan/flan-all.jsonl", "pes2o/pes2o-all.jsonl",
    "stackexchange/stackexchange-all.jsonl", "wiki/wiki-all.jsonl",
    "math/codesearchnet-owmfilter-all.jsonl", "math/dolmino_math_synth-all.jsonl", "math/gsm8k-all.jsonl",
    "math/mathcoder2-synthmath-all.jsonl", "math/metamath-owmfilter-all.jsonl", "math/tinyGSM-MIND-all.jsonl",
    "math/tulu_math-all.jsonl",
])


def script_env(**extra: str) -> dict:
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    env.pop("HF_ENDPOINT", None)
    env.update(extra)
    return env


def run(name: str, *args: str, env: dict | None = None, check: bool = True, timeout: float = 300):
    """scripts/<name>.py with the test interpreter; returns the CompletedProcess."""
    result = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], capture_output=True, text=True,
                            env=env or script_env(), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{name}.py {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def files_below(root: Path) -> list[str]:
    """Relative paths of the visible files below root (hidden files and folders skipped)."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in files_below(root)}


def jsonl_records(path: Path) -> list[dict]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", f"{path} does not end with a newline"
    return [json.loads(line) for line in lines[:-1]]


def state(exp: Path, dataset: str, stage: str) -> Path:
    return exp / ".state" / dataset / stage


def write_description(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def kill_when(cmd: list[str], ready, timeout: float = 60, env: dict | None = None) -> int:
    """Start cmd in its own process group, SIGKILL the group once ready() is true; returns its status."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env or script_env())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.wait()


def big_jsonl(count: int, seed: int = 0, blank_every: int = 0) -> bytes:
    """Distinct JSON lines (about 1 KB each); optionally a blank line every `blank_every` lines."""
    import random

    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
    lines = []
    for i in range(count):
        text = " ".join(rng.choices(words, k=150))
        lines.append(json.dumps({"id": f"doc-{seed}-{i}", "text": text}).encode())
        if blank_every and i % blank_every == blank_every - 1:
            lines.append(b"")
    return b"\n".join(lines) + b"\n"


__all__ = ["REPO", "SCRIPTS"]
