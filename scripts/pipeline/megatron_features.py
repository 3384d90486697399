"""How a run is launched on the Megatron-LM it is given, decided from that checkout's own argument parser.

Megatron generations differ where it matters for a launch:
- attention: core >= 0.11 selects it with `--attention-backend flash|fused|unfused|auto|local` and asserts
  that the NVTE_* variables agree with it (an exported NVTE_FUSED_ATTN=0 aborts an `auto` run); older
  ones (the LLM-jp v4 fork, core 0.10) have no such flag: TransformerEngine reads NVTE_FLASH_ATTN /
  NVTE_FUSED_ATTN, and `--use-flash-attn` asks for flash attention;
- `--use-mpi` (ranks from OMPI_COMM_WORLD_*) exists only in the LLM-jp fork; elsewhere the mpirun launch
  maps those variables to torch's RANK / WORLD_SIZE / LOCAL_RANK itself (pbs/launch_env.sh).

`probe()` runs `megatron_probe.py` in the Python that runs Megatron and caches the answer per checkout
(keyed by the parser's source files), so `make args`, the preflight and the job agree. Every generated
flag must be one the parser knows: a job never dies on an unknown argument after its queue wait.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.errors import fail
from pipeline.params import ATTENTION_BACKENDS

PROBE_SCRIPT = Path(__file__).resolve().parent / "megatron_probe.py"
PROBE_TIMEOUT_S = 600
NVTE_VARIABLES = ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN")
# the environment of the older TransformerEngine selection, per backend (LLM-jp v4: flash, fused off)
NVTE_BY_BACKEND = {"flash": {"NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "0"},
                   "fused": {"NVTE_FLASH_ATTN": "0", "NVTE_FUSED_ATTN": "1"},
                   "unfused": {"NVTE_FLASH_ATTN": "0", "NVTE_FUSED_ATTN": "0"},
                   "auto": {}}
# files whose change can change the parser (the cache key)
PARSER_SOURCES = ("megatron/training/arguments.py", "megatron/training/argument_utils.py",
                  "megatron/core/transformer/transformer_config.py", "megatron/core/package_info.py")


@dataclass(frozen=True)
class MegatronFeatures:
    megatron_path: str
    core_version: str | None
    options: frozenset[str] = field(default_factory=frozenset)

    @property
    def has_attention_backend(self) -> bool:
        return "--attention-backend" in self.options

    @property
    def has_use_mpi(self) -> bool:
        return "--use-mpi" in self.options

    def describe(self) -> str:
        attention = ("--attention-backend" if self.has_attention_backend
                     else "NVTE_FLASH_ATTN / NVTE_FUSED_ATTN (+ --use-flash-attn)")
        mpi = "--use-mpi" if self.has_use_mpi else "OMPI_COMM_WORLD_* mapped to RANK/WORLD_SIZE/LOCAL_RANK"
        return (f"core {self.core_version or '?'}, {len(self.options)} options; attention chosen by {attention}; "
                f"mpirun ranks: {mpi}")

    def unknown(self, args: list[str]) -> list[str]:
        """The generated option names this Megatron's parser does not have."""
        return sorted({a for a in args if a.startswith("--") and a not in self.options})


def attention_launch(features: MegatronFeatures, backend: str) -> tuple[list[str], dict[str, str | None]]:
    """(Megatron arguments, environment: value to export, or None to unset) for `backend`."""
    if backend not in ATTENTION_BACKENDS:
        fail(f"attention backend {backend!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    if features.has_attention_backend:
        # Megatron sets the NVTE_* variables itself and refuses ones that disagree: none may be inherited
        return ["--attention-backend", backend], {name: None for name in NVTE_VARIABLES}
    env: dict[str, str | None] = dict(NVTE_BY_BACKEND[backend])
    if backend != "auto":
        env.setdefault("NVTE_UNFUSED_ATTN", None)
    args = ["--use-flash-attn"] if backend == "flash" else []
    return args, env


def _cache_key(megatron: Path, python: str) -> str:
    digest = hashlib.sha256(f"{megatron.resolve()}\0{python}".encode())
    for name in PARSER_SOURCES:
        path = megatron / name
        if path.is_file():
            stat = path.stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def probe(megatron: str | os.PathLike, python: str, cache_dir: str | os.PathLike | None = None) -> MegatronFeatures:
    """Ask the checkout's parser (running `python`); fails with Megatron's own error when it cannot import."""
    megatron = Path(megatron).absolute()
    if not (megatron / "megatron" / "training" / "arguments.py").is_file():
        fail(f"MEGATRON_PATH {megatron}: no megatron/training/arguments.py (not a Megatron-LM checkout?)")
    cache = Path(cache_dir) / f"megatron-options-{_cache_key(megatron, python)}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            found = json.loads(cache.read_text(encoding="utf-8"))
            return MegatronFeatures(found["megatron_path"], found.get("core_version"), frozenset(found["options"]))
        except (ValueError, KeyError):
            pass   # a damaged cache entry is asked again
    try:
        result = subprocess.run([python, str(PROBE_SCRIPT), str(megatron)], capture_output=True, text=True,
                                timeout=PROBE_TIMEOUT_S, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except FileNotFoundError:
        fail(f"TRAIN_PYTHON={python}: not found (the Python that runs Megatron-LM; ENV_DIR's venv by default)")
    except subprocess.TimeoutExpired:
        fail(f"{python} {PROBE_SCRIPT.name} {megatron}: no answer in {PROBE_TIMEOUT_S} s")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = "\n    ".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        fail(f"cannot ask Megatron-LM at {megatron} which arguments it takes ({python} exited "
             f"{result.returncode}):\n    {tail}")
    found = json.loads(lines[-1])
    if cache is not None:
        write_json(cache, found)
    return MegatronFeatures(found["megatron_path"], found.get("core_version"), frozenset(found["options"]))
