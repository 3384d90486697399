#!/usr/bin/env python3
"""Benchmark extract and merge against `zstd -d`, `gzip -dc` and `cat` on the same files, in one run.

Targets: extract of one .zst stream >= 0.9x the throughput of `zstd -d`; extraction scales
with cores across files; merge without validation >= 0.8x `cat`; memory flat whatever the size.
Every timing writes a fresh output file and includes its fsync (as the pipeline does; the reference
commands get the same fsync), best of --repeat runs, interleaved. The corpus is built from real
Dolma documents when BENCH_SAMPLES names a folder holding a dolma-cc/ folder of them (their vocabulary,
shuffled into new documents), else from generated text.

    .venv/bin/python bench/bench_data.py                 # ~1-3 minutes on 2 cores
    .venv/bin/python bench/bench_data.py --size-mb 2048 --files 8 --repeat 5
"""
from __future__ import annotations

import argparse
import filecmp
import gzip
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from pipeline.atomic import atomic_output
from pipeline.datasets import load_dataset
from pipeline.errors import run_main
from pipeline.extraction import parse_jobs, run_extract
from pipeline.paths import REPO_DIR
from pipeline.sample import WORDS
from pipeline.streams import MergeWriter, extract_file

# real Dolma documents, when the environment names where they are (BENCH_SAMPLES=<folder with dolma-cc/>)
SHARED_SAMPLES = Path(os.environ.get("BENCH_SAMPLES") or "/nonexistent") / "dolma-cc"
BLOCK_MB = 16   # distinct text per block; larger files repeat blocks (beyond zstd's match window)


def vocabulary() -> tuple[list[str], str]:
    words: list[str] = []
    if SHARED_SAMPLES.is_dir():
        for path in sorted(SHARED_SAMPLES.glob("*.jsonl*")):
            raw = path.read_bytes()
            if path.name.endswith(".gz"):
                raw = gzip.decompress(raw)
            elif path.name.endswith(".zst"):
                raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
            for line in raw.decode("utf-8", "replace").splitlines():
                try:
                    words.extend(json.loads(line).get("text", "").split())
                except (json.JSONDecodeError, AttributeError):
                    continue
    if len(words) > 1000:
        return words, f"vocabulary of the Dolma documents in {SHARED_SAMPLES}"
    rng = random.Random(1)
    extra = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(5000)]
    return list(WORDS) + extra, "generated words (no BENCH_SAMPLES)"


def make_block(words: list[str], size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out, total, n = [], 0, 0
    while total < size:
        text = " ".join(rng.choices(words, k=rng.randint(50, 400)))
        line = json.dumps({"id": f"bench-{seed}-{n}", "text": text, "source": "bench"}).encode() + b"\n"
        out.append(line)
        total += len(line)
        n += 1
    return b"".join(out)


def write_corpus(path: Path, size: int, words: list[str], seed: int) -> None:
    block = make_block(words, min(size, BLOCK_MB << 20), seed)
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            handle.write(block)
            written += len(block)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, out: Path | None) -> float:
    if out is not None and out.exists():
        out.unlink()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(candidates: dict[str, tuple], repeat: int) -> dict[str, float]:
    """candidates: name -> (function, output path); runs them interleaved, returns the best wall seconds.

    The CPU seconds of each best run are kept in CPU[name] (user + system, this process and children).
    """
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, (fn, out) in candidates.items():
            cpu = cpu_seconds()
            wall = timed(fn, out)
            results[name].append((wall, cpu_seconds() - cpu))
    for name, runs in results.items():
        CPU[name] = min(runs)[1]
    return {name: min(runs)[0] for name, runs in results.items()}


CPU: dict[str, float] = {}


def shell(cmd: str, out: Path | None = None):
    def run() -> None:
        subprocess.run(cmd, shell=True, check=True)
        if out is not None:
            fsync_path(out)
    return run


def peak_rss_mb(cmd: list[str]) -> float:
    """The command prints its own VmHWM (peak resident set) as its last line."""
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


DESCRIPTION = """name: bench
hub: {repo_id: bench/bench, revision: main}
sources:
  web:
    files: data/{part}/*
    output: web/{part}.jsonl
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="decompressed size of the single-stream file (MB)")
    parser.add_argument("--files", type=int, default=4, help="files of size/files each for the scaling and merge runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is kept)")
    parser.add_argument("--jobs", default="auto", help="workers for the scaling run ('auto' = every core)")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    size = args.size_mb << 20
    jobs = parse_jobs(args.jobs)
    work = Path(tempfile.mkdtemp(prefix="bench_data.", dir=args.work_dir))
    rows: list[tuple[str, str, str, str, str]] = []   # what, ours, reference, ratio, target
    missed: list[str] = []

    def row(what: str, ours_s: float, ref_s: float | None, nbytes: int, target: float | None, ref_name: str,
            ref_key: str = "") -> None:
        ours = nbytes / ours_s / 1e6
        if ref_s is None:
            rows.append((what, f"{ours:,.0f} MB/s", f"{ref_name}: not installed", "-", "-"))
            return
        ref = nbytes / ref_s / 1e6
        ratio = ours / ref
        verdict = "-" if target is None else (f">= {target:.1f}x ok" if ratio >= target else f">= {target:.1f}x MISSED")
        if target is not None and ratio < target:
            missed.append(what)
        cpu = f" [cpu {CPU['ours']:.2f}s vs {CPU[ref_key]:.2f}s]" if ref_key in CPU and CPU[ref_key] > 0 else ""
        rows.append((what, f"{ours:,.0f} MB/s", f"{ref:,.0f} MB/s ({ref_name})", f"{ratio:.2f}x", verdict + cpu))

    try:
        words, origin = vocabulary()
        print(f"bench_data: corpus from the {origin}; {args.size_mb} MB single stream, {args.files} files, "
              f"best of {args.repeat}, {jobs} worker(s), scratch {work}", flush=True)
        plain = work / "single.jsonl"
        write_corpus(plain, size, words, seed=0)
        nbytes = plain.stat().st_size
        zst = work / "single.jsonl.zst"
        zst.write_bytes(b"")
        with open(plain, "rb") as src, open(zst, "wb") as dst:
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
        gz = work / "single.jsonl.gz"
        with open(plain, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        print(f"  .zst {zst.stat().st_size / 1e6:.0f} MB, .gz {gz.stat().st_size / 1e6:.0f} MB "
              f"(ratio {nbytes / zst.stat().st_size:.1f}x / {nbytes / gz.stat().st_size:.1f}x)", flush=True)

        out_ours, out_ref = work / "ours.jsonl", work / "ref.jsonl"

        def ours_zstd() -> None:
            with atomic_output(out_ours, "wb") as handle:
                extract_file(zst, handle, "zstd", "jsonl")

        def ours_gzip() -> None:
            with atomic_output(out_ours, "wb") as handle:
                extract_file(gz, handle, "gzip", "jsonl")

        have_zstd, have_gzip = shutil.which("zstd"), shutil.which("gzip")
        candidates = {"ours": (ours_zstd, out_ours)}
        if have_zstd:
            candidates["zstd"] = (shell(f"zstd -d -q -f '{zst}' -o '{out_ref}'", out_ref), out_ref)
        best = best_of(candidates, args.repeat)
        if not filecmp.cmp(out_ours, plain, shallow=False):
            raise RuntimeError("zstd extraction differs from the source")
        row("extract one .zst stream", best["ours"], best.get("zstd"), nbytes, 0.9, "zstd -d", "zstd")
        if not have_zstd:
            print("  note: zstd is not installed (Debian: apt-get install zstd); its column is skipped")

        candidates = {"ours": (ours_gzip, out_ours)}
        if have_gzip:
            candidates["gzip"] = (shell(f"gzip -dc '{gz}' > '{out_ref}'", out_ref), out_ref)
        best = best_of(candidates, max(1, args.repeat - 1))
        row("extract one .gz stream", best["ours"], best.get("gzip"), nbytes, None, "gzip -dc", "gzip")
        out_ours.unlink(missing_ok=True)
        out_ref.unlink(missing_ok=True)

        # --- extraction across files: 1 worker vs all workers ------------------------------------------
        exp = work / "exp"
        (work / "descriptions").mkdir()
        description = work / "descriptions" / "bench.yaml"
        description.write_text(DESCRIPTION)
        dataset = load_dataset(description)
        per_file = max(size // args.files, 1 << 20)
        inputs = []
        for index in range(args.files):
            folder = exp / "bench" / "data" / f"{index:04d}"
            folder.mkdir(parents=True)
            path = folder / "part.jsonl"
            write_corpus(path, per_file, words, seed=index + 1)
            with open(path, "rb") as src, open(folder / "part.json.zst", "wb") as dst:
                zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
            inputs.append(path)
            path.rename(work / f"input-{index}.jsonl")
        files_bytes = sum((work / f"input-{i}.jsonl").stat().st_size for i in range(args.files))
        state = exp / ".state" / "bench" / "extract"

        def extract_with(workers: int):
            def run() -> None:
                shutil.rmtree(exp / "bench-extracted", ignore_errors=True)
                shutil.rmtree(state, ignore_errors=True)
                sink = io.StringIO()
                stdout, sys.stdout = sys.stdout, sink
                try:
                    run_extract(exp, dataset, jobs=workers, show_progress=False)
                finally:
                    sys.stdout = stdout
            return run

        best = best_of({"one": (extract_with(1), None), "all": (extract_with(jobs), None)}, args.repeat)
        speedup = best["one"] / best["all"]
        rows.append((f"extract {args.files} .zst files", f"{files_bytes / best['all'] / 1e6:,.0f} MB/s "
                     f"({jobs} workers)", f"{files_bytes / best['one'] / 1e6:,.0f} MB/s (1 worker)",
                     f"{speedup:.2f}x", f"scales: {speedup:.2f}x on {jobs} cores"))

        # --- merge vs cat --------------------------------------------------------------------------------
        merge_inputs = [work / f"input-{i}.jsonl" for i in range(args.files)]

        def ours_merge(validate: bool = False):
            def run() -> None:
                with atomic_output(out_ours, "wb") as handle:
                    handle.flush()
                    writer = MergeWriter(handle.fileno(), validate=validate)
                    for path in merge_inputs:
                        writer.append(path)
            return run

        quoted = " ".join(f"'{p}'" for p in merge_inputs)
        best = best_of({"ours": (ours_merge(), out_ours), "cat": (shell(f"cat {quoted} > '{out_ref}'", out_ref),
                                                                  out_ref)}, args.repeat)
        if not filecmp.cmp(out_ours, out_ref, shallow=False):
            raise RuntimeError("merge output differs from cat's")
        row(f"merge {args.files} files (no validation)", best["ours"], best["cat"], files_bytes, 0.8, "cat", "cat")
        validate_s = timed(ours_merge(True), out_ours)
        rows.append(("merge with VALIDATE=1", f"{files_bytes / validate_s / 1e6:,.0f} MB/s", "-", "-",
                     "json.loads per line"))
        out_ours.unlink(missing_ok=True)
        out_ref.unlink(missing_ok=True)

        # --- memory: peak RSS on a small and on the large file ---------------------------------------------
        small = work / "small.jsonl.zst"
        small_plain = work / "small.jsonl"
        write_corpus(small_plain, max(size // 16, 1 << 20), words, seed=99)
        with open(small_plain, "rb") as src, open(small, "wb") as dst:
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
        probe = ("import sys; sys.path.insert(0, {scripts!r}); from pathlib import Path;"
                 "from pipeline.atomic import atomic_output;"
                 "from pipeline.streams import extract_file, MergeWriter\n"
                 "with atomic_output({out!r}, 'wb') as h:\n"
                 "    extract_file(Path({src!r}), h, 'zstd', 'jsonl')\n"
                 "with atomic_output({out2!r}, 'wb') as h:\n"
                 "    h.flush(); MergeWriter(h.fileno()).append(Path({out!r}))\n"
                 "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n")
        rss = {}
        for name, src in (("small", small), ("large", zst)):
            code = probe.format(scripts=str(REPO_DIR / "scripts"), src=str(src), out=str(work / f"rss-{name}.jsonl"),
                                out2=str(work / f"rss-{name}-merged.jsonl"))
            rss[name] = peak_rss_mb([sys.executable, "-c", code])
            for leftover in work.glob(f"rss-{name}*"):
                leftover.unlink()
        flat = rss["large"] <= rss["small"] * 1.25 + 8
        small_mb, large_mb = small_plain.stat().st_size / 1e6, nbytes / 1e6
        rows.append(("peak RSS extract+merge", f"{rss['large']:.0f} MB on {large_mb:.0f} MB",
                     f"{rss['small']:.0f} MB on {small_mb:.0f} MB", f"{rss['large'] / rss['small']:.2f}x",
                     "flat ok" if flat else "flat MISSED"))
        if not flat:
            missed.append("memory")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header = ("measurement", "ours", "reference", "ratio", "target")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    print()
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    print(f"\n(usage {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak RSS of the bench itself; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other work on the machine lowers "
          "our figures and the references alike)")
    if missed:
        print(f"targets missed: {', '.join(missed)}")
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    run_main(main)
