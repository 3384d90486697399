"""scripts/tokenize_file.py: byte-identical to Megatron (megatron-core's builder as the oracle), every input
format, bad input, crashes and kills."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import SCRIPTS, run_script, shared_path
from tokenize_helpers import (assert_megatron_reads, assert_same_files, big_sp_model, corpus_texts, hf_ids,
                              llama2_ids, megatron_build, megatron_sentencepiece_ids, tiny_hf_tokenizer,
                              tiny_sp_model, write_jsonl)

with warnings.catch_warnings():  # megatron-core warns that TransformerEngine/Apex are absent
    warnings.simplefilter("ignore")
    pytest.importorskip("megatron.core.datasets.indexed_dataset")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "tokenize-models"


@pytest.fixture(scope="module")
def sp_model(models) -> Path:
    return tiny_sp_model(models)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = corpus_texts()
    path = write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", texts, blank_every=17)
    return path, texts


def tokenize(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return run_script("tokenize_file", *args, "--quiet", check=check, **kwargs)


def common(model: Path, kind: str = "Llama2Tokenizer") -> list[str]:
    return ["--tokenizer-type", kind, "--tokenizer-model", str(model)]


def provenance(prefix: Path, key: str = "text") -> dict:
    return json.loads(Path(f"{prefix}_{key}_document.provenance.json").read_text())


# ---------------------------------------------------------------------------------------------
# Same bytes as Megatron
# ---------------------------------------------------------------------------------------------
def test_llama2_is_byte_identical_to_megatron(tmp_path, sp_model, corpus):
    path, texts = corpus
    out = tmp_path / "ours" / "corpus"
    # tiny chunks and two workers: many chunks in flight, the order must still be the input's
    tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--append-eod",
             "--workers", "2", "--chunk-bytes", "3000")
    docs = llama2_ids(sp_model, texts)
    expected = megatron_build(tmp_path / "megatron" / "corpus_text_document", docs, 400)
    ours = Path(f"{out}_text_document")
    assert_same_files(ours, expected)
    assert_megatron_reads(ours, docs)
    assert docs[0] == [1, 2], "empty text is [BOS, EOD] with Llama2Tokenizer"
    assert max(map(len, docs)) > 60_000, "the very long document is in the corpus"
    record = provenance(out)
    assert record["documents"] == len(texts) and record["tokens"] == sum(map(len, docs))
    assert record["blank_lines"] == len(texts) // 17 and record["dtype"] == "uint16"
    assert record["tokenizer"]["sha256"] and record["tokenizer"]["bos"] == 1 and record["tokenizer"]["eod"] == 2
    assert record["input_bytes"] == path.stat().st_size and record["git_commit"]


def test_no_bos_gives_the_newer_upstream_layout(tmp_path, sp_model, corpus):
    path, texts = corpus
    out = tmp_path / "nobos"
    tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--append-eod", "--no-bos",
             "--workers", "1")
    docs = llama2_ids(sp_model, texts, bos=False)
    assert docs[0] == [], "an empty text is an empty document without BOS"
    assert_same_files(Path(f"{out}_text_document"), megatron_build(tmp_path / "m" / "x", docs, 400))


def test_without_append_eod(tmp_path, sp_model, corpus):
    path, texts = corpus
    out = tmp_path / "noeod"
    tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--workers", "2")
    docs = llama2_ids(sp_model, texts, append_eod=False)
    assert_same_files(Path(f"{out}_text_document"), megatron_build(tmp_path / "m" / "x", docs, 400))


def test_sentencepiece_tokenizer_type_splits_megatron_specials(tmp_path, sp_model, corpus):
    path, texts = corpus
    out = tmp_path / "sp"
    tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model, "SentencePieceTokenizer"),
             "--append-eod", "--workers", "2", "--chunk-bytes", "5000")
    docs, vocab = megatron_sentencepiece_ids(sp_model, texts)
    import sentencepiece as spm
    pieces = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    assert vocab == pieces + 5, "<CLS> <SEP> <EOD> <MASK> <PAD> get ids after the model's pieces"
    assert any(i >= pieces for d in docs for i in d), "special strings in the text became their ids"
    assert_same_files(Path(f"{out}_text_document"), megatron_build(tmp_path / "m" / "x", docs, vocab))


def test_int32_vocabulary(tmp_path, models, corpus):
    path, texts = corpus
    model = big_sp_model(models)
    out = tmp_path / "big"
    tokenize("--input", str(path), "--output-prefix", str(out), *common(model), "--append-eod", "--workers", "2")
    docs = llama2_ids(model, texts)
    ours = Path(f"{out}_text_document")
    assert_same_files(ours, megatron_build(tmp_path / "m" / "x", docs, 66_000))
    assert Path(f"{ours}.idx").read_bytes()[17] == 4, "dtype code 4 (int32) for a 66,000-piece vocabulary"
    assert_megatron_reads(ours, docs)


def test_huggingface_tokenizer(tmp_path, models, corpus):
    path, texts = corpus
    folder = tiny_hf_tokenizer(models)
    out = tmp_path / "hf"
    tokenize("--input", str(path), "--output-prefix", str(out), *common(folder, "HuggingFaceTokenizer"),
             "--append-eod", "--workers", "2", "--chunk-bytes", "20000")
    docs, vocab = hf_ids(folder, texts)
    assert docs[1][0] == 0, "the tokenizer's own <s> is kept, as Megatron's AutoTokenizer call keeps it"
    ours = Path(f"{out}_text_document")
    assert_same_files(ours, megatron_build(tmp_path / "m" / "x", docs, vocab))
    assert_megatron_reads(ours, docs)


def test_several_json_keys_one_output_each(tmp_path, sp_model):
    rows = [{"text": f"text {i} 東京", "title": f"title {i}" if i % 3 else ""} for i in range(50)]
    path = tmp_path / "keys.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "keys"
    tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--append-eod",
             "--json-keys", "text", "title", "--workers", "2", "--chunk-bytes", "100")
    for key in ("text", "title"):
        docs = llama2_ids(sp_model, [r[key] for r in rows])
        assert_same_files(Path(f"{out}_{key}_document"), megatron_build(tmp_path / "m" / key, docs, 400))
        assert provenance(out, key)["tokens"] == sum(map(len, docs))


def test_real_tokenizer_exact_ids_on_the_samples(tmp_path):
    model = shared_path("tokenizers", "llm-jp-tokenizer-100k.ver3.1.model")
    sample = shared_path("samples", "dolma-cc", "cc_en_head-0091.jsonl.gz")
    with gzip.open(sample, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    ja = shared_path("samples", "ja", "jsts-v1.1-train.txt").read_text(encoding="utf-8").splitlines()[:3000]
    texts += ["\n".join(ja[i:i + 30]) for i in range(0, len(ja), 30)]
    ja_path = write_jsonl(tmp_path / "ja.jsonl", texts[-100:], extra=False)
    for name, path, want in (("en", sample, texts[:-100]), ("ja", ja_path, texts[-100:])):
        out = tmp_path / name
        tokenize("--input", str(path), "--output-prefix", str(out), *common(model), "--append-eod", "--workers", "2")
        docs = llama2_ids(model, want)
        ours = Path(f"{out}_text_document")
        assert_same_files(ours, megatron_build(tmp_path / "m" / name, docs, 98_452))
        assert Path(f"{ours}.idx").read_bytes()[17] == 4, "98,452 pieces: int32"


# ---------------------------------------------------------------------------------------------
# Input formats
# ---------------------------------------------------------------------------------------------
def test_gzip_zstd_and_parquet_inputs_give_the_same_files(tmp_path, sp_model, corpus):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    path, texts = corpus
    data = path.read_bytes()
    inputs = {"jsonl": path, "gz": tmp_path / "c.jsonl.gz", "zst": tmp_path / "c.jsonl.zst",
              "parquet": tmp_path / "c.parquet"}
    inputs["gz"].write_bytes(gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2:]))
    inputs["zst"].write_bytes(zstandard.ZstdCompressor().compress(data))
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), inputs["parquet"],
                   row_group_size=40)
    outputs = {}
    for name, source in inputs.items():
        out = tmp_path / f"out-{name}"
        tokenize("--input", str(source), "--output-prefix", str(out), *common(sp_model), "--append-eod",
                 "--workers", "2", "--chunk-bytes", "50000")
        outputs[name] = Path(f"{out}_text_document")
    for name in ("gz", "zst", "parquet"):
        assert_same_files(outputs[name], outputs["jsonl"])


def test_truncated_archive_fails_naming_the_file(tmp_path, sp_model, corpus):
    path, _ = corpus
    broken = tmp_path / "cut.jsonl.gz"
    broken.write_bytes(gzip.compress(path.read_bytes())[:-1000])
    result = tokenize("--input", str(broken), "--output-prefix", str(tmp_path / "cut"), *common(sp_model),
                      "--workers", "2", check=False)
    assert result.returncode == 1 and f"{broken}: cannot decompress" in result.stderr
    assert not list(tmp_path.glob("cut_text_document*")) and not list(tmp_path.glob(".cut*"))


def test_last_line_without_newline_and_crlf_lines(tmp_path, sp_model):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "one"}\r\n\r\n{"text": "two"}\n{"text": "three"}')
    out = tmp_path / "x"
    tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--append-eod")
    docs = llama2_ids(sp_model, ["one", "two", "three"])
    assert_same_files(Path(f"{out}_text_document"), megatron_build(tmp_path / "m" / "x", docs, 400))
    assert provenance(out)["blank_lines"] == 1


# ---------------------------------------------------------------------------------------------
# Bad input: file:line and a non-zero exit, or skipped and counted
# ---------------------------------------------------------------------------------------------
BAD_LINES = {
    "invalid_json": b'{"text": "unterminated',
    "missing_key": b'{"body": "no text key"}',
    "non_string": b'{"text": ["a", "list"]}',
    "invalid_utf8": b'{"text": "bad \xff\xfe bytes"}',
    "surrogate": b'{"text": "lone \\ud800 surrogate"}',
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_line_stops_with_file_and_line(tmp_path, sp_model, kind):
    good = [json.dumps({"text": f"good {i}"}).encode() for i in range(30)]
    lines = good[:20] + [b""] + [BAD_LINES[kind]] + good[20:]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "bad"
    result = tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--append-eod",
                      "--workers", "2", "--chunk-bytes", "64", check=False)
    assert result.returncode == 1, result.stderr
    assert f"{path}:22:" in result.stderr, result.stderr
    assert not list(tmp_path.glob("bad_text_document*")), "nothing under the final names, no temporaries"
    assert not list(tmp_path.glob(".bad_text_document*"))

    skipped = tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--append-eod",
                       "--workers", "2", "--chunk-bytes", "64", "--on-bad-line", "skip")
    record = provenance(out)
    counted = "invalid_utf8" if kind == "surrogate" else kind
    assert record["skipped_lines"][counted] == 1 and sum(record["skipped_lines"].values()) == 1
    assert record["blank_lines"] == 1 and record["documents"] == 30
    assert counted in skipped.stderr
    docs = llama2_ids(sp_model, [f"good {i}" for i in range(30)])
    assert_same_files(Path(f"{out}_text_document"), megatron_build(tmp_path / "m" / "x", docs, 400))


def test_not_a_json_object_and_bad_arguments(tmp_path, sp_model):
    path = tmp_path / "arr.jsonl"
    path.write_text('{"text": "ok"}\n[1, 2]\n')
    result = tokenize("--input", str(path), "--output-prefix", str(tmp_path / "o"), *common(sp_model), check=False)
    assert result.returncode == 1 and f"{path}:2:" in result.stderr and "JSON object" in result.stderr
    missing = tokenize("--input", str(tmp_path / "nope.jsonl"), "--output-prefix", str(tmp_path / "o"),
                       *common(sp_model), check=False)
    assert missing.returncode == 1 and "nope.jsonl" in missing.stderr
    model = tokenize("--input", str(path), "--output-prefix", str(tmp_path / "o"),
                     *common(tmp_path / "no.model"), check=False)
    assert model.returncode == 1 and "no.model" in model.stderr
    nobos = tokenize("--input", str(path), "--output-prefix", str(tmp_path / "o"),
                     *common(sp_model, "SentencePieceTokenizer"), "--no-bos", check=False)
    assert nobos.returncode == 2 and "--no-bos" in nobos.stderr


# ---------------------------------------------------------------------------------------------
# Never hang, never leave a finished-looking pair
# ---------------------------------------------------------------------------------------------
class CrashingEngine:
    """An engine whose worker dies by SIGKILL on a marker text (as if killed by the OOM killer)."""

    def __init__(self, engine):
        self.inner = engine
        self.spec, self.dtype = engine.spec, engine.dtype

    def encode(self, texts):
        if "CRASH" in texts:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.encode(texts)


def test_a_dead_worker_ends_the_run_with_an_error(tmp_path, sp_model):
    import psutil
    from pipeline.errors import PipelineError
    from pipeline.tokenization import TokenizerSpec, build_engine, tokenize_file
    texts = [f"doc {i}" for i in range(300)]
    texts[250] = "CRASH"
    path = write_jsonl(tmp_path / "c.jsonl", texts)
    engine = CrashingEngine(build_engine(TokenizerSpec("Llama2Tokenizer", str(sp_model))))
    before = set(psutil.Process().children(recursive=True))
    start = time.monotonic()
    with pytest.raises(PipelineError, match="died"):
        tokenize_file(path, tmp_path / "c", engine, workers=2, chunk_bytes=500)
    assert time.monotonic() - start < 30
    assert not [p for p in tmp_path.iterdir() if "_document" in p.name]
    time.sleep(0.2)
    assert set(psutil.Process().children(recursive=True)) <= before, "no worker left behind"


def _big_input(tmp_path: Path) -> Path:
    texts = corpus_texts(seed=3)[:150]
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(120):
            for text in texts:
                out.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.mark.parametrize("kill", ["group", "parent"])
def test_sigkill_midway_then_rerun_is_byte_identical(tmp_path, sp_model, kill):
    import psutil
    path = _big_input(tmp_path)
    reference = tmp_path / "ref"
    tokenize("--input", str(path), "--output-prefix", str(reference), *common(sp_model), "--append-eod",
             "--workers", "2")
    out = tmp_path / "out" / "big"
    cmd = [sys.executable, str(SCRIPTS / "tokenize_file.py"), "--input", str(path), "--output-prefix", str(out),
           *common(sp_model), "--append-eod", "--workers", "1", "--chunk-bytes", "20000", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    tmp_bin = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = [p for p in out.parent.glob(".big_text_document.bin.tmp.*")] if out.parent.is_dir() else []
        if found and found[0].stat().st_size > 200_000:
            tmp_bin = found[0]
            break
        time.sleep(0.005)
    assert tmp_bin is not None, "the run ended before it could be killed midway"
    children = psutil.Process(proc.pid).children(recursive=True)
    if kill == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "workers outlive a killed parent"
    assert not Path(f"{out}_text_document.bin").exists() and not Path(f"{out}_text_document.idx").exists()
    tokenize("--input", str(path), "--output-prefix", str(out), *common(sp_model), "--append-eod", "--workers", "2")
    assert_same_files(Path(f"{out}_text_document"), Path(f"{reference}_text_document"))
    assert not list(out.parent.glob(".*")), "the killed run's temporaries were cleaned up"


def test_memory_stays_bounded_by_the_chunks_in_flight(tmp_path, sp_model):
    """The parent never holds more than `inflight` chunks: a reader much faster than the workers
    does not pile up input (checked by counting what the parent has sent but not yet written)."""
    from pipeline import tokenization
    from pipeline.tokenization import TokenizerSpec, build_engine, tokenize_file
    path = _big_input(tmp_path)
    engine = build_engine(TokenizerSpec("Llama2Tokenizer", str(sp_model)))
    peak = {"n": 0}
    real_put = tokenization.WorkerPool.put
    outstanding = {"n": 0}

    def put(self, item):
        outstanding["n"] += 1
        peak["n"] = max(peak["n"], outstanding["n"])
        real_put(self, item)

    real_get = tokenization.WorkerPool.get

    def get(self, what):
        outstanding["n"] -= 1
        return real_get(self, what)

    tokenization.WorkerPool.put, tokenization.WorkerPool.get = put, get
    try:
        stats = tokenize_file(path, tmp_path / "m", engine, workers=2, chunk_bytes=4096, inflight=5)
    finally:
        tokenization.WorkerPool.put, tokenization.WorkerPool.get = real_put, real_get
    assert stats.documents == 150 * 120
    assert peak["n"] <= 5


def test_assemble_matches_a_plain_loop():
    from pipeline.tokenization import assemble
    rng = np.random.default_rng(0)
    pieces = [rng.integers(3, 300, size=n).astype(np.int32) for n in (0, 5, 0, 1, 40, 0)]
    for prefix in (None, 1):
        for eod in (None, 2):
            tokens, lengths = assemble(pieces, prefix, eod, np.dtype(np.uint16))
            want = []
            for p in pieces:
                ids = ([prefix] if prefix is not None else []) + p.tolist()
                if ids and eod is not None:
                    ids.append(eod)
                want.append(ids)
            assert lengths.tolist() == [len(w) for w in want]
            assert tokens.tolist() == [i for w in want for i in w] and tokens.dtype == np.uint16
