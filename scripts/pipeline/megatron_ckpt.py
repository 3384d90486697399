"""Megatron-LM checkpoints on the CPU without Megatron: find them, read and rewrite their common state.

A checkpoints folder holds `latest_checkpointed_iteration.txt` (the tracker: an iteration number or
`release`) and `iter_NNNNNNN/` folders. In the `torch_dist` format an iteration folder has
`.metadata`, `metadata.json`, `__R_N.distcp` shards and, in Megatron core <= ~0.16, `common.pt`
(the common state: args, iteration, scheduler, ...); newer Megatron keeps the common state inside
the shards as a pickled byte object `common_state` instead, and still prefers a `common.pt` when
one is present. In the `torch` format it has `mp_rank_TT[_PPP]/model_optim_rng.pt`.

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
    if (iter_dir / ".metadata").is_file() and any(iter_dir.glob("*.distcp")):
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


def _read_dcp_common_state(iter_dir: Path) -> dict | None:
    """The common state stored inside the shards of a newer torch_dist checkpoint, if any.

    It is either one byte object `common_state` or, when DCP flattened the dict, one byte object per
    entry (`common_state.args`, `common_state.iteration`, ...); both are reassembled here.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    reader = FileSystemReader(str(iter_dir))
    metadata = reader.read_metadata()
    paths = metadata.planner_data or {}
    keys = [k for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, BytesStorageMetadata) and tuple(paths.get(k, k.split(".")))[0] == "common_state"]
    if not keys:
        return None
    captured: dict[str, bytes] = {}

    class RawBytesPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:  # keep the bytes; unpickle with stand-ins
            captured[read_item.dest_index.fqn] = value.getvalue()

    dcp_load({k: io.BytesIO() for k in keys}, storage_reader=reader,
             planner=RawBytesPlanner(flatten_state_dict=False), no_dist=True)
    state: dict = {}
    for key in keys:
        path = tuple(paths.get(key, key.split(".")))
        value = _unpickle_bytes(captured[key])
        if isinstance(value, io.BytesIO):  # saved as a BytesIO of an already serialized object
            value = _unpickle_bytes(value.getvalue())
        if len(path) == 1:
            if not isinstance(value, dict):
                fail(f"{iter_dir}: common_state object is a {type(value).__name__}, expected a dict")
            state.update(value)
            continue
        node = state
        for part in path[1:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return state


def load_common_state(iter_dir: str | os.PathLike) -> dict:
    """The common state (args, iteration, opt_param_scheduler, ...) from common.pt or the shards."""
    iter_dir = Path(iter_dir)
    common = iter_dir / COMMON_PT
    try:
        if common.is_file():
            state = torch_load(common)
        else:
            state = _read_dcp_common_state(iter_dir) if (iter_dir / ".metadata").is_file() else None
            if state is None:
                fail(f"{iter_dir}: no {COMMON_PT} and no common_state object in the shards")
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError) as exc:
        fail(f"{common if common.is_file() else iter_dir}: cannot read the common state: {exc}")
    if not isinstance(state, dict):
        fail(f"{iter_dir}: common state is a {type(state).__name__}, expected a dict")
    return state


def save_common_state(state: dict, path: str | os.PathLike) -> None:
    """Write `state` as a legacy common.pt that real Megatron loads (stand-ins as their classes)."""
    import torch

    from pipeline.atomic import atomic_output
    with atomic_output(path, "wb") as handle:
        torch.save(state, handle, pickle_module=stand_in_pickle)


def common_state_summary(state: dict) -> dict:
    """The fields people ask about first, with the pitfalls of FACTS section 4 applied."""
    args = state.get("args")
    scheduler = state.get("opt_param_scheduler") or {}
    optimizer = state.get("optimizer")
    common_step = _find_key(optimizer, "common_step")
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
