"""Tokenize JSONL / parquet into Megatron indexed datasets, in parallel, in input order.

The documents written are exactly those of Megatron-LM's `tools/preprocess_data.py` (core ~0.10,
the version LLM-jp v4 was pretrained with), for one JSON line:

    for each json key:  ids = tokenizer.tokenize(text)
                        if ids and append_eod: ids += [eod]       (one sequence, its length)
                        builder.add_document(ids, [len(ids)])     (empty ids: an empty document)

with Megatron's tokenizer classes (megatron/training/tokenizer/tokenizer.py):

- Llama2Tokenizer: [bos] + sp.encode(text); eod = eos; vocab = sentencepiece piece count.
  `bos=False` gives the newer upstream layout without BOS.
- SentencePieceTokenizer: sp.encode(text) with the text split on Megatron's special token strings
  (<CLS> <SEP> <EOD> <MASK>, the pad/bos/eos pieces), each of which becomes its id; tokens missing from
  the model get new ids after the last piece; eod = the id of <EOD>; vocab = pieces + those added.
- HuggingFaceTokenizer: AutoTokenizer.from_pretrained(model)(text).input_ids (special tokens
  included, as Megatron calls it); eod = eos_token_id; vocab = len(tokenizer).

dtype: uint16 when vocab < 65500, else int32 (Megatron's DType.optimal_dtype).

Parallel layout: the parent cuts the input into chunks of whole lines and puts them on a task
queue: byte ranges of a plain file (each worker reads its range itself), decompressed bytes of a
.gz/.zst file, record batches of a parquet file. Worker processes (forked, sharing the loaded model)
parse JSON (orjson when installed, json's verdict on anything it refuses), tokenize with one batched
sentencepiece call returning numpy, and send back token blocks; the parent writes them in input
order. At most `inflight` chunks exist at once, so memory is bounded whatever the input size. A dead
worker, a bad line or Ctrl-C ends the run with an error, never a hang; outputs appear under their
final names only when complete (pipeline.indexed.IndexedDatasetWriter). Measured (bench_tokenize.py):
workers spend ~90 % of their CPU inside sentencepiece; the rest is JSON, the line loop and the queue.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing as mp
import os
import queue
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.errors import PipelineError, fail
from pipeline.indexed import IndexedDatasetWriter, data_path, index_path, optimal_dtype
from pipeline.lines import BAD_KINDS, BadLine, check_encodable, fast_loads, std_loads, texts_of
from pipeline.local_jobs import die_with_parent
from pipeline.sysinfo import usable_cores

TOKENIZER_TYPES = ("Llama2Tokenizer", "SentencePieceTokenizer", "HuggingFaceTokenizer")
ON_BAD = ("error", "skip")
DEFAULT_CHUNK_BYTES = 1 << 20
# the layout of what is written for a given input, tokenizer and options (documents, BOS/EOD, dtype,
# index); bump it whenever a change to this file changes those bytes, so that older outputs are redone
FORMAT = 1
INPUT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".parquet")
# Megatron's _SentencePieceTokenizer adds these (in this order) before pad, bos and eos
_SP_SPECIALS = ("<CLS>", "<SEP>", "<EOD>", "<MASK>")


# ---------------------------------------------------------------------------------------------
# Engines: text -> Megatron documents
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerSpec:
    """What to tokenize with; everything that changes the ids is in here."""
    type: str
    model: str
    bos: bool = True          # Llama2Tokenizer only: prepend BOS (the LLM-jp v4 / core ~0.10 layout)
    append_eod: bool = True

    def policy(self) -> str:
        if self.type == "Llama2Tokenizer":
            head = "[BOS] + pieces" if self.bos else "pieces (no BOS)"
        elif self.type == "SentencePieceTokenizer":
            head = "pieces (Megatron special strings split out)"
        else:
            head = "AutoTokenizer(text).input_ids"
        return head + (" + [EOD] (non-empty documents)" if self.append_eod else "")


def tokenizer_files(model: str | os.PathLike) -> list[Path]:
    """The files that define a tokenizer: the model file, or every file of a HF tokenizer folder."""
    path = Path(model)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


def tokenizer_sha256(model: str | os.PathLike) -> str:
    """sha256 of the model file; for a folder, of the names and contents of its files."""
    files = tokenizer_files(model)
    if len(files) == 1 and files[0] == Path(model):
        digest = hashlib.sha256(files[0].read_bytes())
    else:
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(model)).encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


class Engine:
    """Turns a batch of texts into Megatron documents: (tokens, one length per document)."""

    vocab_size: int
    eod: int | None
    prefix: int | None = None  # id put before every document (Llama2's BOS)

    def __init__(self, spec: TokenizerSpec) -> None:
        self.spec = spec

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(optimal_dtype(self.vocab_size))

    def pieces(self, texts: list[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return assemble(self.pieces(texts), self.prefix, self.eod if self.spec.append_eod else None, self.dtype)

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "eod": self.eod, "bos": self.prefix, "dtype": self.dtype.name}


def assemble(pieces: list[np.ndarray], prefix: int | None, eod: int | None,
             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-document ids with an optional prefix id and an EOD on non-empty documents."""
    n = len(pieces)
    piece_lengths = np.fromiter(map(len, pieces), np.int64, n)
    lengths = piece_lengths + (1 if prefix is not None else 0)
    with_eod = lengths > 0 if eod is not None else None
    if with_eod is not None:
        lengths = lengths + with_eod
    flat = np.concatenate(pieces) if n else np.zeros(0, np.int32)
    limit = np.iinfo(dtype).max
    if flat.size and (int(flat.max()) > limit or int(flat.min()) < 0):
        fail(f"token id {int(flat.max())} does not fit the {dtype.name} of a {limit}-entry vocabulary")
    if prefix is None and eod is None:
        return flat.astype(dtype, copy=False), lengths
    total = int(lengths.sum())
    out = np.empty(total, dtype)
    ends = np.cumsum(lengths)
    keep = np.ones(total, bool)
    if prefix is not None:
        starts = ends - lengths
        out[starts] = prefix
        keep[starts] = False
    if with_eod is not None:
        last = ends[with_eod] - 1
        out[last] = eod
        keep[last] = False
    out[keep] = flat
    return out, lengths


def _load_sentencepiece(model: str):
    import sentencepiece as spm
    path = Path(model)
    if not path.is_file():
        fail(f"{model}: tokenizer model not found (a SentencePiece .model file)")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:  # sentencepiece raises OSError/RuntimeError with its own text
        fail(f"{model}: not a SentencePiece model ({exc})")


class Llama2Engine(Engine):
    """Megatron's _Llama2Tokenizer: [bos] + sp.encode(text); eod = eos."""

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__(spec)
        self.sp = _load_sentencepiece(spec.model)
        self.vocab_size = self.sp.get_piece_size()
        bos, eos = self.sp.bos_id(), self.sp.eos_id()
        if spec.bos and bos < 0:
            fail(f"{spec.model}: the model has no BOS piece; use --no-bos")
        if spec.append_eod and eos < 0:
            fail(f"{spec.model}: the model has no EOS piece to use as EOD")
        self.prefix = bos if spec.bos else None
        self.eod = eos if eos >= 0 else None

    def pieces(self, texts: list[str]) -> list[np.ndarray]:
        return self.sp.encode(texts, num_threads=1, return_type="numpy")

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The fast path: sentencepiece adds BOS and EOS itself, numpy out, one concatenate."""
        add_eos = self.spec.append_eod
        docs = self.sp.encode(texts, num_threads=1, return_type="numpy", add_bos=self.spec.bos, add_eos=add_eos)
        lengths = np.fromiter(map(len, docs), np.int64, len(docs))
        if add_eos and not self.spec.bos:
            # an empty text gives [EOS] here but an empty document in Megatron (EOD only after ids);
            # EOS is a control piece that encoding text never yields, so [EOS] alone means empty
            empty = [i for i in np.flatnonzero(lengths == 1) if docs[i][0] == self.eod]
            for i in empty:
                docs[i] = docs[i][:0]
                lengths[i] = 0
        if not docs:
            return np.zeros(0, self.dtype), lengths
        return np.concatenate(docs).astype(self.dtype, copy=False), lengths


class SentencePieceEngine(Engine):
    """Megatron's _SentencePieceTokenizer, special-token splitting included."""

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__(spec)
        self.sp = _load_sentencepiece(spec.model)
        vocab = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}
        specials: dict[str, int] = {}

        def add(token: str) -> None:
            if token not in vocab:
                vocab[token] = len(vocab)
            specials[token] = vocab[token]

        for token in _SP_SPECIALS:
            add(token)
        for piece_id, fallback in ((self.sp.pad_id(), "<PAD>"), (self.sp.bos_id(), "<BOS>"),
                                   (self.sp.eos_id(), "<EOS>")):
            add(self.sp.id_to_piece(piece_id) if 0 <= piece_id < self.sp.get_piece_size() else fallback)
        self.vocab_size = len(vocab)
        self.eod = specials["<EOD>"]
        self.specials = specials
        # leftmost match, ties to the token added first: Megatron's min(indices, key=indices.get)
        self.pattern = re.compile("|".join(re.escape(t) for t in specials))

    def pieces(self, texts: list[str]) -> list[np.ndarray]:
        plain = self.sp.encode(texts, num_threads=1, return_type="numpy")
        for i, text in enumerate(texts):
            if self.pattern.search(text) is None:
                continue
            parts: list[np.ndarray] = []
            at = 0
            for match in self.pattern.finditer(text):
                parts.append(self.sp.encode(text[at:match.start()], return_type="numpy"))
                parts.append(np.array([self.specials[match.group()]], np.int32))
                at = match.end()
            parts.append(self.sp.encode(text[at:], return_type="numpy"))
            plain[i] = np.concatenate(parts)
        return plain


class HuggingFaceEngine(Engine):
    """Megatron's _HuggingFaceTokenizer: AutoTokenizer(text).input_ids; eod = eos_token_id."""

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__(spec)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are forked; one thread each
        import transformers
        transformers.logging.set_verbosity_error()
        if not Path(spec.model).exists():
            fail(f"{spec.model}: tokenizer not found (a Hugging Face tokenizer folder)")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(spec.model)
        except Exception as exc:  # transformers raises many kinds; all mean "not a tokenizer here"
            fail(f"{spec.model}: cannot load a Hugging Face tokenizer ({type(exc).__name__}: {exc})")
        self.vocab_size = len(self.tokenizer)
        self.eod = self.tokenizer.eos_token_id
        if spec.append_eod and self.eod is None:
            fail(f"{spec.model}: the tokenizer has no eos_token to use as EOD (needed by --append-eod)")

    def pieces(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        ids = self.tokenizer(texts)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]


ENGINES: dict[str, Callable[[TokenizerSpec], Engine]] = {
    "Llama2Tokenizer": Llama2Engine,
    "SentencePieceTokenizer": SentencePieceEngine,
    "HuggingFaceTokenizer": HuggingFaceEngine,
}


def build_engine(spec: TokenizerSpec) -> Engine:
    if spec.type not in ENGINES:
        fail(f"tokenizer type {spec.type!r}: expected one of {', '.join(TOKENIZER_TYPES)}")
    return ENGINES[spec.type](spec)


# ---------------------------------------------------------------------------------------------
# Chunks: lines -> documents (in a worker)
# ---------------------------------------------------------------------------------------------
@dataclass
class ChunkResult:
    seq: int
    lines: int = 0                      # lines (or parquet rows) in the chunk
    documents: int = 0
    blank: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error: tuple[int, str, str] | None = None   # (line within chunk, 0-based; kind; message)
    blocks: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per key


def process_chunk(engine: Engine, keys: tuple[str, ...], seq: int, kind: str, payload: Any,
                  on_bad: str) -> ChunkResult:
    """Parse one chunk (whole JSONL lines as bytes, or parquet columns) and tokenize its documents.

    Lone surrogates (JSON "\\ud800") cannot reach the tokenizer; checking every text for them costs
    time, so the chunk is parsed again with that check only when the batched encode refuses one.
    """
    try:
        return _process_chunk(engine, keys, seq, kind, payload, on_bad, check_utf8=False)
    except (TypeError, RuntimeError, UnicodeError):
        return _process_chunk(engine, keys, seq, kind, payload, on_bad, check_utf8=True)


def _process_chunk(engine: Engine, keys: tuple[str, ...], seq: int, kind: str, payload: Any, on_bad: str,
                   check_utf8: bool) -> ChunkResult:
    result = ChunkResult(seq)
    texts: list[list[str]] = [[] for _ in keys]

    def bad(lineno: int, exc: BadLine) -> bool:
        """Record a bad line; True when the chunk must stop here (on_bad == error)."""
        if on_bad == "error":
            result.error = (lineno, exc.kind, str(exc))
            return True
        result.skipped[exc.kind] = result.skipped.get(exc.kind, 0) + 1
        return False

    if kind == "lines":
        lines = payload.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the chunk ends with a newline: no line after it
        result.lines = len(lines)
        fast = fast_loads   # pipeline.lines.parse_line, inlined: this loop is the hot path
        for lineno, raw in enumerate(lines):
            if not raw or raw.isspace():
                result.blank += 1
                continue
            try:
                try:
                    record = fast(raw)
                except Exception:  # noqa: BLE001  any refusal: the standard library decides, below
                    record = std_loads(raw)
                values = texts_of(record, keys, check_utf8)
            except BadLine as exc:
                if bad(lineno, exc):
                    return result
                continue
            for bucket, value in zip(texts, values):
                bucket.append(value)
    else:  # parquet: one arrow column per key, one document per row
        columns = [column.to_pylist() for column in payload]
        result.lines = len(columns[0]) if columns else 0
        for lineno in range(result.lines):
            try:
                for key, column in zip(keys, columns):
                    if not isinstance(column[lineno], str):
                        raise BadLine("non_string", f"column {key!r} holds {type(column[lineno]).__name__}, "
                                                    "not a string")
                    if check_utf8:
                        check_encodable(column[lineno])
            except BadLine as exc:
                if bad(lineno, exc):
                    return result
                continue
            for bucket, column in zip(texts, columns):
                bucket.append(column[lineno])

    result.blocks = [engine.encode(bucket) for bucket in texts]
    result.documents = len(texts[0])
    return result


# ---------------------------------------------------------------------------------------------
# Input: chunks of whole lines, from plain, gzip or zstd JSONL, or record batches from parquet
# ---------------------------------------------------------------------------------------------
def input_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zst") or name.endswith(".zstd"):
        return "zstd"
    return "plain"


def strip_input_suffix(name: str) -> str:
    """`dclm-0000-0009.jsonl` -> `dclm-0000-0009` (the longest known input suffix is removed)."""
    lower = name.lower()
    for suffix in sorted(INPUT_SUFFIXES + (".gz", ".zst"), key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


class InputReader:
    """Yields ("lines", bytes) chunks ending at a newline, or ("columns", [arrow arrays]) batches."""

    def __init__(self, path: Path, keys: tuple[str, ...], chunk_bytes: int) -> None:
        self.path, self.keys, self.chunk_bytes = path, keys, chunk_bytes
        self.kind = input_kind(path)
        self.raw = None
        self._position = 0
        self.bytes_read = 0  # uncompressed bytes handed out (JSONL)
        try:
            self.file_size = path.stat().st_size
        except OSError as exc:
            fail(f"{path}: cannot read input: {exc.strerror}")

    def position(self) -> int:
        """Bytes of the input file consumed so far (compressed bytes for .gz/.zst)."""
        if self.kind == "plain":
            return self._position
        if self.raw is not None and not self.raw.closed:
            try:
                return self.raw.tell()
            except (OSError, ValueError):
                return 0
        return 0

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        if self.kind == "parquet":
            yield from self._parquet()
            return
        if self.kind == "plain":
            yield from self._ranges()
            return
        try:
            self.raw = open(self.path, "rb")
        except OSError as exc:
            fail(f"{self.path}: cannot open input: {exc.strerror}")
        with self.raw:
            if self.kind == "gzip":
                stream: io.BufferedIOBase = gzip.GzipFile(fileobj=self.raw, mode="rb")
            elif self.kind == "zstd":
                import zstandard
                # windows up to 2 GiB: files compressed with --long (as some hub datasets are) open too
                stream = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
                    self.raw, read_across_frames=True)
            else:
                stream = self.raw
            try:
                yield from self._lines(stream)
            except (OSError, EOFError, ValueError) as exc:
                if isinstance(exc, PipelineError):
                    raise
                fail(f"{self.path}: cannot decompress ({self.kind}): {exc}")

    def _ranges(self) -> Iterator[tuple[str, tuple[str, int, int]]]:
        """Plain files: ("range", (path, start, end)) of whole lines; the workers read the bytes
        themselves, so the input never passes through this process or a pipe."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            fail(f"{self.path}: cannot open input: {exc.strerror}")
        try:
            size, start = os.fstat(fd).st_size, 0
            self._position = 0
            while start < size:
                end = min(start + self.chunk_bytes, size)
                while end < size:  # extend to the end of the line that crosses the boundary
                    window = os.pread(fd, 1 << 16, end)
                    cut = window.find(b"\n")
                    if cut >= 0:
                        end += cut + 1
                        break
                    end += len(window)
                end = min(end, size)
                self.bytes_read += end - start
                self._position = end
                yield "range", (str(self.path), start, end)
                start = end
        finally:
            os.close(fd)

    def _lines(self, stream) -> Iterator[tuple[str, bytes]]:
        carry = b""
        while True:
            block = stream.read(self.chunk_bytes)
            if not block:
                if carry:
                    self.bytes_read += len(carry)
                    yield "lines", carry
                return
            buffer = carry + block if carry else block
            cut = buffer.rfind(b"\n")
            if cut < 0:
                carry = buffer  # one line longer than a chunk: keep reading until it ends
                continue
            carry = buffer[cut + 1:]
            chunk = buffer[: cut + 1]
            self.bytes_read += len(chunk)
            yield "lines", chunk

    def _parquet(self) -> Iterator[tuple[str, list]]:
        import pyarrow.parquet as pq
        try:
            handle = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow's ArrowInvalid / OSError: not a parquet file
            fail(f"{self.path}: cannot read parquet: {exc}")
        names = handle.schema_arrow.names
        missing = [k for k in self.keys if k not in names]
        if missing:
            fail(f"{self.path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(names)})")
        # rows per batch: about chunk_bytes of text, guessing 3x the compressed bytes per row
        per_row = max(1, self.file_size // max(1, handle.metadata.num_rows))
        batch_rows = max(16, min(65536, self.chunk_bytes // (3 * per_row)))
        for batch in handle.iter_batches(batch_size=batch_rows, columns=list(self.keys)):
            self.bytes_read += batch.nbytes
            yield "columns", [batch.column(k) for k in self.keys]


# ---------------------------------------------------------------------------------------------
# The worker pool
# ---------------------------------------------------------------------------------------------
_WORKER_ENGINE: Engine | None = None


_RANGE_FDS: dict[str, int] = {}


def _read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a plain input file (the descriptor stays open for the worker's life)."""
    fd = _RANGE_FDS.get(path)
    if fd is None:
        fd = _RANGE_FDS[path] = os.open(path, os.O_RDONLY)
    data = os.pread(fd, end - start, start)
    while len(data) < end - start:  # pread may return less; a shrinking file ends it
        more = os.pread(fd, end - start - len(data), start + len(data))
        if not more:
            raise OSError(f"{path}: file ended at byte {start + len(data)} while reading a chunk (changed?)")
        data += more
    return data


def _worker_main(keys: tuple[str, ...], on_bad: str, tasks, results, parent_pid: int) -> None:
    die_with_parent(signal.SIGKILL)   # no orphan workers if the parent is killed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    engine = _WORKER_ENGINE
    assert engine is not None
    while True:
        try:
            task = tasks.get(timeout=5)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return  # orphaned (no prctl): stop quietly
            continue
        if task is None:
            return
        seq, kind, payload = task
        try:
            if kind == "range":
                kind, payload = "lines", _read_range(*payload)
            result = process_chunk(engine, keys, seq, kind, payload, on_bad)
        except BaseException as exc:  # report anything unexpected with the chunk it happened in
            results.put((seq, "crash", f"{type(exc).__name__}: {exc}"))
            return
        results.put((seq, "ok", result))


@dataclass
class Stats:
    documents: int = 0
    tokens: int = 0               # of the first key (all keys: tokens_by_key)
    tokens_by_key: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    blank_lines: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {k: 0 for k in BAD_KINDS})
    input_bytes: int = 0          # bytes of the input file
    text_bytes: int = 0           # uncompressed JSONL bytes (parquet: arrow bytes of the key columns)
    seconds: float = 0.0
    workers: int = 0


class WorkerPool:
    """Worker processes around a task queue and a result queue; fails fast when one dies."""

    def __init__(self, engine: Engine, keys: tuple[str, ...], on_bad: str, workers: int) -> None:
        global _WORKER_ENGINE
        ctx = mp.get_context("fork")
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        _WORKER_ENGINE = engine
        self.procs = []
        try:
            for _ in range(workers):
                proc = ctx.Process(target=_worker_main, args=(keys, on_bad, self.tasks, self.results, os.getpid()),
                                   daemon=True)
                proc.start()
                self.procs.append(proc)
        finally:
            _WORKER_ENGINE = None

    def put(self, item) -> None:
        self.tasks.put(item)

    def get(self, what: str) -> tuple:
        """Next result; a worker that died (killed, out of memory) ends the run with an error."""
        while True:
            try:
                return self.results.get(timeout=0.5)
            except queue.Empty:
                pass
            for proc in self.procs:
                if proc.exitcode is not None:
                    code = proc.exitcode
                    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                    fail(f"{what}: a tokenizer worker (pid {proc.pid}) died ({how}); nothing was written")

    def close(self, force: bool = False) -> None:
        if not force:
            for _ in self.procs:
                self.tasks.put(None)
            deadline = time.monotonic() + 10
            for proc in self.procs:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(5)
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()


def output_prefix_for(prefix: str | os.PathLike, key: str) -> Path:
    return Path(f"{prefix}_{key}_document")


def tokenize_file(input_path: str | os.PathLike, output_prefix: str | os.PathLike, engine: Engine,
                  keys: tuple[str, ...] = ("text",), workers: int = 1, on_bad: str = "error",
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, inflight: int | None = None,
                  progress_bar=None) -> Stats:
    """Tokenize one input file into `<prefix>_<key>_document.{bin,idx}` for each key."""
    path = Path(input_path)
    if on_bad not in ON_BAD:
        fail(f"on_bad={on_bad!r}: expected one of {', '.join(ON_BAD)}")
    if not keys or len(set(keys)) != len(keys):
        fail(f"--json-keys {' '.join(keys)}: need one or more distinct keys")
    if not path.is_file():
        fail(f"{path}: input file not found")
    workers = max(1, workers)
    inflight = inflight or 2 * workers + 2
    reader = InputReader(path, keys, chunk_bytes)
    stats = Stats(input_bytes=reader.file_size, workers=workers)
    start = time.monotonic()
    writers = [IndexedDatasetWriter(output_prefix_for(output_prefix, key), engine.dtype) for key in keys]
    pool = None
    try:
        pool = WorkerPool(engine, keys, on_bad, workers)
        chunks = iter(reader)
        sent = written = 0
        pending: dict[int, ChunkResult] = {}
        exhausted = False
        last_position = 0
        while True:
            while not exhausted and sent - written < inflight:
                item = next(chunks, None)
                if item is None:
                    exhausted = True
                    break
                pool.put((sent, *item))
                sent += 1
            if written == sent and exhausted:
                break
            seq, status, payload = pool.get(str(path))
            if status == "crash":
                fail(f"{path}: a tokenizer worker failed on chunk {seq}: {payload}")
            pending[seq] = payload
            while written in pending:
                chunk = pending.pop(written)
                if chunk.error is not None:
                    lineno, kind, message = chunk.error
                    where = "row" if reader.kind == "parquet" else "line"
                    fail(f"{path}:{stats.lines + lineno + 1}: {message} ({kind.replace('_', ' ')} {where}; "
                         f"--on-bad-line skip skips and counts such lines)")
                for writer, (tokens, lengths) in zip(writers, chunk.blocks):
                    writer.add_token_block(tokens, lengths)
                stats.lines += chunk.lines
                stats.blank_lines += chunk.blank
                stats.documents += chunk.documents
                for kind, count in chunk.skipped.items():
                    stats.skipped[kind] += count
                written += 1
                if progress_bar is not None:
                    position = reader.position() or reader.bytes_read
                    progress_bar.update(max(0, position - last_position))
                    last_position = max(last_position, position)
        pool.close()
        pool = None
        stats.tokens = writers[0].tokens
        stats.tokens_by_key = {key: writer.tokens for key, writer in zip(keys, writers)}
        stats.text_bytes = reader.bytes_read
        for writer in writers:
            writer.finalize()
    except BaseException:
        if pool is not None:
            pool.close(force=True)
        for writer in writers:
            writer.abort()
        raise
    stats.seconds = time.monotonic() - start
    return stats


def remove_partial_outputs(output_prefix: str | os.PathLike, keys: tuple[str, ...]) -> int:
    """Delete temporaries a killed run left beside these outputs (under their lock: see run_one_file)."""
    from pipeline.atomic import remove_temporaries

    removed = 0
    for key in keys:
        prefix = output_prefix_for(output_prefix, key)
        for final in (data_path(prefix), index_path(prefix)):
            removed += remove_temporaries(final)
    return removed


def default_workers() -> int:
    return usable_cores()


def provenance_path(output_prefix: str | os.PathLike, key: str) -> Path:
    return Path(f"{output_prefix_for(output_prefix, key)}.provenance.json")


def run_one_file(input_path: str | os.PathLike, output_prefix: str | os.PathLike, engine: Engine,
                 keys: tuple[str, ...] = ("text",), workers: int = 1, on_bad: str = "error",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, show_progress: bool = True,
                 extra: dict | None = None) -> dict:
    """Tokenize one file with progress, then write provenance beside each output; returns the record.

    Holds the outputs' lock (pipeline.locks; re-entrant, so the tokenize stage can hold it longer):
    a second run writing the same prefix refuses instead of removing this one's temporaries."""
    from pipeline.locks import output_lock

    with output_lock(output_prefix, "being tokenized"):
        return _run_one_file(input_path, output_prefix, engine, keys, workers, on_bad, chunk_bytes, show_progress,
                             extra)


def _run_one_file(input_path, output_prefix, engine: Engine, keys: tuple[str, ...], workers: int, on_bad: str,
                  chunk_bytes: int, show_progress: bool, extra: dict | None) -> dict:
    from pipeline.atomic import write_json
    from pipeline.progress import progress
    from pipeline.provenance import provenance

    path = Path(input_path)
    remove_partial_outputs(output_prefix, keys)
    size = path.stat().st_size if path.is_file() else None
    with progress(total=size, desc=f"tokenize {path.name}", unit="B", unit_scale=True,
                  enabled=show_progress) as bar:
        stats = tokenize_file(path, output_prefix, engine, keys, workers=workers, on_bad=on_bad,
                              chunk_bytes=chunk_bytes, progress_bar=bar)
    seconds = max(stats.seconds, 1e-9)
    spec = engine.spec
    outputs = {}
    for key in keys:
        prefix = output_prefix_for(output_prefix, key)
        outputs[key] = {"prefix": str(prefix), "tokens": stats.tokens_by_key[key],
                        "bin_bytes": data_path(prefix).stat().st_size, "idx_bytes": index_path(prefix).stat().st_size}
    record = {
        "input": str(path), "input_bytes": stats.input_bytes, "text_bytes": stats.text_bytes,
        "json_keys": list(keys),
        "tokenizer": {"type": spec.type, "model": str(spec.model), "sha256": tokenizer_sha256(spec.model),
                      "bos": engine.prefix, "eod": engine.eod if spec.append_eod else None,
                      "append_eod": spec.append_eod, "policy": spec.policy(), "vocab_size": engine.vocab_size},
        "format": FORMAT, "dtype": engine.dtype.name, "documents": stats.documents, "tokens": stats.tokens,
        "lines": stats.lines,
        "blank_lines": stats.blank_lines, "skipped_lines": dict(stats.skipped), "on_bad_line": on_bad,
        "workers": stats.workers, "seconds": round(stats.seconds, 3),
        "input_mb_per_s": round(stats.input_bytes / seconds / 1e6, 3),
        "tokens_per_s": round(stats.tokens / seconds, 1),
        "outputs": outputs,
    }
    record.update(extra or {})
    for key in keys:
        own = {**record, "json_key": key, "tokens": stats.tokens_by_key[key], "output": outputs[key]["prefix"]}
        write_json(provenance_path(output_prefix, key), provenance(**own))
    return record
