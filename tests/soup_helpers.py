"""Helpers for the soup tests: tiny seed runs, hand-written mergekit configs, tensors of a checkpoint."""
from __future__ import annotations

import tempfile
from pathlib import Path

from convert_helpers import small_tokenizer
from make_tiny_runs import make_tiny_model  # demo/ is on sys.path (conftest)
from pipeline.paths import run_dir
from pipeline.soup import CHECKPOINTS_HF, iter_dir_name

TASK, PARAM = "t", "p"
_TOKENIZER: dict = {}


def tokenizer() -> tuple[Path, Path]:
    """(the runs' training tokenizer: a small SentencePiece model; its Hugging Face folder), made once per
    process in a temporary folder removed at exit."""
    if not _TOKENIZER:
        _TOKENIZER["tmp"] = tempfile.TemporaryDirectory(prefix="soup-test-tokenizer.")
        _TOKENIZER["files"] = small_tokenizer(Path(_TOKENIZER["tmp"].name))
    return _TOKENIZER["files"]


def checkpoint(exp: Path, seed: int, size: str = "50B", iteration: int = 10) -> Path:
    return run_dir(exp, TASK, PARAM, size, seed) / CHECKPOINTS_HF / iter_dir_name(iteration)


def make_runs(exp: Path, seeds, size: str = "50B", iteration: int = 10, **model_args) -> list[Path]:
    """Tiny converted seed runs under exp/runs/t/p/<size>/seed<N>/checkpoints_hf/iter_<iteration>/, carrying the
    Hugging Face folder of tokenizer()'s model (TOKENIZER_MODEL for the soup)."""
    hf_dir = tokenizer()[1]
    return [make_tiny_model(checkpoint(exp, seed, size, iteration), seed, tokenizer_dir=hf_dir, **model_args)
            for seed in seeds]


def write_merge_config(path: Path, models, *, method: str = "linear", weights=None, dtype: str | None = "float32",
                       base: Path | None = None, extra: str = "") -> Path:
    weights = weights or [1.0] * len(models)
    lines = [f"merge_method: {method}"]
    if base is not None:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    for model, weight in zip(models, weights):
        lines += [f"  - model: {model}", "    parameters:", f"      weight: {weight}"]
    if dtype:
        lines.append(f"dtype: {dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def tensors(folder: Path) -> dict:
    """Every tensor of a safetensors checkpoint folder (one file or shards)."""
    from safetensors.torch import load_file

    result = {}
    for file in sorted(folder.glob("*.safetensors")):
        result.update(load_file(file))
    return result
