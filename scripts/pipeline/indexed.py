"""Megatron-LM indexed datasets (`<prefix>.bin` / `<prefix>.idx`), read and written without Megatron.

Format (megatron/core/datasets/indexed_dataset.py), little-endian, no padding:
    magic b"MMIDIDX\\x00\\x00" | version u64 = 1 | dtype code u8 | S u64 | D u64
    | sequence lengths i32[S] | sequence byte offsets i64[S] | document indices i64[D]
`.bin` is the concatenated tokens of all sequences in the dtype.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import tmp_path_for
from pipeline.errors import fail, naming

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8  # 34
DTYPE_CODES = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32,
    5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


def optimal_dtype(vocab_size: int) -> type:
    """Megatron's choice: uint16 below 65500 entries, int32 otherwise."""
    return np.uint16 if vocab_size < 65500 else np.int32


def index_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.idx")


def data_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.bin")


@dataclass
class IndexHeader:
    path: Path
    dtype: np.dtype
    sequences: int
    document_entries: int  # D = documents + 1

    @property
    def documents(self) -> int:
        return self.document_entries - 1

    @property
    def expected_size(self) -> int:
        return HEADER_SIZE + 12 * self.sequences + 8 * self.document_entries


def read_header(idx_path: str | os.PathLike) -> IndexHeader:
    path = Path(idx_path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER_SIZE)
    except OSError as exc:
        fail(f"{path}: cannot read index: {exc.strerror}")
    if len(head) < HEADER_SIZE or head[: len(MAGIC)] != MAGIC:
        fail(f"{path}: not a Megatron index (bad magic or truncated header)")
    version, code, sequences, entries = struct.unpack("<QBQQ", head[len(MAGIC):])
    if version != VERSION:
        fail(f"{path}: unsupported index version {version}")
    if code not in DTYPE_CODES:
        fail(f"{path}: unknown dtype code {code}")
    header = IndexHeader(path, np.dtype(DTYPE_CODES[code]), sequences, entries)
    size = path.stat().st_size
    if size != header.expected_size:
        fail(f"{path}: size {size} bytes, expected {header.expected_size} for {sequences} sequences "
             f"and {entries} document entries (truncated or corrupt)")
    return header


def index_counts(idx_path: str | os.PathLike) -> tuple[int, int, int, str]:
    """(tokens, documents, sequences, dtype name) of one index: header and lengths only, never the .bin."""
    header = read_header(idx_path)
    s = header.sequences
    lengths = np.fromfile(header.path, dtype="<i4", count=s, offset=HEADER_SIZE)
    tokens = int(lengths.sum(dtype=np.int64))
    if s:  # the last byte offset must agree with the lengths (a cheap check against a corrupt index)
        last = int(np.fromfile(header.path, dtype="<i8", count=1, offset=HEADER_SIZE + 4 * s + 8 * (s - 1))[0])
        if last + int(lengths[-1]) * header.dtype.itemsize != tokens * header.dtype.itemsize:
            fail(f"{header.path}: sequence lengths and byte offsets disagree (corrupt index)")
    return tokens, header.documents, header.sequences, header.dtype.name


class IndexedDatasetWriter:
    """Streams documents into `<prefix>.bin/.idx` under temporary names; `finalize()` renames both.

    Memory stays bounded: sequence lengths and document boundaries are spilled to temporary files
    and the index is assembled from them in chunks. Without `finalize()` (crash, exception) nothing
    appears under the final names; use it as a context manager to clean up on error.
    """

    CHUNK = 1 << 22  # entries per chunk when assembling the index

    def __init__(self, prefix: str | os.PathLike, dtype: type | np.dtype) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            fail(f"unsupported token dtype {self.dtype}")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.bin_final, self.idx_final = data_path(prefix), index_path(prefix)
        self.bin_tmp, self.idx_tmp = tmp_path_for(self.bin_final), tmp_path_for(self.idx_final)
        self._bin = open(self.bin_tmp, "wb")
        spill_dir = self.prefix.parent
        self._lengths = tempfile.TemporaryFile(dir=spill_dir, prefix=f".{self.prefix.name}.lengths.")
        self._docs = tempfile.TemporaryFile(dir=spill_dir, prefix=f".{self.prefix.name}.docs.")
        self.sequences = 0
        self.documents = 0
        self.tokens = 0
        self._closed = False

    def add_document(self, tokens, lengths=None) -> None:
        """One document: its tokens and, optionally, how they split into sequences (default one)."""
        with naming(self.bin_final):
            self._add_document(tokens, lengths)

    def _add_document(self, tokens, lengths) -> None:
        array = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(array.tobytes())
        if lengths is None:
            lengths = [len(array)] if len(array) else []
        lengths = np.asarray(lengths, dtype=np.int32)
        self._lengths.write(lengths.tobytes())
        self.sequences += len(lengths)
        self.tokens += len(array)
        self.documents += 1
        self._docs.write(np.int64(self.sequences).tobytes())

    def add_token_block(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Many one-sequence documents at once: `tokens` concatenated, `lengths` one per document.

        Zero lengths are empty documents (no sequence), as Megatron records them.
        """
        with naming(self.bin_final):   # a full disk names the output, not a descriptor
            self._add_token_block(tokens, lengths)

    def _add_token_block(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        lengths = np.asarray(lengths, dtype=np.int64)
        self._bin.write(memoryview(tokens).cast("B"))  # no copy of the (large) token block
        nonempty = lengths[lengths > 0].astype(np.int32)
        self._lengths.write(nonempty.tobytes())
        ends = self.sequences + np.cumsum(lengths > 0, dtype=np.int64)
        self._docs.write(ends.tobytes())
        self.sequences += len(nonempty)
        self.documents += len(lengths)
        self.tokens += int(tokens.size)

    def finalize(self) -> None:
        with naming(self.bin_final):
            self._bin.flush()
            os.fsync(self._bin.fileno())
            self._bin.close()
        with naming(self.idx_final):
            self._finalize_index()

    def _finalize_index(self) -> None:
        with open(self.idx_tmp, "wb") as idx:
            idx.write(MAGIC)
            idx.write(struct.pack("<QBQQ", VERSION, CODE_OF_DTYPE[self.dtype], self.sequences,
                                  self.documents + 1))
            self._copy_spill(self._lengths, np.int32, idx)
            self._write_pointers(idx)
            idx.write(np.int64(0).tobytes())
            self._copy_spill(self._docs, np.int64, idx)
            idx.flush()
            os.fsync(idx.fileno())
        self._lengths.close()
        self._docs.close()
        # .bin first: an .idx under its final name always has its .bin beside it; an older .idx goes
        # before that, so a crash between the two renames never pairs it with the new .bin
        self.idx_final.unlink(missing_ok=True)
        os.replace(self.bin_tmp, self.bin_final)
        os.replace(self.idx_tmp, self.idx_final)
        self._closed = True

    def _copy_spill(self, spill, dtype, out) -> None:
        spill.seek(0)
        while block := spill.read(self.CHUNK * np.dtype(dtype).itemsize):
            out.write(block)

    def _write_pointers(self, out) -> None:
        self._lengths.seek(0)
        offset = 0
        itemsize = self.dtype.itemsize
        while block := self._lengths.read(self.CHUNK * 4):
            lengths = np.frombuffer(block, dtype=np.int32).astype(np.int64) * itemsize
            ends = np.cumsum(lengths) + offset
            out.write((ends - lengths).tobytes())
            offset = int(ends[-1])

    def abort(self) -> None:
        if self._closed:
            return
        for handle in (self._bin, self._lengths, self._docs):
            handle.close()
        for tmp in (self.bin_tmp, self.idx_tmp):
            tmp.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
