"""Megatron-LM checkpoints on the CPU without Megatron: find them, read and rewrite their common state.

A checkpoints folder holds `latest_checkpointed_iteration.txt` (the tracker: an iteration number or
`release`) and `iter_NNNNNNN/` folders. In the `torch_dist` format an iteration folder has
`.metadata`, `metadata.json`, `__R_N.distcp` shards and, in Megatron core <= ~0.16, `common.pt`
(the common state: args, iteration, scheduler, ...); newer Megatron keeps the common state inside
the shards as a byte entry `common_state/shard_0_1` instead, and still prefers a `common.pt` when
one is present. Both layouts are read and rewritten here (`rewrite_common_state` keeps the source's).
In the `torch` format an iteration folder has `mp_rank_TT[_PPP]/model_optim_rng.pt`.

The pickles reference Megatron classes (enums, config objects). `StandInUnpickler` turns every
class it cannot import into a stand-in that remembers its module, name and state, and
`save_common_state` writes stand-ins back as the original classes, so a rewritten `common.pt`
loads in a real Megatron exactly like the original.
"""
from __future__ import annotations

import copyreg
import io
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.errors import fail

TRACKER = "latest_checkpointed_iteration.txt"
COMMON_PT = "common.pt"
ITER_DIR = re.compile(r"^iter_(\d{7})$")
# modules a checkpoint may reference that we load for real; everything else becomes a stand-in
REAL_MODULE_PREFIXES = ("builtins", "collections", "argparse", "copyreg", "torch", "numpy", "_codecs",
                        "datetime", "enum", "types", "functools", "pathlib", "decimal", "fractions", "io", "_io")


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def read_tracker(ckpt_dir: str | os.PathLike) -> int | str:
    """The tracker's content: an iteration number, or 'release'."""
    path = Path(ckpt_dir) / TRACKER
    if not path.is_file():
        fail(f"{path}: missing; without it Megatron silently starts from random weights. "
             f"Pass an iter_NNNNNNN folder or write the tracker")
    text = path.read_text().strip()
    if text == "release":
        return text
    if not text.isdigit():
        fail(f"{path}:1: expected an iteration number or 'release', got {text!r}")
    return int(text)


def available_iterations(ckpt_dir: Path) -> list[int]:
    return sorted(int(m[1]) for p in ckpt_dir.iterdir() if p.is_dir() and (m := ITER_DIR.match(p.name)))


@dataclass
class Checkpoint:
    root: Path | None        # the checkpoints folder (None when an iteration folder was given alone)
    iter_dir: Path
    iteration: int | None    # from the folder name; None for `release`
    format: str              # torch_dist | torch

    def shard_files(self) -> list[Path]:
        return sorted(p for p in self.iter_dir.rglob("*") if p.is_file())

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.shard_files())


def detect_format(iter_dir: Path) -> str:
    if (iter_dir / ".metadata").is_file():   # its shards are checked against it (completeness_problems)
        return "torch_dist"
    if any(iter_dir.glob("mp_rank_*/model_optim_rng.pt")):
        return "torch"
    fail(f"{iter_dir}: neither a torch_dist checkpoint (.metadata + *.distcp) nor a torch one "
         f"(mp_rank_*/model_optim_rng.pt)")


def resolve_checkpoint(path: str | os.PathLike, iteration: int | None = None) -> Checkpoint:
    """A checkpoints folder (tracker, or `iteration`) or an `iter_NNNNNNN` / `release` folder."""
    path = Path(path)
    if not path.is_dir():
        fail(f"{path}: checkpoint folder not found")
    match = ITER_DIR.match(path.name)
    if match or path.name == "release":
        if iteration is not None and match and int(match[1]) != iteration:
            fail(f"{path}: is iteration {int(match[1])}, but iteration {iteration} was asked for")
        return Checkpoint(path.parent if (path.parent / TRACKER).is_file() else None, path,
                          int(match[1]) if match else None, detect_format(path))
    if iteration is None:
        tracked = read_tracker(path)
        if tracked == "release":
            iter_dir = path / "release"
            iteration_found = None
        else:
            iter_dir, iteration_found = path / iteration_dir_name(tracked), tracked
    else:
        iter_dir, iteration_found = path / iteration_dir_name(iteration), iteration
    if not iter_dir.is_dir():
        have = ", ".join(map(str, available_iterations(path))) or "none"
        fail(f"{iter_dir}: iteration folder missing (iterations present in {path}: {have})")
    return Checkpoint(path, iter_dir, iteration_found, detect_format(iter_dir))


# --- pickles with classes we do not have ----------------------------------------------------------

class StandIn:
    """An instance of a class that could not be imported; pickles back as that class."""

    _sm_module = "?"
    _sm_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        obj = object.__new__(cls)
        object.__setattr__(obj, "_sm_args", args)
        object.__setattr__(obj, "_sm_called", False)
        object.__setattr__(obj, "_sm_state", None)
        object.__setattr__(obj, "_sm_list", [])
        object.__setattr__(obj, "_sm_dict", {})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # reached for REDUCE (cls(*args), e.g. enums); NEWOBJ only calls __new__
        object.__setattr__(self, "_sm_called", True)

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_sm_state", state)
        attrs = state[1] if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict) else None
        if isinstance(state, dict):
            attrs = state
        if attrs:
            for key, value in attrs.items():
                if isinstance(key, str) and not key.startswith("_sm_"):
                    object.__setattr__(self, key, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._sm_dict[key] = value

    def __getitem__(self, key: Any) -> Any:
        return self._sm_dict[key]

    def append(self, item: Any) -> None:
        self._sm_list.append(item)

    def extend(self, items: Any) -> None:
        self._sm_list.extend(items)

    def __reduce_ex__(self, protocol: int):
        cls = type(self)
        list_items = iter(self._sm_list) if self._sm_list else None
        dict_items = iter(self._sm_dict.items()) if self._sm_dict else None
        if self._sm_called:
            return (cls, self._sm_args, self._sm_state, list_items, dict_items)
        return (copyreg.__newobj__, (cls, *self._sm_args), self._sm_state, list_items, dict_items)

    @property
    def value(self) -> Any:
        """For enums: the value they were built from."""
        return self._sm_args[0] if len(self._sm_args) == 1 else self._sm_args

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self._sm_args))
        return f"{self._sm_module}.{self._sm_name}({inner})"


class StandInFunction:
    """A module-level function or other global that could not be imported (rare in common state)."""

    def __init__(self, module: str, name: str) -> None:
        self._sm_module, self._sm_name = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _stand_in_class(self._sm_module, self._sm_name)(*args)

    def __repr__(self) -> str:
        return f"<{self._sm_module}.{self._sm_name}>"


_STAND_IN_CLASSES: dict[tuple[str, str], type] = {}


def _stand_in_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STAND_IN_CLASSES:
        _STAND_IN_CLASSES[key] = type(name.split(".")[-1], (StandIn,), {"_sm_module": module, "_sm_name": name})
    return _STAND_IN_CLASSES[key]


def _is_real(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in REAL_MODULE_PREFIXES)


class StandInUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if _is_real(module):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                pass
        return _stand_in_class(module, name)


class StandInPickler(pickle._Pickler):  # the pure-Python pickler lets us write globals by name
    def save_global(self, obj: Any, name: str | None = None) -> None:
        if isinstance(obj, type) and issubclass(obj, StandIn) and obj is not StandIn:
            module, qualname = obj._sm_module, obj._sm_name
            if self.proto >= 4:
                self.save(module)
                self.save(qualname)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("utf-8"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


# torch.load / torch.save take a module-like object with Unpickler / Pickler classes
stand_in_pickle = ModuleType("stand_in_pickle")
stand_in_pickle.Unpickler = StandInUnpickler
stand_in_pickle.Pickler = StandInPickler
stand_in_pickle.load = lambda f, **kw: StandInUnpickler(f, **kw).load()
stand_in_pickle.__name__ = "pickle"


def torch_load(source: str | os.PathLike | io.BytesIO) -> Any:
    import torch
    return torch.load(source, map_location="cpu", weights_only=False, pickle_module=stand_in_pickle)


def _unpickle_bytes(raw: bytes) -> Any:
    try:
        return torch_load(io.BytesIO(raw))  # DCP writes non-tensor values with torch.save
    except (pickle.UnpicklingError, RuntimeError):
        return StandInUnpickler(io.BytesIO(raw)).load()  # a plain pickle stored as raw bytes


# --- the two layouts of the common state ----------------------------------------------------------
# legacy:   iter_dir/common.pt, a torch.save of the dict (Megatron core <= ~0.16; still preferred when present)
# in-shard: a byte entry `common_state/shard_0_1` (a ShardedObject key: <name>/shard_<offset>_<count>) of the
#           DCP checkpoint, whose bytes are torch.save(BytesIO(torch.save([state]))): Megatron serialises the
#           object's data, DCP serialises that buffer again (upstream Megatron, core 0.20)
LAYOUT_LEGACY = "common.pt"
LAYOUT_IN_SHARD = "in-shard"
IN_SHARD_NAME = "common_state"
IN_SHARD_FILE = "common_state.distcp"   # where `make init` writes its rewritten entry (shards stay symlinked)
DCP_METADATA = ".metadata"


def read_dcp_metadata(iter_dir: Path) -> Any:
    """The DCP `.metadata` (torch's Metadata object) of a torch_dist iteration folder."""
    path = iter_dir / DCP_METADATA
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        fail(f"{path}: cannot read the checkpoint's metadata: {exc}")


def _in_shard_key(metadata: Any) -> Any:
    """The MetadataIndex of the common-state byte entry, or None (a legacy or tensor-only checkpoint)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    names = [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)
             and (k == IN_SHARD_NAME or k.startswith(IN_SHARD_NAME + "/"))]
    if not names:
        return None
    if len(names) > 1:
        fail(f"several common-state entries in one checkpoint: {', '.join(sorted(names))}")
    index = [i for i in metadata.storage_data if i.fqn == names[0]]
    if len(index) != 1:
        fail(f"common-state entry {names[0]}: stored {len(index)} times in the checkpoint's metadata")
    return index[0]


def _read_entry(iter_dir: Path, storage: Any) -> bytes:
    if getattr(storage, "transform_descriptors", None):
        fail(f"{iter_dir / storage.relative_path}: the common state is stored with transforms "
             f"{storage.transform_descriptors} (compressed?), which this reader does not undo")
    path = iter_dir / storage.relative_path
    with open(path, "rb") as handle:
        handle.seek(storage.offset)
        raw = handle.read(storage.length)
    if len(raw) != storage.length:
        fail(f"{path}: truncated: the common state needs bytes {storage.offset}..{storage.offset + storage.length}")
    return raw


@dataclass
class InShardState:
    """The common state as found inside the shards, with what is needed to write it back the same way."""
    state: dict
    container: Any          # what the innermost torch.save held: [state] (or state itself)
    wrappers: int           # how many BytesIO layers surround it


def _unwrap(raw: bytes, where: Path) -> InShardState:
    value, wrappers = _unpickle_bytes(raw), 0
    while isinstance(value, io.BytesIO):
        value, wrappers = _unpickle_bytes(value.getvalue()), wrappers + 1
    container = value
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        fail(f"{where}: the common_state entry holds a {type(value).__name__}, expected a dict")
    return InShardState(value, container, wrappers)


def read_in_shard_state(iter_dir: Path) -> InShardState | None:
    metadata = read_dcp_metadata(iter_dir)
    key = _in_shard_key(metadata)
    if key is None:
        return None
    return _unwrap(_read_entry(iter_dir, metadata.storage_data[key]), iter_dir)


def common_state_layout(iter_dir: str | os.PathLike) -> str:
    """legacy (common.pt) or in-shard; the legacy file wins when both exist, as in Megatron."""
    iter_dir = Path(iter_dir)
    if (iter_dir / COMMON_PT).is_file():
        return LAYOUT_LEGACY
    if (iter_dir / DCP_METADATA).is_file() and _in_shard_key(read_dcp_metadata(iter_dir)) is not None:
        return LAYOUT_IN_SHARD
    fail(f"{iter_dir}: no {COMMON_PT} and no {IN_SHARD_NAME} entry in its {DCP_METADATA}: not a Megatron "
         f"torch_dist checkpoint, or an incomplete one")


def load_common_state(iter_dir: str | os.PathLike) -> dict:
    """The common state (args, iteration, opt_param_scheduler, ...) from common.pt or the shards."""
    iter_dir = Path(iter_dir)
    layout = common_state_layout(iter_dir)
    where = iter_dir / COMMON_PT if layout == LAYOUT_LEGACY else iter_dir
    try:
        state = torch_load(where) if layout == LAYOUT_LEGACY else read_in_shard_state(iter_dir).state
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError) as exc:
        fail(f"{where}: cannot read the common state: {exc}")
    if not isinstance(state, dict):
        fail(f"{where}: common state is a {type(state).__name__}, expected a dict")
    return state


def load_torch_format_state(ckpt: Checkpoint) -> dict:
    """The non-tensor state of rank 0's model_optim_rng.pt; tensors stay on disk (mmap)."""
    import torch

    files = sorted(ckpt.iter_dir.glob("mp_rank_*/model_optim_rng.pt"))
    if not files:
        fail(f"{ckpt.iter_dir}: no mp_rank_*/model_optim_rng.pt")
    try:
        state = torch.load(files[0], map_location="cpu", weights_only=False, pickle_module=stand_in_pickle,
                           mmap=True)
    except Exception as exc:  # noqa: BLE001  (any unpickling problem is the file's)
        fail(f"{files[0]}: cannot read: {exc}")
    if not isinstance(state, dict):
        fail(f"{files[0]}: expected a dict, got {type(state).__name__}")
    return {k: v for k, v in state.items() if k not in ("model", "model0", "model1")}


def _torch_save_bytes(obj: Any, *, stand_ins: bool) -> bytes:
    import torch
    buffer = io.BytesIO()
    if stand_ins:
        torch.save(obj, buffer, pickle_module=stand_in_pickle)
    else:
        torch.save(obj, buffer)
    return buffer.getvalue()


def save_common_state(state: dict, path: str | os.PathLike) -> None:
    """Write `state` as a legacy common.pt that real Megatron loads (stand-ins as their classes)."""
    from pipeline.atomic import atomic_output
    with atomic_output(path, "wb") as handle:
        handle.write(_torch_save_bytes(state, stand_ins=True))


def write_in_shard_state(source_dir: Path, target_dir: Path, found: InShardState, state: dict) -> list[str]:
    """Give `target_dir` (holding links to `source_dir`'s files) the common state `state` in the in-shard
    layout: a new entry file IN_SHARD_FILE and a `.metadata` that points the entry there; every tensor
    entry still points at the source's shard files. Returns the names written."""
    import copy
    import dataclasses

    from pipeline.atomic import atomic_output
    container = [state] if isinstance(found.container, list) else state
    raw = _torch_save_bytes(container, stand_ins=True)
    for _ in range(found.wrappers):
        raw = _torch_save_bytes(io.BytesIO(raw), stand_ins=False)
    metadata = copy.copy(read_dcp_metadata(source_dir))
    key = _in_shard_key(metadata)
    if key is None:
        fail(f"{source_dir}: no {IN_SHARD_NAME} entry to rewrite")
    metadata.storage_data = dict(metadata.storage_data)
    metadata.storage_data[key] = dataclasses.replace(metadata.storage_data[key], relative_path=IN_SHARD_FILE,
                                                     offset=0, length=len(raw))
    if getattr(metadata, "storage_meta", None) is not None:
        metadata.storage_meta = dataclasses.replace(metadata.storage_meta, checkpoint_id=str(target_dir))
    with atomic_output(target_dir / IN_SHARD_FILE, "wb") as handle:
        handle.write(raw)
    link = target_dir / DCP_METADATA
    if link.is_symlink():
        link.unlink()
    with atomic_output(link, "wb") as handle:
        pickle.dump(metadata, handle)
    return [IN_SHARD_FILE, DCP_METADATA]


def rewrite_common_state(source_dir: str | os.PathLike, target_dir: str | os.PathLike,
                         state: dict) -> tuple[str, list[str]]:
    """Write `state` into `target_dir` in the layout `source_dir` uses; returns (layout, files written)."""
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    layout = common_state_layout(source_dir)
    if layout == LAYOUT_LEGACY:
        target = target_dir / COMMON_PT
        if target.is_symlink():
            target.unlink()
        save_common_state(state, target)
        return layout, [COMMON_PT]
    return layout, write_in_shard_state(source_dir, target_dir, read_in_shard_state(source_dir), state)


# --- completeness -------------------------------------------------------------------------------

def completeness_problems(iter_dir: str | os.PathLike, limit: int = 5) -> list[str]:
    """What makes a torch_dist iteration folder unloadable: a shard named in `.metadata` missing (or a
    dangling link), or shorter than the bytes the metadata says it holds; empty when complete."""
    iter_dir = Path(iter_dir)
    if not (iter_dir / DCP_METADATA).exists():
        if any(iter_dir.glob("mp_rank_*/model_optim_rng.pt")):
            return []   # the torch format: one self-contained file per rank
        return [f"{iter_dir / DCP_METADATA}: missing"]
    metadata = read_dcp_metadata(iter_dir)
    needed: dict[str, int] = {}
    for storage in metadata.storage_data.values():
        end = storage.offset + storage.length
        needed[storage.relative_path] = max(needed.get(storage.relative_path, 0), end)
    problems = []
    for name, end in sorted(needed.items()):
        path = iter_dir / name
        if not path.exists():
            target = f" (a link to {os.readlink(path)}, which is gone)" if path.is_symlink() else ""
            problems.append(f"{path}: missing{target}; {DCP_METADATA} names it")
        elif path.stat().st_size < end:
            problems.append(f"{path}: truncated: {path.stat().st_size:,} bytes, {DCP_METADATA} needs {end:,}")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems


def check_complete(ckpt: "Checkpoint") -> None:
    """Fail naming the files when a torch_dist checkpoint cannot be loaded whole."""
    if ckpt.format != "torch_dist":
        return
    problems = completeness_problems(ckpt.iter_dir)
    if problems:
        fail(f"{ckpt.iter_dir}: incomplete checkpoint:\n  " + "\n  ".join(problems))


def common_state_summary(state: dict) -> dict:
    """The fields people ask about first (the top-level `iteration` wins: `args.iteration` may be 0)."""
    args = state.get("args")
    scheduler = state.get("opt_param_scheduler") or {}
    optimizer = state.get("optimizer")
    common_step = _find_key(optimizer, "common_step")
    if hasattr(common_step, "item") and getattr(common_step, "ndim", 1) == 0:
        common_step = common_step.item()   # torch's Adam keeps its step as a 0-d tensor
    if isinstance(common_step, float) and common_step.is_integer():
        common_step = int(common_step)
    return {
        "iteration": state.get("iteration"),  # args.iteration may be 0: the top-level key is the truth
        "checkpoint_version": state.get("checkpoint_version"),
        "consumed_train_samples": getattr(args, "consumed_train_samples", None),
        "consumed_valid_samples": getattr(args, "consumed_valid_samples", None),
        "tensor_model_parallel_size": getattr(args, "tensor_model_parallel_size", None),
        "pipeline_model_parallel_size": getattr(args, "pipeline_model_parallel_size", None),
        "data_parallel_size": getattr(args, "data_parallel_size", None),
        "world_size": getattr(args, "world_size", None),
        "scheduler_num_steps": scheduler.get("num_steps") if isinstance(scheduler, dict) else None,
        "optimizer_common_step": common_step,
        "floating_point_operations_so_far": state.get("num_floating_point_operations_so_far"),
    }


def _find_key(tree: Any, key: str, depth: int = 6) -> Any:
    """First value under `key` in nested dicts/lists (the optimizer state nests per chained optimizer)."""
    if depth < 0:
        return None
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        children = tree.values()
    elif isinstance(tree, (list, tuple)):
        children = tree
    else:
        return None
    for child in children:
        found = _find_key(child, key, depth - 1)
        if found is not None:
            return found
    return None
