"""A training run's folder, and how a midtraining run starts from a pretrained (or earlier) checkpoint.

Run folder `$EXP_DIR/runs/<TASK>/<PARAM>/<SIZE>/seed<SEED>/`:

    start/            the start checkpoint made by `make init` (Megatron --load until the run saves)
      latest_checkpointed_iteration.txt, iter_NNNNNNN/{symlinked shards, common.pt}, init.json
    checkpoints/      what this run saves (--save; --load once it holds a tracker)
    data_cache/       Megatron's dataset index cache (--data-cache-path)
    train_args.txt    the resolved Megatron arguments, one per line (what the last job ran)
    train_env.txt     the job's environment changes for that Megatron (`export NAME VALUE` / `unset NAME`)
    train_args.json   the same with the derivation: tokens, iterations, start mechanism and why
    train-<jobid>.out / .err   Megatron's output of each job

The midtraining start. Megatron resumes the iteration and consumed-sample counters
stored in a checkpoint; resuming the pretraining checkpoint as is sizes the datasets for the whole
pretraining length and skips the samples "already consumed", so about a third of the midtraining
mixture is never seen. `init_run` builds `start/iter_<N>/` whose shard files are symlinks to the
source checkpoint's and whose legacy `common.pt` (preferred by every Megatron version) is the source
common state with iteration, consumed samples and scheduler step set to 0; weights, Adam moments and
the optimizer step are kept. Trained with `--override-opt_param-scheduler` and `--train-iters` = the
midtraining iterations, the run starts at step 0, builds the data index for exactly its own samples
and sees the mixture as its weights say. The source is never modified.

Why `start/` and not `checkpoints/`: Megatron refuses a tracker of 0, so the start folder keeps the
source's iteration in its name (iter_0432581). In `checkpoints/` that name could collide with one
this run saves (a second curriculum stage starting at 6900 with a save interval of 300 saves
iter_0006900), and saving into a folder of symlinks would write through them into the source run.
Kept apart, `checkpoints/` only ever holds this run's own saves.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json, write_text
from pipeline.errors import fail
from pipeline.megatron_ckpt import (COMMON_PT, DCP_METADATA, IN_SHARD_FILE, LAYOUT_LEGACY, TRACKER, Checkpoint,
                                    check_complete, common_state_layout, common_state_summary, iteration_dir_name,
                                    load_common_state, read_tracker, resolve_checkpoint, rewrite_common_state)
from pipeline.provenance import provenance

INIT_RECORD = "init.json"
MECHANISM = "reset-counters"
SCRATCH = "scratch"          # BASE_CKPT=scratch: random weights (a base trained by the pipeline itself)
SCRATCH_WHY = ("make init BASE_CKPT=scratch: no start checkpoint; the run begins from random weights "
               "(Megatron's initialisation with the run's --seed) and resumes from its own checkpoints once saved.")
MECHANISM_WHY = (
    "Megatron resumes the iteration and consumed-sample counters stored in a checkpoint. Resuming the "
    "pretraining checkpoint as is would size the datasets for the whole pretraining length and skip the "
    "samples 'already consumed' (in a simulation, about a third of the midtraining tokens never seen). "
    "make init links the source shards into <run>/start/ with a common.pt whose iteration, consumed samples "
    "and scheduler step are 0 (weights and Adam moments kept); with --override-opt_param-scheduler this run's "
    "LR schedule applies from its step 0, and --train-iters is the midtraining iteration count, so every "
    "token of the mixture is drawn as its weights say (once at ratio <= 1).")
MECHANISM_ALTERNATIVE = (
    "Newer Megatron-LM has --override-ckpt-iteration 0 (loads the original checkpoint with the counters at 0; "
    "bit-identical in a test with the real engine); the LLM-jp Megatron-LM v4 (core ~0.10) does not have it.")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def start(self) -> Path:
        return self.root / "start"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data_cache(self) -> Path:
        return self.root / "data_cache"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def args_txt(self) -> Path:
        return self.root / "train_args.txt"

    @property
    def env_txt(self) -> Path:
        return self.root / "train_env.txt"

    @property
    def args_json(self) -> Path:
        return self.root / "train_args.json"

    @property
    def data_args_file(self) -> Path:
        return self.root / "data_args.txt"

    @property
    def init_record(self) -> Path:
        return self.start / INIT_RECORD

    def has_own_checkpoint(self) -> bool:
        return (self.checkpoints / TRACKER).is_file()

    def saved_iteration(self) -> int | str | None:
        return read_tracker(self.checkpoints) if self.has_own_checkpoint() else None

    def is_initialised(self) -> bool:
        if not self.init_record.is_file():
            return False
        return (self.start / TRACKER).is_file() or self.starts_from_scratch()

    def starts_from_scratch(self) -> bool:
        return (self.init_info() or {}).get("mechanism") == SCRATCH

    def init_info(self) -> dict | None:
        if not self.init_record.is_file():
            return None
        try:
            return json.loads(self.init_record.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            fail(f"{self.init_record}:{exc.lineno}: not valid JSON ({exc.msg}); re-run make init FORCE=1")

    def load_dir(self) -> Path | None:
        """Where Megatron loads from now: the run's own checkpoints once it saved, else the start (None for a
        run from random weights)."""
        if self.has_own_checkpoint():
            return self.checkpoints
        return None if self.starts_from_scratch() else self.start


def reset_counters(state: dict) -> list[str]:
    """Set the counters that decide where training and data resume to 0; returns what changed."""
    changes = []

    def setattr_if(obj: Any, name: str, value: Any) -> None:
        if obj is not None and hasattr(obj, name) and getattr(obj, name) != value:
            changes.append(f"args.{name}: {getattr(obj, name)!r} -> {value!r}")
            setattr(obj, name, value)

    if state.get("iteration") != 0:
        changes.append(f"iteration: {state.get('iteration')!r} -> 0")
    state["iteration"] = 0
    args = state.get("args")
    for name in ("iteration", "consumed_train_samples", "consumed_valid_samples", "skipped_train_samples"):
        setattr_if(args, name, 0)
    scheduler = state.get("opt_param_scheduler")
    if isinstance(scheduler, dict) and scheduler.get("num_steps", 0) != 0:
        changes.append(f"opt_param_scheduler.num_steps: {scheduler['num_steps']!r} -> 0")
        scheduler["num_steps"] = 0
    return changes


def _is_run_dir(path: Path) -> bool:
    return (path / "checkpoints").is_dir() and not (path / TRACKER).is_file() and not path.name.startswith("iter_")


def _run_train_iters(run: Path) -> int | None:
    record = RunLayout(run).args_json
    if not record.is_file():
        return None
    try:
        return int(json.loads(record.read_text(encoding="utf-8"))["train_iters"])
    except (ValueError, KeyError, TypeError):
        return None


def resolve_base(base: str | os.PathLike, iteration: int | None, *, from_run: bool = False) -> Checkpoint:
    """The source checkpoint: a checkpoints folder, an iter_NNNNNNN folder, or a run folder (its final save)."""
    base = Path(base)
    if not base.exists():
        fail(f"BASE_CKPT={base}: not found")
    if _is_run_dir(base):
        run = base
        ckpt = resolve_checkpoint(run / "checkpoints", iteration)
        final = _run_train_iters(run)
        if iteration is None and final is not None and ckpt.iteration != final:
            fail(f"BASE_CKPT={run}: its latest checkpoint is iteration {ckpt.iteration}, but the run trains "
                 f"{final} iterations (not finished?). Pass BASE_ITER={ckpt.iteration} to start from it anyway")
        return ckpt
    if from_run and not (base / TRACKER).is_file() and not base.name.startswith("iter_"):
        fail(f"BASE_CKPT={base}: expected the earlier stage's run folder (with checkpoints/) or a checkpoints "
             f"folder; has it trained yet?")
    return resolve_checkpoint(base, iteration)


def _link_shards(source: Path, target: Path, rewritten: set[str]) -> list[str]:
    """Symlink every file of `source` (recursively) into `target`, except those `make init` rewrites."""
    linked = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_dir():
            continue
        if rel.as_posix() in rewritten:
            continue
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(path), dest)
        linked.append(rel.as_posix())
    return linked


def init_scratch(run: str | os.PathLike, *, force: bool = False) -> tuple[str, dict]:
    """Mark the run as starting from random weights: start/init.json only (no checkpoint, no tracker)."""
    layout = RunLayout(Path(run))
    existing = layout.init_info()
    if existing is not None and existing.get("mechanism") == SCRATCH:
        return "unchanged", existing
    if layout.start.exists() and not force:
        fail(f"{layout.start}: already initialised from a checkpoint; FORCE=1 replaces it with a start from "
             f"random weights")
    if layout.has_own_checkpoint() and not force:
        fail(f"{layout.checkpoints}: the run already saved checkpoints (iteration {layout.saved_iteration()}) and "
             f"resumes from them; FORCE=1 re-initialises anyway")
    record = provenance(mechanism=SCRATCH, why=SCRATCH_WHY, start_dir=str(layout.start), source=None)
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.root / f".start.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_json(tmp / INIT_RECORD, record)
    status = "replaced" if layout.start.exists() else "initialised"
    if layout.start.exists():
        old = layout.root / f".start.old.{os.getpid()}"
        os.rename(layout.start, old)
        shutil.rmtree(old)
    os.rename(tmp, layout.start)
    return status, record


def init_run(run: str | os.PathLike, base: str | os.PathLike, iteration: int | None = None, *,
             force: bool = False, from_run: bool = False) -> tuple[str, dict]:
    """Build `<run>/start/` from the checkpoint `base` (see the module doc).

    Returns (status, record) where status is 'initialised', 'replaced' or 'unchanged' (the run was
    already initialised from the same source checkpoint: nothing is written).
    """
    layout = RunLayout(Path(run))
    ckpt = resolve_base(base, iteration, from_run=from_run)
    if ckpt.format != "torch_dist":
        fail(f"{ckpt.iter_dir}: a {ckpt.format}-format checkpoint; make init links torch_dist shards and rewrites "
             f"their common.pt (the torch format keeps the counters inside every rank's file). Convert it to "
             f"torch_dist first, or start with --override-ckpt-iteration 0 on a Megatron that has it")
    if ckpt.iteration is None:
        fail(f"{ckpt.iter_dir}: a 'release' checkpoint has no optimizer state to continue; Megatron loads it "
             f"with --finetune")
    source = Path(os.path.realpath(ckpt.iter_dir))
    existing = layout.init_info()
    if existing is not None and layout.is_initialised():
        same = (existing.get("source") or {}).get("iter_dir") == str(source) and \
            (existing.get("source") or {}).get("iteration") == ckpt.iteration
        start_iter = layout.start / iteration_dir_name(ckpt.iteration)
        if same and any((start_iter / name).is_file() for name in (COMMON_PT, IN_SHARD_FILE)):
            return "unchanged", existing
        if not force:
            fail(f"{layout.start}: already initialised from {(existing.get('source') or {}).get('iter_dir')} "
                 f"(iteration {(existing.get('source') or {}).get('iteration')}); FORCE=1 replaces it")
    elif layout.start.exists() and not force:
        fail(f"{layout.start}: exists but is not a complete start (no {INIT_RECORD}); FORCE=1 rebuilds it")
    if layout.has_own_checkpoint() and not force:
        fail(f"{layout.checkpoints}: the run already saved checkpoints (iteration {layout.saved_iteration()}) and "
             f"resumes from them, not from a start; FORCE=1 re-initialises anyway (move checkpoints/ away to "
             f"really restart)")

    check_complete(ckpt)
    layout_kind = common_state_layout(ckpt.iter_dir)
    state = load_common_state(ckpt.iter_dir)
    before = common_state_summary(state)
    changes = reset_counters(state)
    after = common_state_summary(state)

    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.root / f".start.tmp.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        iter_dir = tmp / iteration_dir_name(ckpt.iteration)
        iter_dir.mkdir(parents=True)
        rewritten = {COMMON_PT} if layout_kind == LAYOUT_LEGACY else {DCP_METADATA, IN_SHARD_FILE}
        linked = _link_shards(source, iter_dir, rewritten)
        _, written = rewrite_common_state(source, iter_dir, state)
        write_text(tmp / TRACKER, str(ckpt.iteration))  # as Megatron writes it
        record = provenance(
            mechanism=MECHANISM, why=MECHANISM_WHY, alternative=MECHANISM_ALTERNATIVE,
            source={"given": str(base), "iter_dir": str(source), "iteration": ckpt.iteration,
                    "format": ckpt.format, "size_bytes": ckpt.size_bytes()},
            start_dir=str(layout.start), iter_dir_name=iteration_dir_name(ckpt.iteration),
            linked_files=linked, written_files=written, common_state_layout=layout_kind, changes=changes,
            common_state_before=before, common_state_after=after)
        write_json(tmp / INIT_RECORD, record)
        status = "initialised"
        if layout.start.exists():
            old = layout.root / f".start.old.{os.getpid()}"
            os.rename(layout.start, old)
            shutil.rmtree(old)  # symlinks are removed, never followed
            status = "replaced"
        os.rename(tmp, layout.start)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return status, record
