#!/usr/bin/env python3
"""Benchmark `tokenize`: our tokens/s and MB/s beside the raw SentencePiece limit and Megatron's tool.

One run, one corpus, the same cores for every figure:
- corpus: documents sampled from $BENCH_SAMPLES (dolma-cc English web records as they are,
  Japanese lines grouped into documents, Python standard-library source as code), or generated text
  when the samples are absent; written as one JSONL file of --corpus-mb MB.
- raw SentencePiece: the texts already in memory (freshly parsed str objects, as any caller has),
  `sp.encode` in one process (per text and batched, the faster counts), then the same split over N
  forked processes: the all-cores limit.
- ours: scripts/tokenize_file.py --workers N on the JSONL file, end to end (start-up, reading, JSON,
  writing .bin/.idx), with the peak memory of all its processes (PSS sum, RSS sum).
- Megatron: $MEGATRON_PATH/tools/preprocess_data.py --workers N on the same file (outputs compared
  byte for byte with ours); "not run" when MEGATRON_PATH is unset.
Measurements are interleaved and repeated (--repeats); the best of each is shown, so a neighbour's
load spike does not decide a ratio. Tokenizer: --tokenizer-model, else $TOKENIZER_MODEL (the real
LLM-jp v3.1 model for the README's figures), else a small model trained here (then the figures say so).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from pipeline.errors import fail, run_main
from pipeline.paths import REPO_DIR

GOAL_VS_MEGATRON = 2.5
GOAL_VS_LIMIT = 0.85
GOAL_MEMORY = 1 << 30
GOAL_SCALING = 0.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--tokenizer-model", default=os.environ.get("TOKENIZER_MODEL") or None,
                        help="SentencePiece model (default: $TOKENIZER_MODEL, else a small one trained on the corpus)")
    parser.add_argument("--samples", type=Path, default=Path(os.environ.get("BENCH_SAMPLES") or "/nonexistent"),
                        help="folder with dolma-cc/ and ja/ samples (default $BENCH_SAMPLES; none: generated text)")
    parser.add_argument("--corpus-mb", type=float, default=64.0, help="size of the JSONL corpus in MB")
    parser.add_argument("--workers", default=f"1,{cores}" if cores > 1 else "1",
                        help=f"comma-separated worker counts to measure (default 1,{cores}: one and all cores)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each measurement (best shown)")
    parser.add_argument("--megatron-path", default=os.environ.get("MEGATRON_PATH") or None,
                        help="Megatron-LM checkout with tools/preprocess_data.py (default: $MEGATRON_PATH)")
    parser.add_argument("--megatron-python", default=os.environ.get("MEGATRON_PYTHON") or sys.executable,
                        help="interpreter for preprocess_data.py (default: $MEGATRON_PYTHON or this one)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the corpus and outputs "
                                                                    "(default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0, help="corpus sampling seed")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--workers {args.workers!r}: expected comma-separated whole numbers")
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers: every count must be >= 1")
    if args.repeats < 1 or args.corpus_mb <= 0:
        parser.error("--repeats and --corpus-mb must be positive")
    return args


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------
def sample_documents(samples: Path, rng: random.Random) -> dict[str, list[dict]]:
    """Document pools by kind: English web records, Japanese documents, code files."""
    pools: dict[str, list[dict]] = {"en-web": [], "ja": [], "code": []}
    for path in sorted((samples / "dolma-cc").glob("*.jsonl.gz")) if samples.is_dir() else []:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
            pools["en-web"] += [r for r in records if isinstance(r.get("text"), str) and r["text"]]
    for path in sorted((samples / "ja").glob("*.txt")) if samples.is_dir() else []:
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        at = 0
        while at < len(lines):
            size = rng.randint(5, 60)
            pools["ja"].append({"id": f"{path.stem}-{at}", "text": "\n".join(lines[at:at + size])})
            at += size
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:200]:
        source = path.read_text(encoding="utf-8", errors="replace")
        lines = source.splitlines(keepends=True)
        for at in range(0, len(lines), 300):
            pools["code"].append({"id": f"{path.name}-{at}", "text": "".join(lines[at:at + 300])})
    if not pools["en-web"] or not pools["ja"]:
        from pipeline.sample import JAPANESE, WORDS
        for i in range(400):
            pools["en-web"].append({"id": f"gen-en-{i}", "text": " ".join(rng.choice(WORDS) for _ in range(400))})
            pools["ja"].append({"id": f"gen-ja-{i}", "text": "".join(rng.choice(JAPANESE) for _ in range(80))})
    return pools


def build_corpus(path: Path, samples: Path, megabytes: float, seed: int) -> dict:
    rng = random.Random(seed)
    pools = sample_documents(samples, rng)
    weights = {"en-web": 0.45, "ja": 0.35, "code": 0.20}  # shares of text bytes
    target = int(megabytes * 1e6)
    text_bytes = {k: 0 for k in pools}
    written = documents = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            # the kind furthest below its share goes next: shares hold at any size
            kind = min(pools, key=lambda k: text_bytes[k] / weights[k])
            record = rng.choice(pools[kind])
            line = json.dumps(record, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            text_bytes[kind] += len(record["text"].encode("utf-8"))
            documents += 1
    total = sum(text_bytes.values()) or 1
    return {"bytes": written, "documents": documents, "text_bytes": total,
            "shares": {k: v / total for k, v in text_bytes.items()},
            "source": str(samples) if (samples / "dolma-cc").is_dir() else "generated text"}


def train_small_tokenizer(corpus: Path, work: Path) -> Path:
    from pipeline.tokenizer_training import train_sentencepiece
    texts = work / "train.txt"
    with open(corpus, encoding="utf-8") as src, open(texts, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= 2000:
                break
            dst.write(json.loads(line)["text"].replace("\n", " ") + "\n")
    return train_sentencepiece([texts], work / "bench_tokenizer", vocab_size=8000)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    wall: float
    tokens: int = 0
    peak_pss: int = 0
    peak_rss: int = 0
    cpu: float = 0.0
    error: str = ""


class TreeMemory(threading.Thread):
    """Samples the summed PSS and RSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss = 0
        self.done = threading.Event()

    def run(self) -> None:
        import psutil
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            pss = rss = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                pss += getattr(info, "pss", info.rss)
                rss += info.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.done.wait(self.interval)


def run_measured(cmd: list[str], env: dict | None = None) -> Run:
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    monitor = TreeMemory(proc.pid)
    monitor.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    monitor.done.set()
    monitor.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = Run(wall, peak_pss=monitor.peak_pss, peak_rss=monitor.peak_rss, cpu=cpu)
    if proc.returncode != 0:
        run.error = f"exit {proc.returncode}: {(err or out).strip().splitlines()[-1:] or ''}"
    return run


def raw_encode(sp, texts: list[str], batched: bool) -> int:
    if batched:
        return sum(len(a) for a in sp.encode(texts, num_threads=1, return_type="numpy"))
    return sum(len(sp.encode(t)) for t in texts)


def raw_parallel(sp, texts: list[str], processes: int, batched: bool) -> tuple[float, float]:
    """(wall, CPU) seconds for `processes` forked processes to encode an interleaved share of the texts each."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    pids = []
    for i in range(processes):
        pid = os.fork()
        if pid == 0:  # child: encode its share, exit without Python clean-up
            try:
                raw_encode(sp, texts[i::processes], batched)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def count_bin_tokens(prefix: Path) -> int:
    from pipeline.indexed import index_counts
    return index_counts(f"{prefix}.idx")[0]


def same_files(a: Path, b: Path) -> bool:
    return all(Path(f"{a}{s}").read_bytes() == Path(f"{b}{s}").read_bytes() for s in (".bin", ".idx"))


@dataclass
class Results:
    raw_single: dict = field(default_factory=dict)      # method -> best seconds
    raw: dict = field(default_factory=dict)             # workers -> best seconds
    raw_cpu: dict = field(default_factory=dict)         # workers -> least CPU seconds
    ours: dict = field(default_factory=dict)            # workers -> best Run
    megatron: dict = field(default_factory=dict)        # workers -> best Run
    startup: float = float("inf")                       # best wall of ours on an empty input
    startup_cpu: float = float("inf")
    identical_across_workers: bool = True
    identical_to_megatron: dict = field(default_factory=dict)


def better(old: Run | None, new: Run) -> Run:
    if old is None or old.error:
        return new
    if new.error:
        return old
    best = new if new.wall < old.wall else old
    best.cpu = min(old.cpu, new.cpu)
    best.peak_pss = max(old.peak_pss, new.peak_pss)
    best.peak_rss = max(old.peak_rss, new.peak_rss)
    return best


def measure(args: argparse.Namespace, work: Path, corpus: Path, model: str) -> tuple[Results, int]:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model)
    with open(corpus, encoding="utf-8") as handle:
        lines = handle.readlines()

    def fresh_texts() -> list[str]:
        # new str objects for every measurement: a str caches its UTF-8 form once sentencepiece asks
        # for it, and a real caller (ours, Megatron) always hands over freshly parsed strings
        return [json.loads(line)["text"] for line in lines]

    texts = fresh_texts()
    tokenize_py = str(REPO_DIR / "scripts" / "tokenize_file.py")
    results = Results()
    reference: Path | None = None
    expected_tokens = None
    for repeat in range(args.repeats):
        for batched in (False, True):
            texts = fresh_texts()
            start = time.perf_counter()
            pieces = raw_encode(sp, texts, batched)
            seconds = time.perf_counter() - start
            name = "batched" if batched else "per text"
            results.raw_single[name] = min(results.raw_single.get(name, float("inf")), seconds)
            expected_tokens = pieces + 2 * len(texts)  # BOS + EOD per document
        batched = results.raw_single["batched"] <= results.raw_single["per text"]
        empty = work / "empty.jsonl"
        empty.write_bytes(b"")
        startup = run_measured([sys.executable, tokenize_py, "--input", str(empty), "--output-prefix",
                                str(work / "empty"), "--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model",
                                model, "--append-eod", "--workers", str(max(args.worker_counts)), "--quiet"])
        results.startup = min(results.startup, startup.wall)
        results.startup_cpu = min(results.startup_cpu, startup.cpu)
        for workers in args.worker_counts:
            print(f"  repeat {repeat + 1}/{args.repeats}, {workers} worker(s): raw", end="", flush=True,
                  file=sys.stderr)
            texts = fresh_texts()
            wall, cpu = raw_parallel(sp, texts, workers, batched)
            results.raw[workers] = min(results.raw.get(workers, float("inf")), wall)
            results.raw_cpu[workers] = min(results.raw_cpu.get(workers, float("inf")), cpu)
            print(", ours", end="", flush=True, file=sys.stderr)
            prefix = work / f"ours-w{workers}"
            run = run_measured([sys.executable, tokenize_py, "--input", str(corpus), "--output-prefix", str(prefix),
                                "--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", model, "--append-eod",
                                "--workers", str(workers), "--quiet"])
            out = Path(f"{prefix}_text_document")
            if not run.error:
                run.tokens = count_bin_tokens(out)
                if reference is None:
                    reference = out
                elif not same_files(reference, out):
                    results.identical_across_workers = False
            results.ours[workers] = better(results.ours.get(workers), run)
            if args.megatron_path:
                print(", Megatron", end="", flush=True, file=sys.stderr)
                mprefix = work / f"megatron-w{workers}"
                script = Path(args.megatron_path) / "tools" / "preprocess_data.py"
                env = {"PYTHONPATH": os.pathsep.join(filter(None, [args.megatron_path,
                                                                   os.environ.get("PYTHONPATH")]))}
                mrun = run_measured([args.megatron_python, str(script), "--input", str(corpus),
                                     "--output-prefix", str(mprefix), "--tokenizer-type", "Llama2Tokenizer",
                                     "--tokenizer-model", model, "--append-eod", "--workers", str(workers)], env)
                mout = Path(f"{mprefix}_text_document")
                if not mrun.error and Path(f"{mout}.idx").is_file():
                    mrun.tokens = count_bin_tokens(mout)
                    if reference is not None:
                        results.identical_to_megatron[workers] = same_files(reference, mout)
                elif not mrun.error:
                    mrun.error = "no .idx written"
                results.megatron[workers] = better(results.megatron.get(workers), mrun)
            print("", file=sys.stderr)
    return results, expected_tokens or 0


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def mib(value: int) -> str:
    return f"{value / (1 << 20):,.0f} MiB"


def report(args, corpus_info: dict, model: str, real: bool, results: Results, expected_tokens: int) -> None:
    cores = len(os.sched_getaffinity(0))
    tokens = expected_tokens
    text_mb = corpus_info["text_bytes"] / 1e6
    input_mb = corpus_info["bytes"] / 1e6
    shares = ", ".join(f"{k} {v:.0%}" for k, v in corpus_info["shares"].items())
    print(f"\n== tokenize benchmark ({cores} cores; load average {os.getloadavg()[0]:.1f} at the end) ==")
    print(f"corpus: {input_mb:.1f} MB JSONL ({text_mb:.1f} MB of text: {shares}), "
          f"{corpus_info['documents']:,} documents, {tokens:,} tokens; from {corpus_info['source']}")
    print(f"tokenizer: {model}{'' if real else '  (NOT the real LLM-jp tokenizer: a small model trained here)'}; "
          f"Llama2Tokenizer, [BOS] + pieces + [EOD]")
    print(f"best of {args.repeats} interleaved runs; MB/s = JSONL input bytes per second "
          f"(raw SentencePiece: the same documents' text, already in memory); our start-up "
          f"(empty input, imports, model load, workers) = {results.startup:.2f}s\n")
    header = ("what", "workers", "wall s", "tokens/s", "MB/s", "vs limit", "CPU s", "peak memory PSS / RSS (all procs)")
    rows = []
    single = min(results.raw_single.values())
    for name, seconds in sorted(results.raw_single.items()):
        rows.append((f"raw SentencePiece, 1 process, {name}", "1", f"{seconds:.2f}", f"{tokens / seconds:,.0f}",
                     f"{input_mb / seconds:.1f}", f"{single / seconds:.2f} of 1-proc best", "", ""))
    for workers, seconds in sorted(results.raw.items()):
        rows.append(("raw SentencePiece, forked processes = LIMIT", str(workers), f"{seconds:.2f}",
                     f"{tokens / seconds:,.0f}", f"{input_mb / seconds:.1f}", "1.00",
                     f"{results.raw_cpu[workers]:.2f}", ""))
    for label, table in (("ours: scripts/tokenize_file.py", results.ours),
                         ("Megatron tools/preprocess_data.py", results.megatron)):
        for workers, run in sorted(table.items()):
            if run.error:
                rows.append((label, str(workers), "failed", run.error[:60], "", "", "", ""))
                continue
            limit = results.raw.get(workers)
            rows.append((label, str(workers), f"{run.wall:.2f}", f"{run.tokens / run.wall:,.0f}",
                         f"{input_mb / run.wall:.1f}", f"{limit / run.wall:.2f}" if limit else "",
                         f"{run.cpu:.2f}", f"{mib(run.peak_pss)} / {mib(run.peak_rss)}"))
    for workers, run in sorted(results.ours.items()):
        steady = run.wall - results.startup
        if not run.error and steady > 0:
            limit = results.raw.get(workers)
            rows.append(("ours, start-up excluded (a large file)", str(workers), f"{steady:.2f}",
                         f"{run.tokens / steady:,.0f}", f"{input_mb / steady:.1f}",
                         f"{limit / steady:.2f}" if limit else "", "", ""))
    if not args.megatron_path:
        rows.append(("Megatron tools/preprocess_data.py", "-", "not run: MEGATRON_PATH unset", "", "", "", "", ""))
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())

    print()
    ours_ok = {w: r for w, r in results.ours.items() if not r.error}
    counts_ok = all(r.tokens == tokens for r in ours_ok.values())
    print(f"check: tokens written = raw pieces + BOS + EOD per document: {'yes' if counts_ok else 'NO'}; "
          f"outputs identical across worker counts: {'yes' if results.identical_across_workers else 'NO'}")
    if results.identical_to_megatron:
        same = all(results.identical_to_megatron.values())
        print(f"check: ours byte-identical to Megatron's .bin/.idx: {'yes' if same else 'NO'}")
    for workers, run in sorted(ours_ok.items()):
        steady = run.cpu - results.startup_cpu
        print(f"CPU efficiency, {workers} worker(s): raw SentencePiece CPU / ours (all processes) = "
              f"{results.raw_cpu[workers] / run.cpu:.2f} with start-up, "
              f"{results.raw_cpu[workers] / steady if steady > 0 else float('nan'):.2f} without")
    if 1 in ours_ok and len(ours_ok) > 1:
        base = tokens / ours_ok[1].wall
        raw_base = tokens / results.raw[1]
        for workers, run in sorted(ours_ok.items()):
            if workers == 1:
                continue
            ours_scale = tokens / run.wall / base
            raw_scale = tokens / results.raw[workers] / raw_base
            print(f"scaling: {workers} workers = {ours_scale:.2f}x of 1 worker ({ours_scale / workers:.2f} of linear; "
                  f"raw SentencePiece {raw_scale:.2f}x)", end="")
            if workers in results.megatron and 1 in results.megatron and not results.megatron[workers].error:
                meg = results.megatron[1].wall / results.megatron[workers].wall
                print(f"; Megatron {meg:.2f}x", end="")
            print()
    top = max(ours_ok) if ours_ok else None
    if top is not None:
        run = ours_ok[top]
        share = results.raw[top] / run.wall
        verdicts = [f">= {GOAL_VS_LIMIT}x of the raw limit on {top} workers: "
                    f"{share:.2f} {'met' if share >= GOAL_VS_LIMIT else 'NOT met'}",
                    f"peak memory < 1 GiB (PSS): {mib(max(r.peak_pss for r in ours_ok.values()))} "
                    f"{'met' if max(r.peak_pss for r in ours_ok.values()) < GOAL_MEMORY else 'NOT met'}"]
        meg = results.megatron.get(top)
        if meg is not None and not meg.error:
            ratio = meg.wall / run.wall
            verdicts.insert(0, f">= {GOAL_VS_MEGATRON}x Megatron on {top} workers: {ratio:.2f} "
                               f"{'met' if ratio >= GOAL_VS_MEGATRON else 'NOT met'}")
        else:
            verdicts.insert(0, f">= {GOAL_VS_MEGATRON}x Megatron: not measured (MEGATRON_PATH unset or failed)")
        if cores < 16:
            verdicts.append(f"16-worker scaling: not measurable on {cores} cores (run with --workers 1,2,4,8,16 "
                            "on a 16-core host)")
        for line in verdicts:
            print(f"goal: {line}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_tokenize."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "corpus.jsonl"
        print(f"bench_tokenize: building a {args.corpus_mb:g} MB corpus in {work}", file=sys.stderr)
        info = build_corpus(corpus, args.samples, args.corpus_mb, args.seed)
        model = args.tokenizer_model
        real = model is not None
        if model is None:
            print("bench_tokenize: no TOKENIZER_MODEL: training a small one",
                  file=sys.stderr)
            model = str(train_small_tokenizer(corpus, work))
        elif not Path(model).is_file():
            fail(f"{model}: tokenizer model not found")
        if args.megatron_path and not (Path(args.megatron_path) / "tools" / "preprocess_data.py").is_file():
            fail(f"MEGATRON_PATH={args.megatron_path}: no tools/preprocess_data.py there")
        results, tokens = measure(args, work, corpus, model)
        report(args, info, model, real, results, tokens)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_main(main)
