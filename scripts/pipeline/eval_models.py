"""Which models make eval scores, and whether each is a complete Hugging Face folder: the base, each seed's
converted final iteration and the soup of an experiment (or any folders, EVAL_MODELS), the checks before
any job (config, every weight shard, tokenizer files), and the fingerprint of a model's files that decides
whether it was already evaluated.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import read_json, write_json
from pipeline.errors import PipelineError, fail
from pipeline.hf_folder import RECORD_FILE, weight_files
from pipeline.paths import base_hf_dir, run_dir, soup_dir
from pipeline.soup import CHECKPOINTS_HF, PROVENANCE_FILE as SOUP_RECORD, hf_checkpoints, iter_dir_name, \
    parse_ingredients
from pipeline.tokenizer_check import converted_run_dir, describe_verdict, recorded_tokenizers, verify_hf_tokenizer
from pipeline.tokenizer_check import training_tokenizer as resolve_training_tokenizer

ROLES = ("base", "seed", "soup", "model")
# a folder is a model when it has one of these (AutoTokenizer reads any of them; tokenizer_config.json alone is not one)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# records written beside the weights that do not change what the model computes
NOT_MODEL_FILES = {RECORD_FILE, SOUP_RECORD, "mergekit_config.yml", "README.md"}
# the harness's model_args are `key=value,key=value`: a path holding either cannot be passed
UNSAFE_PATH_CHARS = (",", "=")


@dataclass(frozen=True)
class EvalModel:
    label: str            # base, seed42, soup, or a folder's name: the report's column
    role: str             # base | seed | soup | model
    folder: Path
    pending: bool = False  # written by a job that has not run yet (make chain)

    def to_json(self) -> dict:
        return {"label": self.label, "role": self.role, "folder": str(self.folder), "pending": self.pending}

    @classmethod
    def from_json(cls, data: dict) -> "EvalModel":
        return cls(data["label"], data["role"], Path(data["folder"]), bool(data.get("pending")))


def _seed_label(size: str, seed: str, sizes: set[str]) -> str:
    return f"seed{seed}" if len(sizes) == 1 else f"{size}-seed{seed}"


def experiment_models(exp: Path, *, task: str, param: str, size: str, seeds: str, soup_name: str, base_hf: str,
                      iteration: int | None = None, final_iteration: int | None = None) -> list[EvalModel]:
    """The base, every seed's converted checkpoint (the latest, ITER, or the chain's `final_iteration`, then
    pending) and the soup SOUP_NAME. Fails naming what is missing; the default base may be absent."""
    pending = final_iteration is not None
    models = []
    if base_hf:
        models.append(EvalModel("base", "base", Path(base_hf).absolute()))
    elif (base_hf_dir(exp) / "config.json").is_file():
        models.append(EvalModel("base", "base", base_hf_dir(exp)))
    else:
        print(f"note: no base model ({base_hf_dir(exp)} has none; make convert-base BASE_CKPT=... converts the "
              "pretraining checkpoint, or give BASE_HF=<folder>): the seeds and the soup only", file=sys.stderr)
    specs = parse_ingredients(seeds, size, iteration)
    sizes = {s.size for s in specs}
    for spec in specs:
        run = run_dir(exp, task, param, spec.size, spec.seed)
        label = _seed_label(spec.size, spec.seed, sizes)
        if pending:
            models.append(EvalModel(label, "seed", run / CHECKPOINTS_HF / iter_dir_name(final_iteration), True))
            continue
        found = hf_checkpoints(run)
        if spec.iteration is not None:
            if spec.iteration not in found:
                fail(f"{run / CHECKPOINTS_HF / iter_dir_name(spec.iteration)}: no converted checkpoint of seed "
                     f"{spec.seed} at iteration {spec.iteration} "
                     f"(make convert SEED={spec.seed} ITER={spec.iteration})")
            models.append(EvalModel(label, "seed", found[spec.iteration]))
        elif not found:
            fail(f"{run / CHECKPOINTS_HF}: seed {spec.seed} has no converted checkpoint "
                 f"(make convert SEED={spec.seed})")
        else:
            models.append(EvalModel(label, "seed", found[max(found)]))
    soup = soup_dir(exp, soup_name)
    if not pending and not (soup / SOUP_RECORD).is_file():
        fail(f"{soup}: no soup {soup_name!r} here (make soup-config soup SOUP_NAME={soup_name}, or EVAL_MODELS= to "
             "evaluate folders of your choice)")
    models.append(EvalModel("soup", "soup", soup, pending))
    return models


def folder_models(folders: list[str]) -> list[EvalModel]:
    """EVAL_MODELS: any folders, labelled by their names (with the parent's where two share one)."""
    paths = [Path(f).absolute() for f in folders]
    if len(set(paths)) != len(paths):
        fail(f"EVAL_MODELS lists a folder twice: {' '.join(folders)}")
    names = [p.name for p in paths]
    labels = [p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}" for p in paths]
    return [EvalModel(label, "model", path) for label, path in zip(labels, paths)]


def tokenizer_verdict(model_dir: Path, training_tokenizer: Path | None = None) -> str:
    """How evaluation judges a model's tokenizer, in one line; raises PipelineError when the harness would feed
    the model other ids than it was trained on. The SentencePiece model it was trained with is TOKENIZER_MODEL
    when given, else what the folder's conversion or soup record and its run name; the folder's tokenizer,
    loaded with AutoTokenizer as the harness loads it, must encode as that model (pipeline.tokenizer_check).
    A folder from elsewhere that names no training tokenizer is evaluated with the note that it is unchecked."""
    present = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not present:
        fail(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}): the harness cannot turn text into "
             "tokens for this model; give the conversion HF_TOKENIZER_DIR (make convert, make convert-base) or copy "
             "the tokenizer's Hugging Face files in")
    recorded = recorded_tokenizers(run_dir=converted_run_dir(model_dir), converted=model_dir)
    if training_tokenizer is None and not recorded:
        return (f"not checked: {model_dir} names no training tokenizer (give TOKENIZER_MODEL=<the SentencePiece "
                "model it was trained with> to check it)")
    model = resolve_training_tokenizer(training_tokenizer, recorded, f"the model {model_dir}")
    return _verified(str(model_dir.resolve()), str(model.resolve()))


@functools.lru_cache(maxsize=None)
def _verified(model_dir: str, sp_model: str) -> str:
    """The check once per folder and model in a process (a job checks before it runs and records it after)."""
    verdict = verify_hf_tokenizer(Path(model_dir), Path(sp_model))
    return f"{describe_verdict(verdict)}: {Path(sp_model).name} (sha256 {verdict['tokenizer_model_sha256'][:12]})"


def model_problems(model: EvalModel, training_tokenizer: Path | None = None) -> list[str]:
    """Why the harness could not load `model` (empty when it can); a pending model is not looked at."""
    folder = model.folder
    if any(c in str(folder) for c in UNSAFE_PATH_CHARS):
        return [f"{folder}: the harness's model arguments cannot hold a path with ',' or '=' ({model.label}); "
                "move or link the folder"]
    if model.pending:
        return []
    if not folder.is_dir():
        return [f"{folder}: {model.label}: model folder not found"]
    problems = []
    config = folder / "config.json"
    if not config.is_file():
        problems.append(f"{config}: {model.label}: missing (not a complete Hugging Face model folder)")
    else:
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except ValueError as exc:
            problems.append(f"{config}: {model.label}: not JSON ({exc})")
    for check in (lambda: weight_files(folder, f"model {model.label}"),
                  lambda: tokenizer_verdict(folder, training_tokenizer)):
        try:
            check()
        except PipelineError as exc:
            problems.append(str(exc))
    return problems


# ---------------------------------------------------------------------------------------------
# Fingerprint: what "the same model files" means for the no-second-evaluation rule
# ---------------------------------------------------------------------------------------------
def model_files(folder: Path) -> list[Path]:
    """Weights, configs and tokenizer files of a model folder (not the provenance records beside them)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in NOT_MODEL_FILES)


def fingerprint(folder: Path, cache_file: Path) -> str:
    """sha256 over every model file's name, size and sha256. A file's sha256 is remembered in `cache_file` by
    path, size, mtime and inode, so a 15 GB model is read once, not at every make eval."""
    cache = read_json(cache_file, bad="none") or {}
    entries, changed = [], False
    for path in model_files(folder):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
        digest = cache.get(key)
        if digest is None:
            sha = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(1 << 22):
                    sha.update(block)
            prefix = f"{path.resolve()}|"
            for stale in [k for k in cache if k.startswith(prefix)]:   # an earlier version of this file
                del cache[stale]
            digest = cache[key] = sha.hexdigest()
            changed = True
        entries.append([path.name, stat.st_size, digest])
    if changed:
        try:
            write_json(cache_file, cache)
        except OSError as exc:   # a read-only EXP_DIR still evaluates; it only hashes again next time
            print(f"note: cannot keep file hashes in {cache_file}: {os.strerror(exc.errno or 0)}", file=sys.stderr)
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
