"""`make count`: exact token counts from .idx files into train_data.all.sh and a table."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from conftest import BENCH, run_script
from mix_helpers import DEMO_FILES, make_tokenized, write_index, write_task
from pipeline.datalist import read_list
from pipeline.errors import PipelineError
from pipeline.counting import count_task
from pipeline.indexed import index_counts
from pipeline.mixture import load_task
from pipeline.paths import state_dir

TASK_YAML = """
datasets: [ds]
sources:
  web: [web/*]
  math: [math/*]
sizes:
  all: {ratio: {web: 1}, default_ratio: 1}
"""
FILES = {"web/web-0000-0009": 1234, "web/web-0010-0011": 99, "math/gsm8k-all": 70000, "math/a-all": 5}


@pytest.fixture
def tree(tmp_path, exp_dir):
    tasks = tmp_path / "tasks"
    write_task(tasks, "t", TASK_YAML)
    root = make_tokenized(exp_dir, "ds", "tok", FILES, dtype=[np.int32, np.uint16])
    return tasks, root


def count(exp_dir, tasks, *extra, check=True):
    return run_script("count", "--task", "t", "--exp-dir", str(exp_dir), "--tokenizer-name", "tok",
                      "--tasks-dir", str(tasks), *extra, check=check)


def test_count_writes_sorted_exact_list_and_table(tree, exp_dir):
    tasks, root = tree
    out = count(exp_dir, tasks).stdout
    text = (tasks / "t" / "train_data.all.sh").read_text()
    expected = ["export TRAIN_DATA_PATH=("]
    expected += [f"    {FILES[rel]} ds-tok-tokenized/{rel}_text_document" for rel in sorted(FILES)]
    expected += [")"]
    assert text == "\n".join(expected) + "\n"
    table = (tasks / "t" / "train_data.all.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["prefix", "source", "tokens", "documents", "sequences", "dtype"]
    rows = {r.split("\t")[0]: r.split("\t") for r in table[1:]}
    gsm = rows["ds-tok-tokenized/math/gsm8k-all_text_document"]
    assert gsm[1:] == ["math", "70000", "6", "5", gsm[5]] and gsm[5] in ("int32", "uint16")
    assert {r[5] for r in rows.values()} == {"int32", "uint16"}
    assert re.search(r"count t: 4 files, 71,338 tokens", out)


def test_count_rerun_leaves_outputs_untouched(tree, exp_dir):
    tasks, _ = tree
    count(exp_dir, tasks)
    listing = tasks / "t" / "train_data.all.sh"
    before = (listing.read_bytes(), listing.stat().st_mtime_ns)
    os.utime(listing, ns=(1, 1))
    out = count(exp_dir, tasks).stdout
    assert "(unchanged)" in out
    assert listing.read_bytes() == before[0] and listing.stat().st_mtime_ns == 1


def test_count_matches_megatron_core_reader_for_both_dtypes(tmp_path):
    """Files written by megatron-core's own builder, read back by its IndexedDataset and by us."""
    pytest.importorskip("torch")
    indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(1)
    for dtype in (np.uint16, np.int32):
        prefix = str(tmp_path / f"m_{np.dtype(dtype).name}")
        builder = indexed_dataset.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
        for _ in range(7):
            n = int(rng.integers(0, 300))
            builder.add_document(rng.integers(0, 1000, size=n), [n] if n else [])
        builder.add_document(rng.integers(0, 1000, size=10), [4, 6])
        builder.finalize(prefix + ".idx")
        dataset = indexed_dataset.IndexedDataset(prefix)
        tokens, documents, sequences, name = index_counts(tmp_path / f"m_{np.dtype(dtype).name}.idx")
        assert tokens == int(dataset.sequence_lengths.sum())
        assert documents == len(dataset.document_indices) - 1
        assert sequences == len(dataset)
        assert name == np.dtype(dtype).name
        assert tokens * np.dtype(dtype).itemsize == os.path.getsize(prefix + ".bin")


def test_count_reads_indexes_written_by_our_writer_like_megatron(tree):
    indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    _, root = tree
    for rel, tokens in FILES.items():
        dataset = indexed_dataset.IndexedDataset(str(root / f"{rel}_text_document"))
        assert index_counts(root / f"{rel}_text_document.idx")[0] == int(dataset.sequence_lengths.sum()) == tokens


@pytest.mark.parametrize("breakage, message", [
    ("no-tokenize-done", r"tokenize-tok of ds is not complete"),
    ("bin-without-idx", r"web/extra_text_document\.bin has no \.idx"),
    ("listed-without-idx", r"math/gsm8k-all_text_document\.idx missing: merged output math/gsm8k-all\.jsonl"),
    ("short-bin", r"web/web-0010-0011_text_document\.bin: \d+ bytes, but its index says 99"),
    ("file-two-sources", r"ds-tok-tokenized/math/gsm8k-all_text_document matches two sources: math and gsm"),
    ("file-no-source", r"ds-tok-tokenized/code/x_text_document matches no source"),
    ("source-no-file", r"source wiki \(wiki/\*\) matches no file"),
    ("no-root", r"ds-tok-tokenized: tokenized root of ds not found"),
    ("corrupt-idx", r"web-0000-0009_text_document\.idx: sequence lengths and byte offsets disagree"),
])
def test_count_errors_name_what_is_wrong(tree, exp_dir, breakage, message):
    tasks, root = tree
    config = tasks / "t" / "mixture.yaml"
    if breakage == "no-tokenize-done":
        (state_dir(exp_dir, "ds", "tokenize-tok") / "done.json").unlink()
    elif breakage == "bin-without-idx":
        (root / "web" / "extra_text_document.bin").write_bytes(b"")
    elif breakage == "listed-without-idx":
        (root / "math" / "gsm8k-all_text_document.idx").unlink()
        (root / "math" / "gsm8k-all_text_document.bin").unlink()
    elif breakage == "short-bin":
        path = root / "web" / "web-0010-0011_text_document.bin"
        path.write_bytes(path.read_bytes()[:-2])
    elif breakage == "file-two-sources":
        config.write_text(TASK_YAML.replace("  math: [math/*]", "  math: [math/*]\n  gsm: ['*gsm8k*']"))
    elif breakage == "file-no-source":
        write_index(root / "code" / "x_text_document", 10)
    elif breakage == "source-no-file":
        config.write_text(TASK_YAML.replace("  math: [math/*]", "  math: [math/*]\n  wiki: [wiki/*]"))
    elif breakage == "corrupt-idx":  # the last byte offset no longer matches the lengths
        path = root / "web" / "web-0000-0009_text_document.idx"
        data = bytearray(path.read_bytes())
        sequences = int(np.frombuffer(bytes(data[18:26]), "<u8")[0])
        at = 34 + 4 * sequences + 8 * (sequences - 1)
        data[at:at + 8] = np.array([7], "<i8").tobytes()
        path.write_bytes(bytes(data))
    elif breakage == "no-root":
        import shutil
        shutil.rmtree(root)
    result = count(exp_dir, tasks, check=False)
    assert result.returncode == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tasks / "t" / "train_data.all.sh").exists()


def test_count_without_merge_record_counts_what_is_there(tmp_path, exp_dir):
    tasks = tmp_path / "tasks"
    write_task(tasks, "t", TASK_YAML)
    make_tokenized(exp_dir, "ds", "tok", FILES, merge_record=False)
    rows = count_task(load_task("t", tasks), exp_dir, "tok")
    assert [r.tokens for r in rows] == [FILES[k] for k in sorted(FILES)]


def test_unknown_task_lists_known_ones(tmp_path, exp_dir):
    write_task(tmp_path / "tasks", "t", TASK_YAML)
    with pytest.raises(PipelineError, match=r"TASK=nope: .* not found \(known tasks: t\)"):
        load_task("nope", tmp_path / "tasks")


def test_make_count_on_the_demo_task(make, exp_dir, tmp_path):
    make_tokenized(exp_dir, "dolmino-mix-1124", "demo", DEMO_FILES)
    out_dir = tmp_path / "out"
    result = make("count", "TASK=demo", "TOKENIZER_NAME=demo", f"TASK_OUT={out_dir}")
    entries = read_list(out_dir / "train_data.all.sh")
    assert [(e.weight, e.prefix) for e in entries] == [
        (DEMO_FILES[rel], f"dolmino-mix-1124-demo-tokenized/{rel}_text_document") for rel in sorted(DEMO_FILES)]
    assert "count demo: 13 files" in result.stdout


def test_bench_count_runs_and_agrees(tmp_path):
    out = run_script("bench_count", "--files", "30", "--sequences", "50", "--repeat", "1", "--no-megatron",
                     "--workdir", str(tmp_path), folder=BENCH).stdout
    assert "ours: count_task" in out and "bytes/4 off by" in out
    assert list(tmp_path.iterdir()) == []  # its temporary tree is gone
