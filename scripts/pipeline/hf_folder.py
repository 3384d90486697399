"""A Hugging Face model folder on disk: its safetensors shards and index, written and read, and its
tokenizer files. Shared by the native converter (which writes one) and the soup (which reads the
ingredients and the result).

No torch import here: the soup's checks read only safetensors headers, cheap enough to run before a
job is submitted. The writer takes torch tensors from its caller.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.errors import fail
from pipeline.hf_tokenizer import BUILD_RECORD

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
RECORD_FILE = "megatron_conversion.json"   # provenance of a conversion (either converter), inside the folder
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# safetensors dtype codes -> torch dtype names
ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
             "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_ST_CODES = {name: code for code, name in ST_DTYPES.items()}
# files of a tokenizer folder that are not tokenizer files (a model folder given as --tokenizer)
# (BUILD_RECORD: make hf-tokenizer's own record; a converted folder records its check in RECORD_FILE)
NOT_TOKENIZER_FILES = ("config.json", "generation_config.json", INDEX_FILE, RECORD_FILE, BUILD_RECORD)
NOT_TOKENIZER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


# ---------------------------------------------------------------------------------------------
# Reading: the weight files of a folder and the tensor table of a shard (headers only)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                fail(f"{path}: truncated safetensors file")
            (length,) = struct.unpack("<Q", raw)
            if length > 100 * 2**20:
                fail(f"{path}: not a safetensors file (header length {length})")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        fail(f"{path}: cannot read the safetensors header: {exc}")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = TensorInfo(path.name, ST_DTYPES.get(info["dtype"], info["dtype"]), tuple(info["shape"]))
    return tensors


def weight_files(folder: Path, role: str) -> tuple[dict[str, str] | None, list[str]]:
    """(the index's weight map, or None for a single model.safetensors; the shard file names), every
    shard present; fails naming the file. `role` says what the folder is in the messages."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            fail(f"{index}: not a safetensors index: {exc}")
        files = sorted(set(weight_map.values()))
    elif (folder / SINGLE_FILE).is_file():
        weight_map, files = None, [SINGLE_FILE]
    else:
        fail(f"{folder}: {role} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})")
    for name in files:
        if not (folder / name).is_file():
            fail(f"{folder / name}: {role}'s weight shard is missing (listed in {INDEX_FILE})")
    return weight_map, files


def tokenizer_files(folder: Path) -> list[Path]:
    """The files of a tokenizer folder to copy beside the model (not weights or model configs)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name not in NOT_TOKENIZER_FILES and not p.name.endswith(NOT_TOKENIZER_SUFFIXES))


# ---------------------------------------------------------------------------------------------
# Writing: sharded safetensors, written as the tensors arrive (layout planned up front)
# ---------------------------------------------------------------------------------------------
def _code(dtype: Any) -> str:
    return _ST_CODES[str(dtype).removeprefix("torch.")]


@dataclass
class _Shard:
    filename: str
    names: list[str]
    header: bytes


def _safetensors_header(entries: list[tuple[str, tuple[int, ...]]], dtype: Any) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _code(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def plan_shards(plan: list[tuple[str, tuple[int, ...]]], dtype: Any, max_shard_bytes: int) -> list[_Shard]:
    """Consecutive tensors of `plan` grouped into shards of at most max_shard_bytes (a bigger tensor alone)."""
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in plan:
        nbytes = math.prod(shape) * dtype.itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    count = len(groups)
    return [_Shard(f"model-{i + 1:05d}-of-{count:05d}.safetensors", [n for n, _ in group],
                   _safetensors_header(group, dtype)) for i, group in enumerate(groups)]


class ShardedSafetensorsWriter:
    """Writes the tensors of `plan`, in its order, into sharded safetensors files plus the index.

    `dtype` is the torch dtype written; tensors are cast to it."""

    def __init__(self, folder: Path, plan: list[tuple[str, tuple[int, ...]]], dtype: Any,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.folder, self.dtype = folder, dtype
        self.shapes = dict(plan)
        self.order = [name for name, _ in plan]
        self.shards = plan_shards(plan, dtype, max_shard_bytes)
        self.total_bytes = sum(math.prod(s) for s in self.shapes.values()) * dtype.itemsize
        self._next = 0          # index into self.order
        self._shard = -1
        self._left: list[str] = []
        self._handle = None
        import torch  # the caller's tensors are torch's; they are written as their bytes
        self._bytes = torch.uint8

    def write(self, name: str, tensor: Any) -> int:
        if self._next >= len(self.order) or name != self.order[self._next]:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing more"
            raise RuntimeError(f"writer expected {expected}, got {name}")  # a converter bug, not a user error
        if tuple(tensor.shape) != self.shapes[name]:
            raise RuntimeError(f"{name}: shape {tuple(tensor.shape)}, planned {self.shapes[name]}")
        if not self._left:
            self._open_next()
        data = tensor.detach().to(self.dtype).contiguous().reshape(-1).view(self._bytes).numpy()
        self._handle.write(memoryview(data))
        self._left.pop(0)
        self._next += 1
        if not self._left:
            self._close()
        return data.nbytes

    def _open_next(self) -> None:
        self._shard += 1
        shard = self.shards[self._shard]
        self._handle = open(self.folder / shard.filename, "wb")
        self._handle.write(shard.header)
        self._left = list(shard.names)

    def _close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None

    def finish(self) -> dict:
        if self._next != len(self.order):
            raise RuntimeError(f"writer got {self._next} of {len(self.order)} tensors")
        weight_map = {name: shard.filename for shard in self.shards for name in shard.names}
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(self.folder / INDEX_FILE, index)
        return index

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
