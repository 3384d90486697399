#!/usr/bin/env python3
"""Benchmark `make hf-tokenizer` with a corpus check: the folder built from a SentencePiece model and checked id
for id on the probe set and the benchmark corpus (bench_tokenize.py's: English web, Japanese, code).

Prints the probe count, the corpus size (documents, characters), how many texts are id-equal (and SentencePiece's
float32 ties, see scripts/pipeline/tokenizer_check.py), the wall time of the whole `make hf-tokenizer` (start-up,
build, check), and beside it the references: SentencePiece alone encoding the corpus, and how many documents a
`.model`-only folder (tokenizer.model + a LlamaTokenizer config, what transformers converts itself) gets right.
Tokenizer: --tokenizer-model, else $TOKENIZER_MODEL (the real LLM-jp v3.1 model for the README's figures), else a
small model trained here (then the figures say so).

    bench_hf_tokenizer.py --tokenizer-model llm-jp-tokenizer-100k.ver3.1.model --samples ../shared/samples
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from bench_tokenize import build_corpus, train_small_tokenizer  # noqa: E402  (bench/ is the script's folder)
from pipeline.errors import fail, run_main  # noqa: E402
from pipeline.hf_tokenizer import BUILD_RECORD  # noqa: E402
from pipeline.paths import REPO_DIR  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--tokenizer-model", default=os.environ.get("TOKENIZER_MODEL") or None,
                        help="SentencePiece model (default: $TOKENIZER_MODEL, else a small one trained on the corpus)")
    parser.add_argument("--samples", type=Path, default=Path(os.environ.get("BENCH_SAMPLES") or "/nonexistent"),
                        help="folder with dolma-cc/ and ja/ samples (default $BENCH_SAMPLES; none: generated text)")
    parser.add_argument("--corpus-mb", type=float, default=20.0, help="size of the JSONL corpus in MB")
    parser.add_argument("--seed", type=int, default=0, help="corpus sampling seed")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the corpus and folders here (default: a tmp dir)")
    args = parser.parse_args(argv)
    if args.corpus_mb <= 0:
        parser.error("--corpus-mb must be positive")
    return args


def model_only_equal(model: Path, folder: Path, texts: list[str]) -> int:
    """Documents a `.model`-only folder encodes as SentencePiece does (transformers converts tokenizer.model)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": False, "add_eos_token": False}))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    return sum(a == b for a, b in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], sp.encode(texts)))


def bench(args: argparse.Namespace, work: Path) -> None:
    import sentencepiece as spm
    corpus = work / "corpus.jsonl"
    info = build_corpus(corpus, args.samples, args.corpus_mb, args.seed)
    model = Path(args.tokenizer_model) if args.tokenizer_model else train_small_tokenizer(corpus, work)
    if not model.is_file():
        fail(f"{model}: tokenizer model not found")
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    out = work / "hf-tokenizer"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run(["make", "--no-print-directory", "-C", str(REPO_DIR), "hf-tokenizer",
                             f"TOKENIZER_MODEL={model.absolute()}", f"HF_TOKENIZER_DIR={out}",
                             f"TOKENIZER_CHECK_DOCS={corpus}"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        fail(f"make hf-tokenizer exited {result.returncode}:\n{result.stderr[-3000:]}")
    check = json.loads((out / BUILD_RECORD).read_text())["tokenizer_check"]
    sp = spm.SentencePieceProcessor(model_file=str(model))
    started = time.perf_counter()
    sp.encode(texts)
    sp_seconds = time.perf_counter() - started
    before = model_only_equal(model, work / "model-only", texts)

    total = check["probes"] + check["documents"]
    shares = ", ".join(f"{kind} {share:.0%}" for kind, share in info["shares"].items())
    print(f"\nhf-tokenizer benchmark: {model.name}{'' if args.tokenizer_model else ' (trained here)'}; corpus "
          f"{info['bytes'] / 1e6:.1f} MB from {info['source']} ({shares})")
    print(f"  probes                 {check['probes']}")
    print(f"  corpus                 {check['documents']:,} documents, {check['characters']:,} characters")
    ties = f" + {check['float32_ties']} float32 tie(s) of SentencePiece" if check["float32_ties"] else ""
    verdict = "all equal" if check["equal"] == total else f"{check['equal']:,} of {total:,} id-equal{ties}"
    print(f"  id-equal               {verdict}")
    if check["first_float32_tie"]:
        tie = check["first_float32_tie"]
        print(f"  first tie              {tie['text']}, token {tie['at_token']}: Hugging Face's path scores "
              f"{tie['score_gain']:.4f} higher at a path score of {tie['path_score']:,.0f} (float32 step "
              f"{tie['float32_step']:g})")
    print(f"  make hf-tokenizer      {wall:.1f} s wall (of which the probe and corpus check {check["seconds"]:.1f} s)")
    print(f"  reference: SentencePiece alone encodes the corpus in {sp_seconds:.1f} s; a .model-only folder "
          f"(LlamaTokenizer) gets {before:,} of {len(texts):,} documents right")
    print(f"  versions: {check['versions']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        bench(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench_hf_tokenizer.") as tmp:
            bench(args, Path(tmp))
    return 0


if __name__ == "__main__":
    run_main(main)
