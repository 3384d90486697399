"""Model and training parameters: params/<PARAM>.yaml, and what is derived from them.

Two keys are part of the contract every step relies on and stay at the top level of each file:
`seq_length` and `global_batch_size` (training iterations are derived from them).
"""
from __future__ import annotations

import math

from pipeline.config import Section, load_yaml
from pipeline.errors import fail
from pipeline.paths import PARAMS_DIR


def params_path(name: str):
    return PARAMS_DIR / f"{name}.yaml"


def load_params(name: str) -> Section:
    path = params_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))) or "none"
        fail(f"PARAM={name}: {path} not found (known: {known})")
    return Section(load_yaml(path), path)


def tokens_per_iteration(params: Section) -> int:
    seq = params.get("seq_length", int)
    batch = params.get("global_batch_size", int)
    if seq <= 0 or batch <= 0:
        fail(f"{params.path}: seq_length and global_batch_size must be positive")
    return seq * batch


def train_iterations(total_tokens: int, params: Section) -> int:
    """Iterations that draw `total_tokens` once: ceil(tokens / (seq_length x global_batch_size))."""
    return math.ceil(total_tokens / tokens_per_iteration(params))
