"""make extract: decompression of every raw format, restartability, chunks, failures, no network."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import zstandard

from acquire_helpers import (DOLMINO, SCRIPTS, big_jsonl, decompressed, files_below, kill_when, run, script_env,
                             state, tree_bytes)
from hub_server import HubServer, repo_from_tree
from pipeline.datasets import extracted_name
from pipeline.sample import generate, generate_parquet

MEGAMATH = "megamath-web-pro-max"


def extract(exp_dir, *args, dataset=DOLMINO, check=True, env=None):
    # the sample holds 12 of the 247 dclm folders the description expects: a partial tree on purpose
    return run("extract", "--exp-dir", str(exp_dir), "--dataset", dataset, "--no-progress", "--allow-partial", *args,
               check=check,
               env=env)


@pytest.fixture
def sample(exp_dir):
    return generate(exp_dir / DOLMINO, docs=6)


def test_extract_mirrors_the_raw_tree_without_network(make, exp_dir, sample):
    raw, out = exp_dir / DOLMINO, exp_dir / f"{DOLMINO}-extracted"
    training = [f.path for f in sample.files if not f.test_split]
    # a hub that would answer: extract must not ask it anything
    with HubServer(repo_from_tree("allenai/dolmino-mix-1124", raw)) as hub:
        make("extract", "JOBS=2", "ALLOW_PARTIAL=1", env={"HF_ENDPOINT": hub.url})
        assert hub.requests == []
    expected = sorted(extracted_name(p) for p in training)
    assert files_below(out) == expected
    assert "data/dclm/0000/dclm-0000.jsonl" in expected and "data/math/gsm8k/main/train/0.jsonl" in expected
    for rel in training:
        assert (out / extracted_name(rel)).read_bytes() == decompressed(raw / rel), rel
    done = json.loads((state(exp_dir, DOLMINO, "extract") / "done.json").read_text())
    assert [o["path"] for o in done["outputs"]] == sorted(expected)
    assert all(o["bytes"] == (out / o["path"]).stat().st_size for o in done["outputs"])

    # re-run: nothing to do, outputs untouched
    stamps = {p: (out / p).stat().st_mtime_ns for p in expected}
    again = extract(exp_dir)
    assert f"{len(training)} already done, 0 to extract" in again.stdout
    assert {p: (out / p).stat().st_mtime_ns for p in expected} == stamps

    # a source that changed is redone, and only it
    changed = "data/wiki/wiki-0000.json.gz"
    new_raw = (raw / "data/flan/tulu_flan-0000.json.gz").read_bytes()
    (raw / changed).write_bytes(new_raw)
    third = extract(exp_dir)
    assert "1 to extract" in third.stdout
    assert (out / extracted_name(changed)).read_bytes() == decompressed(raw / changed)
    assert all((out / p).stat().st_mtime_ns == stamps[p] for p in expected if p != extracted_name(changed))


def test_corrupt_and_truncated_archives_fail_with_their_path_and_leave_no_output(exp_dir, sample):
    raw, out = exp_dir / DOLMINO, exp_dir / f"{DOLMINO}-extracted"
    truncated, corrupt = "data/dclm/0005/dclm-0001.json.zst", "data/pes2o/pes2o-0000.json.gz"
    good_zst, good_gz = (raw / truncated).read_bytes(), (raw / corrupt).read_bytes()
    (raw / truncated).write_bytes(good_zst[: len(good_zst) - 20])
    (raw / corrupt).write_bytes(good_gz[:10] + bytes(b ^ 0x55 for b in good_gz[10:]))
    result = extract(exp_dir, "--jobs", "2", check=False)
    assert result.returncode != 0
    assert f"{raw / truncated}: truncated zstd archive" in result.stderr
    assert f"{raw / corrupt}: corrupt gzip data" in result.stderr
    for rel in (truncated, corrupt):
        name = extracted_name(rel)
        assert not (out / name).exists()
        assert list((out / name).parent.glob(f".{(out / name).name}.tmp.*")) == []
    assert (out / "data/flan/tulu_flan-0000.jsonl").is_file(), "the other files were extracted"
    assert not (state(exp_dir, DOLMINO, "extract") / "done.json").exists()

    (raw / truncated).write_bytes(good_zst)
    (raw / corrupt).write_bytes(good_gz)
    fixed = extract(exp_dir)
    assert "2 to extract" in fixed.stdout
    assert (state(exp_dir, DOLMINO, "extract") / "done.json").is_file()


def test_chunks_of_an_array_job_and_the_last_one_writes_the_sentinel(make, exp_dir, sample, fake_pbs):
    submitted = make("extract", "SCHEDULER=pbs", "PBS_GROUP=grp", "PBS_QUEUE=rt_HC", "EXTRACT_CHUNKS=3",
                     "ALLOW_PARTIAL=1")
    job = fake_pbs.submissions()[-1]
    assert submitted.stdout.strip().endswith("[].pbs1")
    assert job["array"] == "0-2" and job["variables"]["CHUNKS"] == "3" and job["variables"]["WORKERS"] == "auto"
    sentinel = state(exp_dir, DOLMINO, "extract") / "done.json"
    seen = set()
    for index in (2, 0, 1):   # array indices finish in any order
        # the template itself, as PBS would run it for this index
        env = script_env(**{**job["variables"], "PBS_ARRAY_INDEX": str(index), "PBS_JOBID": f"7[{index}].pbs1",
                            "PBS_JOBNAME": "extract"})
        result = subprocess.run(["bash", str(SCRIPTS.parent / "pbs" / "extract.pbs")], env=env, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        now = set(files_below(exp_dir / f"{DOLMINO}-extracted"))
        assert now > seen, f"chunk {index} extracted files of its own"
        seen = now
        assert sentinel.exists() == (index == 1)
    expected = sorted(extracted_name(f.path) for f in sample.files if not f.test_split)
    assert sorted(seen) == expected


def test_parquet_to_jsonl_checks_the_text_column(exp_dir):
    raw = exp_dir / MEGAMATH
    sample = generate_parquet(raw, files=3, rows=7)
    extract(exp_dir, "--jobs", "2", dataset=MEGAMATH)
    import pyarrow.parquet as pq
    for part in sample.files:
        out = exp_dir / f"{MEGAMATH}-extracted" / extracted_name(part.path)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["text"] for r in records] == pq.read_table(raw / part.path).column("text").to_pylist()
        assert all(set(r) == {"text"} for r in records)
    generate_parquet(raw / "bad", files=1, rows=3, text_column="content")
    moved = raw / "data" / "zz-no-text.parquet"
    (raw / "bad" / "data" / "train-00000.parquet").rename(moved)
    result = extract(exp_dir, dataset=MEGAMATH, check=False)
    assert result.returncode != 0
    assert f"{moved}: no column 'text' in the parquet schema (columns: content, url, score)" in result.stderr


def test_sigkill_midway_then_rerun_gives_identical_outputs(exp_dir, tmp_path):
    data = big_jsonl(20000)
    compressor = zstandard.ZstdCompressor(level=1)
    for exp in (exp_dir, tmp_path / "clean"):
        raw = exp / DOLMINO / "data" / "dclm"
        for index in range(3):
            (raw / f"{index:04d}").mkdir(parents=True, exist_ok=True)
            (raw / f"{index:04d}" / "dclm-0000.json.zst").write_bytes(compressor.compress(data[index:] + b"x\n"))
    out = exp_dir / f"{DOLMINO}-extracted"

    def partly_written():
        return any(p.name.startswith(".") and ".tmp." in p.name for p in out.rglob("*")) if out.is_dir() else False

    cmd = [sys.executable, str(SCRIPTS / "extract.py"), "--exp-dir", str(exp_dir), "--dataset", DOLMINO, "--jobs", "1",
           "--allow-partial", "--no-progress"]
    status = kill_when(cmd, partly_written)
    assert status == -9, "killed while writing"
    assert not (state(exp_dir, DOLMINO, "extract") / "done.json").exists()
    extract(exp_dir)
    extract(tmp_path / "clean")
    assert tree_bytes(out) == tree_bytes(tmp_path / "clean" / f"{DOLMINO}-extracted")
    leftovers = [p for p in out.rglob(".*") if p.is_file()]
    assert leftovers == [], "temporaries of the killed run are gone"
    assert os.path.getsize(out / "data/dclm/0000/dclm-0000.jsonl") == len(data) + 2


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_every_frame_or_member_is_decompressed_and_damage_is_detected(tmp_path, kind):
    import gzip
    import io

    from pipeline.errors import PipelineError
    from pipeline.streams import decompress_gzip, decompress_zstd

    data = big_jsonl(300)
    parts = [data[:1000], data[1000:5000], data[5000:]]
    if kind == "zstd":
        compressor = zstandard.ZstdCompressor(level=1)
        blob, function = b"".join(compressor.compress(p) for p in parts), decompress_zstd
    else:
        blob, function = b"".join(gzip.compress(p, mtime=0) for p in parts), decompress_gzip
    path = tmp_path / "file"
    path.write_bytes(blob)
    out = io.BytesIO()
    assert function(path, out) == len(data) and out.getvalue() == data
    for damaged, message in ((blob[:-5], "truncated"), (blob[: len(blob) // 2], "truncated"),
                             (b"", "empty file"), (b"not an archive at all", "corrupt")):
        path.write_bytes(damaged)
        with pytest.raises(PipelineError, match=f"{path}: .*{message}"):
            function(path, io.BytesIO())
