"""Streaming byte work for extract and merge: decompress one raw file, concatenate JSONL files.

Everything works in fixed-size blocks (memory stays flat whatever the file size) and writes into
an already-open output (the caller wraps it in pipeline.atomic.atomic_output, so a failure leaves
no output under the final name).

- extract: .zst (all frames), .gz (all members), plain copy, parquet -> JSONL. A truncated or
  corrupt archive raises PipelineError naming the file.
- merge: fast path = the kernel copies the bytes (copy_file_range, as `cat` does) while this
  process counts lines and looks for blank lines in the same bytes on another core; a file with
  blank (or whitespace-only) lines, a missing final newline or validation goes through the
  line-by-line path, which drops blank lines, terminates every line and checks JSON.
"""
from __future__ import annotations

import errno
import json
import os
import queue
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import zstandard

from pipeline.errors import PipelineError, fail, os_error_message
from pipeline.lines import line_problem
from pipeline.progress import progress

READ_BLOCK = 1 << 17          # compressed bytes per read (fits the CPU cache; see bench_data.py)
WRITE_BLOCK = 1 << 20         # zstd: decompressed bytes produced per output buffer
SCAN_BLOCK = 1 << 20          # merge: bytes scanned per step
LINE_BATCH = 1 << 20          # merge slow path: bytes gathered before a write
COPY_CHUNK = 1 << 26          # merge: bytes per copy_file_range call
MAX_BAD_EXAMPLES = 10
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF)

Report = Callable[[int], None]


def _no_report(_: int) -> None:
    pass


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------------------------

def _decompress_stream(src: Path, out: BinaryIO, report: Report, new_decoder: Callable[[], object],
                       error: type[Exception], kind: str, unit: str) -> int:
    """Feed `src` block by block through decoders from `new_decoder` (one per frame or member, as
    concatenated archives have several) into `out`; returns the bytes written."""
    decoder, in_unit, written, read = new_decoder(), False, 0, 0
    with open(src, "rb", buffering=0) as handle:
        try:
            while chunk := handle.read(READ_BLOCK):
                read += len(chunk)
                report(len(chunk))
                while chunk:
                    in_unit = True
                    data = decoder.decompress(chunk)
                    if data:
                        out.write(data)
                        written += len(data)
                    if decoder.eof:
                        chunk, decoder, in_unit = decoder.unused_data, new_decoder(), False
                    else:
                        chunk = b""
        except error as exc:
            fail(f"{src}: corrupt {kind} data: {exc}")
    if read == 0:
        fail(f"{src}: empty file, not a {kind} archive")
    if in_unit:
        fail(f"{src}: truncated {kind} archive (the last {unit} is incomplete)")
    return written


def decompress_zstd(src: Path, out: BinaryIO, report: Report = _no_report) -> int:
    """Decompress every frame of a .zst file into `out`; returns the bytes written."""
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)
    return _decompress_stream(src, out, report, lambda: dctx.decompressobj(write_size=WRITE_BLOCK),
                              zstandard.ZstdError, "zstd", "frame")


def decompress_gzip(src: Path, out: BinaryIO, report: Report = _no_report) -> int:
    """Decompress every member of a .gz file into `out` (CRC checked); returns the bytes written."""
    return _decompress_stream(src, out, report, lambda: zlib.decompressobj(31), zlib.error, "gzip", "member")


def copy_plain(src: Path, out: BinaryIO, report: Report = _no_report) -> int:
    """Copy a plain file into `out` in blocks."""
    written = 0
    with open(src, "rb", buffering=0) as handle:
        while chunk := handle.read(SCAN_BLOCK):
            out.write(chunk)
            written += len(chunk)
            report(len(chunk))
    return written


def parquet_to_jsonl(src: Path, out: BinaryIO, text_column: str = "text", keep_columns: list[str] = (),
                     report: Report = _no_report) -> int:
    """One JSON line per row: {"text": <text_column>, <keep_columns>...}; the schema is checked first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(src)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        fail(f"{src}: not a readable parquet file: {exc}")
    names = list(schema.names)
    if text_column not in names:
        fail(f"{src}: no column {text_column!r} in the parquet schema (columns: {', '.join(names)}); "
             "set parquet.text_column in the dataset description")
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        fail(f"{src}: column {text_column!r} has type {kind}, expected a string column")
    missing = [c for c in keep_columns if c not in names]
    if missing:
        fail(f"{src}: keep_columns {', '.join(missing)} not in the parquet schema (columns: {', '.join(names)})")
    total_rows = max(parquet.metadata.num_rows, 1)
    size = os.path.getsize(src)
    written = rows = reported = 0
    try:
        for batch in parquet.iter_batches(batch_size=4096, columns=[text_column, *keep_columns]):
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            lines = []
            for i, text in enumerate(columns[0]):
                if text is None:
                    fail(f"{src}: row {rows + i}: {text_column} is null")
                record = {"text": text}
                for name, values in zip(keep_columns, columns[1:]):
                    record[name] = values[i]
                lines.append(json.dumps(record, ensure_ascii=False, default=str))
            rows += len(lines)
            data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
            out.write(data)
            written += len(data)
            done = size * rows // total_rows
            report(done - reported)
            reported = done
    except (pa.ArrowException, OSError) as exc:
        fail(f"{src}: corrupt parquet data: {exc}")
    report(size - reported)
    return written


class BackgroundWriter:
    """Writes into `out` on a second thread, so that decompressing and writing overlap (as `zstd -d`
    does); at most `depth` blocks wait in between, so memory stays flat."""

    def __init__(self, out: BinaryIO, depth: int = 4) -> None:
        self.out = out
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.out.write(data)
                except BaseException as exc:  # noqa: BLE001  (re-raised by the producer)
                    self.error = exc

    def write(self, data) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(data)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def extract_file(src: Path, out: BinaryIO, compression: str | None, fmt: str, text_column: str = "text",
                 keep_columns: list[str] = (), report: Report = _no_report) -> int:
    writer = BackgroundWriter(out)
    try:
        if fmt == "parquet":
            return parquet_to_jsonl(src, writer, text_column, list(keep_columns), report)
        if compression == "zstd":
            return decompress_zstd(src, writer, report)
        if compression == "gzip":
            return decompress_gzip(src, writer, report)
        return copy_plain(src, writer, report)
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------

@dataclass
class MergeStats:
    documents: int = 0
    bytes: int = 0
    blank_lines_dropped: int = 0
    bad_lines_skipped: int = 0
    missing_final_newlines: int = 0
    bad_line_examples: list[str] = field(default_factory=list)

    def add(self, other: "MergeStats") -> None:
        self.documents += other.documents
        self.bytes += other.bytes
        self.blank_lines_dropped += other.blank_lines_dropped
        self.bad_lines_skipped += other.bad_lines_skipped
        self.missing_final_newlines += other.missing_final_newlines
        room = MAX_BAD_EXAMPLES - len(self.bad_line_examples)
        self.bad_line_examples.extend(other.bad_line_examples[:max(room, 0)])


def copy_lines(src: Path, out_fd: int, validate: bool = False, on_bad_line: str = "fail",
               report: Report = _no_report) -> MergeStats:
    """Line by line: drop blank lines, terminate every line, optionally check each line's JSON."""
    stats = MergeStats()
    batch: list[bytes] = []
    batch_bytes = 0
    with open(src, "rb", buffering=SCAN_BLOCK) as handle:
        for lineno, line in enumerate(handle, 1):
            report(len(line))
            if not line.strip():
                stats.blank_lines_dropped += 1
                continue
            if validate:
                problem = line_problem(line.rstrip(b"\n"))   # tokenize's own verdict, so it never refuses
                if problem is not None:
                    where = f"{src}:{lineno}: {problem}"
                    if on_bad_line == "fail":
                        fail(f"{where} (VALIDATE=1; ON_BAD_LINE=skip drops such lines instead)")
                    stats.bad_lines_skipped += 1
                    if len(stats.bad_line_examples) < MAX_BAD_EXAMPLES:
                        stats.bad_line_examples.append(where)
                    continue
            if not line.endswith(b"\n"):
                line += b"\n"
                stats.missing_final_newlines += 1
            batch.append(line)
            batch_bytes += len(line)
            stats.documents += 1
            if batch_bytes >= LINE_BATCH:
                write_all(out_fd, b"".join(batch))
                stats.bytes += batch_bytes
                batch, batch_bytes = [], 0
    if batch:
        write_all(out_fd, b"".join(batch))
        stats.bytes += batch_bytes
    return stats


class _KernelCopy(threading.Thread):
    """Copy [0, size) of src_fd to the current position of dst_fd inside the kernel."""

    def __init__(self, src_fd: int, dst_fd: int, size: int) -> None:
        super().__init__(daemon=True)
        self.src_fd, self.dst_fd, self.size = src_fd, dst_fd, size
        self.copied = 0
        self.error: OSError | None = None
        self.stop = False

    def run(self) -> None:
        try:
            while self.copied < self.size and not self.stop:
                n = os.copy_file_range(self.src_fd, self.dst_fd, min(self.size - self.copied, COPY_CHUNK),
                                       self.copied)
                if n == 0:
                    break
                self.copied += n
        except OSError as exc:
            self.error = exc


def _scan(handle, size: int, out_fd: int | None, report: Report) -> tuple[int, bool, int, int]:
    """Count the newlines of a file and look for lines starting with a byte <= 0x20 (blank candidates).

    Returns (newlines, clean, last byte, bytes scanned); stops early (clean=False) at the first
    candidate. With out_fd, also writes the scanned bytes there (when the kernel cannot copy them).
    """
    buf = bytearray(SCAN_BLOCK)
    view = memoryview(buf)
    newlines, at_line_start, last, done = 0, True, 10, 0
    while done < size:
        n = handle.readinto(view[:min(SCAN_BLOCK, size - done)])
        if not n:
            break
        arr = np.frombuffer(buf, np.uint8, n)
        positions = np.flatnonzero(arr == 10)
        starts = positions + 1
        firsts = arr[starts[starts < n]]
        # a line starting with whitespace or a control byte may be blank: the careful path decides
        if (at_line_start and arr[0] <= 32) or (firsts <= 32).any():
            return newlines, False, last, done
        newlines += len(positions)
        last = buf[n - 1]
        at_line_start = last == 10
        if out_fd is not None:
            write_all(out_fd, view[:n])
        done += n
        report(n)
    return newlines, True, last, done


class MergeWriter:
    """Appends JSONL inputs to one open output file descriptor (use it inside atomic_output)."""

    kernel_copy = True   # class-wide: once copy_file_range is refused, use read/write from then on

    def __init__(self, out_fd: int, validate: bool = False, on_bad_line: str = "fail",
                 report: Report = _no_report) -> None:
        self.fd, self.validate, self.on_bad_line, self.report = out_fd, validate, on_bad_line, report
        self.stats = MergeStats()

    def append(self, src: Path) -> MergeStats:
        if self.validate:
            stats = copy_lines(src, self.fd, True, self.on_bad_line, self.report)
        else:
            stats = self._append_fast(src)
        self.stats.add(stats)
        return stats

    def _append_fast(self, src: Path) -> MergeStats:
        start = os.lseek(self.fd, 0, os.SEEK_CUR)
        with open(src, "rb", buffering=0) as copy_handle, open(src, "rb", buffering=0) as scan_handle:
            size = os.fstat(scan_handle.fileno()).st_size
            if size == 0:
                return MergeStats()
            if MergeWriter.kernel_copy:
                copier = _KernelCopy(copy_handle.fileno(), self.fd, size)
                copier.start()
                newlines, clean, last, scanned = _scan(scan_handle, size, None, self.report)
                copier.stop = not clean   # the copy is thrown away: no need to finish it
                copier.join()
                if copier.error is not None and copier.error.errno in _NO_KERNEL_COPY and copier.copied == 0:
                    MergeWriter.kernel_copy = False   # e.g. across file systems: read and write instead
                    self.report(-scanned)
                    scan_handle.seek(0)
                    newlines, clean, last, scanned = _scan(scan_handle, size, self.fd, self.report)
                elif copier.error is not None:
                    # no file name: the output's writer (atomic_output) names the output
                    raise OSError(copier.error.errno, f"{copier.error.strerror} (copying {src} into it)")
                elif clean and copier.copied != size:
                    fail(f"{src}: changed while being merged ({copier.copied} of {size} bytes copied)")
            else:
                newlines, clean, last, scanned = _scan(scan_handle, size, self.fd, self.report)
            if not clean:
                # blank or whitespace-led lines: redo this input line by line
                self.report(-scanned)
                os.ftruncate(self.fd, start)
                os.lseek(self.fd, start, os.SEEK_SET)
                return copy_lines(src, self.fd, False, self.on_bad_line, self.report)
            stats = MergeStats(documents=newlines, bytes=size)
            if last != 10:
                write_all(self.fd, b"\n")
                stats.documents += 1
                stats.bytes += 1
                stats.missing_final_newlines = 1
            return stats


# ---------------------------------------------------------------------------------------------
# progress across worker processes: each pool worker adds its bytes to one shared counter
# ---------------------------------------------------------------------------------------------

_COUNTER = None


def init_worker_counter(counter) -> None:
    """Pool initializer: remember the shared counter (a multiprocessing.Value) in this worker."""
    global _COUNTER
    _COUNTER = counter


def report_to_counter(n: int) -> None:
    """A `Report` for workers: adds to the shared counter the parent polls for its progress bar."""
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += n


def run_with_progress(items: list, work: Callable, args_of: Callable, jobs: int, *, desc: str, total: int,
                      show_progress: bool, on_result: Callable, on_error: Callable) -> None:
    """`work(*args_of(item))` for every item: here when jobs <= 1, else in a pool of forked workers.

    The workers report bytes through `report_to_counter`; the bar follows that counter. Results come
    back through `on_result(item, result)`, a PipelineError or OSError through `on_error(item, exc)`,
    so one bad file does not stop the others.
    """
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    init_worker_counter(counter)

    def collect(item, call: Callable) -> None:
        try:
            on_result(item, call())
        except PipelineError as exc:
            on_error(item, exc)
        except OSError as exc:      # disk full, permissions: one line naming the file, like the others
            on_error(item, PipelineError(os_error_message(exc)))

    with progress(total=total, desc=desc, unit="B", unit_scale=True, enabled=show_progress) as bar:
        shown = 0

        def tick() -> None:
            nonlocal shown
            value = counter.value
            bar.update(value - shown)
            shown = value

        if jobs <= 1 or len(items) <= 1:
            for item in items:
                collect(item, lambda item=item: work(*args_of(item)))
                tick()
        else:
            with concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=context,
                                                        initializer=init_worker_counter,
                                                        initargs=(counter,)) as pool:
                futures = {pool.submit(work, *args_of(item)): item for item in items}
                pending = set(futures)
                while pending:
                    finished, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                                return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        collect(futures[future], future.result)
                    tick()
        tick()
