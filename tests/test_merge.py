"""make merge and clean-intermediate, and the dataset descriptions that drive the grouping."""
from __future__ import annotations

import json
import re
import sys

import pytest

from acquire_helpers import (DOLMINO, SAMPLE_MERGED, SCRIPTS, big_jsonl, files_below, jsonl_records, kill_when, run,
                             state, tree_bytes, write_description)
from pipeline.datasets import group_files, load_dataset
from pipeline.errors import PipelineError
from pipeline.sample import generate


def merge(exp_dir, *args, dataset=DOLMINO, check=True):
    return run("merge", "--exp-dir", str(exp_dir), "--dataset", dataset, "--no-progress", *args, check=check)


def extract(exp_dir, dataset=DOLMINO):
    # the sample is a partial dolmino tree on purpose (12 of 247 dclm folders)
    return run("extract", "--exp-dir", str(exp_dir), "--dataset", dataset, "--no-progress", "--jobs", "2",
               "--allow-partial")


# ---------------------------------------------------------------------------------------------
# descriptions
# ---------------------------------------------------------------------------------------------

def test_dolmino_description_reproduces_the_earlier_grouping():
    dataset = load_dataset(DOLMINO)
    assert dataset.revision_pinned and dataset.repo_id == "allenai/dolmino-mix-1124"
    paths = [f"data/dclm/{d:04d}/dclm-{p:04d}.json.zst" for d in range(247) for p in range(8)]
    subsets = ["codesearchnet-owmfilter/go/0000.jsonl.gz", "dolmino_math_synth/gsm_mind/probem-solving/0000.jsonl",
               "gsm8k/main/train/0.jsonl.zst", "gsm8k/main/test/0.jsonl.zst", "gsm8k/socratic/test/0.jsonl.zst",
               "mathcoder2-synthmath/ajibawa-2023/0000.jsonl", "metamath-owmfilter/0000.jsonl.gz",
               "tinyGSM-MIND/2students/0000.jsonl.gz", "tulu_math/personahub_math_v5/0000.jsonl"]
    paths += [f"data/math/{s}" for s in subsets]
    paths += ["data/flan/tulu_flan-0000.json.gz", "data/pes2o/pes2o-0000.json.gz", "README.md",
              "data/stackexchange/stackexchange-0000.json.gz", "data/wiki/wiki-0000.json.gz"]
    groups = {g.output: g for g in group_files(dataset, paths)}
    dclm = sorted(o for o in groups if o.startswith("dclm/"))
    assert len(dclm) == 25 and dclm[0] == "dclm/dclm-0000-0009.jsonl" and dclm[-1] == "dclm/dclm-0240-0246.jsonl"
    assert len(groups["dclm/dclm-0240-0246.jsonl"].inputs) == 7 * 8
    assert sorted(o for o in groups if not o.startswith("dclm/")) == sorted([
        "flan/flan-all.jsonl", "pes2o/pes2o-all.jsonl", "stackexchange/stackexchange-all.jsonl", "wiki/wiki-all.jsonl",
        *(f"math/{s}-all.jsonl" for s in ("codesearchnet-owmfilter", "dolmino_math_synth", "gsm8k",
                                          "mathcoder2-synthmath", "metamath-owmfilter", "tinyGSM-MIND", "tulu_math"))])
    assert groups["math/gsm8k-all.jsonl"].inputs == ["data/math/gsm8k/main/train/0.jsonl.zst"], "no test split"
    every_input = [p for g in groups.values() for p in g.inputs]
    assert "README.md" not in every_input and len(every_input) == len(set(every_input))


def test_megamath_description_groups_parquet_files_by_position():
    dataset = load_dataset("megamath-web-pro-max")
    assert dataset.revision_pinned and dataset.parquet.text_column == "text"
    groups = group_files(dataset, [f"data/part-{i:05d}.parquet" for i in range(70)])
    assert [(g.output, len(g.inputs)) for g in groups] == [
        ("megamath/megamath-web-pro-max-0000-0031.jsonl", 32), ("megamath/megamath-web-pro-max-0032-0063.jsonl", 32),
        ("megamath/megamath-web-pro-max-0064-0069.jsonl", 6)]


BASE = """name: {name}
hub: {{repo_id: a/b, revision: main}}
sources:
"""


@pytest.mark.parametrize("body, message", [
    ("  x: {files: 'd/*', output: x.jsonl, colour: red}\n", "sources.x: unknown key(s) colour"),
    ("  x: {files: 'd/*', output: 'x-{subset}.jsonl'}\n", "unknown placeholder(s) {subset}"),
    ("  x: {files: 'd/{a}/{b}/*', output: x.jsonl, group_size: 10}\n", "sources.x.group_size: grouping needs"),
    ("  x: {files: 'd/{a}/*', group_size: 10, output: 'x-{a}.jsonl'}\n", "must use {first} and/or {last}"),
    ("  x: {files: 'd/*', output: x.txt}\n", "sources.x.output: 'x.txt' must be a relative path ending in .jsonl"),
    ("  x: {files: 'd/a{b}/*', output: x.jsonl}\n", "must be a whole path component"),
    ("  x: {files: 'd/*', output: x.jsonl, group_size: 0}\n", "group_size: must be >= 1"),
])
def test_bad_descriptions_fail_naming_file_and_key(tmp_path, body, message):
    path = write_description(tmp_path, "bad-ds", BASE.format(name="bad-ds") + body)
    with pytest.raises(PipelineError) as caught:
        load_dataset(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_overlapping_sources_and_non_numeric_groups_fail(tmp_path):
    path = write_description(tmp_path, "ds", BASE.format(name="ds") + "  a: {files: 'd/**', output: a.jsonl}\n"
                             "  b: {files: 'd/x/*', output: b.jsonl}\n"
                             "  c: {files: 'e/{n}/*', group_size: 2, output: 'c-{first}.jsonl'}\n")
    dataset = load_dataset(path)
    with pytest.raises(PipelineError, match="d/x/1.jsonl is matched by sources a, b"):
        group_files(dataset, ["d/x/1.jsonl"])
    with pytest.raises(PipelineError, match=r"e/abc/1.jsonl: \{n\} = 'abc' is not a number"):
        group_files(dataset, ["e/abc/1.jsonl"])


# ---------------------------------------------------------------------------------------------
# merge on the dolmino-shaped sample
# ---------------------------------------------------------------------------------------------

def test_extract_and_merge_the_sample(make, exp_dir):
    sample = generate(exp_dir / DOLMINO, docs=8)
    make("extract", "merge", "JOBS=2", "ALLOW_PARTIAL=1")
    merged = exp_dir / f"{DOLMINO}-extracted-merged"
    outputs = [p for p in files_below(merged) if p.endswith(".jsonl")]
    assert outputs == SAMPLE_MERGED
    assert sorted(p for p in files_below(merged) if not p.endswith(".jsonl")) == [p + ".meta.json" for p in outputs]
    records = {p: jsonl_records(merged / p) for p in outputs}        # every line is JSON, newline-terminated
    assert all(isinstance(r["text"], str) for rs in records.values() for r in rs)
    assert sum(len(rs) for rs in records.values()) == sample.training_documents
    assert not any(r["source"] == "gsm8k-test" for rs in records.values() for r in rs), "no gsm8k test document"
    # the order is the sorted order of the inputs
    extracted = exp_dir / f"{DOLMINO}-extracted"
    dclm = b"".join((extracted / f"data/dclm/{d:04d}/dclm-{p:04d}.jsonl").read_bytes()
                    for d in range(10) for p in range(2))
    assert (merged / "dclm/dclm-0000-0009.jsonl").read_bytes() == dclm
    gsm8k = json.loads((merged / "math/gsm8k-all.jsonl.meta.json").read_text())
    assert gsm8k["blank_lines_dropped"] == 6 and gsm8k["documents"] == 16
    assert [i["path"] for i in gsm8k["inputs"]] == ["data/math/gsm8k/main/train/0.jsonl",
                                                     "data/math/gsm8k/socratic/train/0.jsonl"]
    synth = json.loads((merged / "math/dolmino_math_synth-all.jsonl.meta.json").read_text())
    assert synth["missing_final_newlines"] == 9, "every input lacked its final newline"
    done = json.loads((state(exp_dir, DOLMINO, "merge") / "done.json").read_text())
    assert [o["path"] for o in done["outputs"]] == outputs
    for entry in done["outputs"]:
        stat = (merged / entry["path"]).stat()
        assert (entry["bytes"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        assert entry["documents"] == len(records[entry["path"]])
    assert done["documents"] == sample.training_documents

    # re-run: nothing rewritten, sentinel byte-identical
    before = (state(exp_dir, DOLMINO, "merge") / "done.json").read_bytes()
    stamps = {p: (merged / p).stat().st_mtime_ns for p in outputs}
    again = make("merge")
    assert "13 up to date, 0 to write" in again.stdout
    assert {p: (merged / p).stat().st_mtime_ns for p in outputs} == stamps
    assert (state(exp_dir, DOLMINO, "merge") / "done.json").read_bytes() == before


MESSY = """name: messy
hub: {repo_id: a/messy, revision: main}
sources:
  web:
    files: data/{part}/*
    output: web/{part}-all.jsonl
"""


def test_validation_reports_bad_lines_as_file_and_line(tmp_path):
    exp = tmp_path / "exp"
    description = write_description(tmp_path / "descriptions", "messy", MESSY)
    raw = exp / "messy" / "data" / "a"
    raw.mkdir(parents=True)
    (raw / "1.jsonl").write_bytes(b'{"text": "one"}\n\n   \n{"text": "two"}\n{"text": 3}\nnot json\n{"text": "end"}')
    (raw / "2.jsonl").write_bytes(b'{"text": "three"}\n["list"]\n')
    extract(exp, str(description))
    plain = merge(exp, dataset=str(description))
    assert "1 outputs" in plain.stdout
    out = exp / "messy-extracted-merged" / "web" / "a-all.jsonl"
    assert out.read_bytes() == (b'{"text": "one"}\n{"text": "two"}\n{"text": 3}\nnot json\n{"text": "end"}\n'
                                b'{"text": "three"}\n["list"]\n')
    failed = merge(exp, "--validate", "1", dataset=str(description), check=False)
    assert failed.returncode != 0
    first_bad = exp / "messy-extracted" / "data" / "a" / "1.jsonl"
    assert f"{first_bad}:5: key 'text' holds int, not a string" in failed.stderr
    assert out.read_bytes().startswith(b'{"text": "one"}'), "the earlier output is kept, not half-rewritten"
    skipped = merge(exp, "--validate", "1", "--on-bad-line", "skip", dataset=str(description))
    assert re.search(r"a-all\.jsonl\s+2\s+4\s+\S+ B\s+2\s+3\s+new", skipped.stdout)
    assert out.read_bytes() == b'{"text": "one"}\n{"text": "two"}\n{"text": "end"}\n{"text": "three"}\n'
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["bad_lines_skipped"] == 3 and meta["blank_lines_dropped"] == 2
    assert meta["bad_line_examples"][1] == f"{first_bad}:6: invalid JSON: Expecting value: line 1 column 1 (char 0)"
    assert meta["bad_line_examples"][2].endswith("2.jsonl:2: expected a JSON object, got list")


@pytest.mark.parametrize("validate", ["0", "1"])
def test_sigkill_midway_then_rerun_gives_identical_outputs(tmp_path, validate):
    description = write_description(tmp_path / "descriptions", "messy", MESSY)
    exps = [tmp_path / "killed", tmp_path / "clean"]
    for exp in exps:
        for part in ("a", "b"):
            raw = exp / "messy" / "data" / part
            raw.mkdir(parents=True)
            for index in range(3):
                (raw / f"{index}.jsonl").write_bytes(big_jsonl(4000, seed=index, blank_every=1000 * (index + 1)))
        extract(exp, str(description))
    merged = exps[0] / "messy-extracted-merged"

    def partly_written():
        return merged.is_dir() and any(".tmp." in p.name for p in merged.rglob(".*"))

    cmd = [sys.executable, str(SCRIPTS / "merge.py"), "--exp-dir", str(exps[0]), "--dataset", str(description),
           "--validate", validate, "--no-progress"]
    assert kill_when(cmd, partly_written) == -9, "killed while writing"
    assert not (state(exps[0], "messy", "merge") / "done.json").exists()
    for exp in exps:
        merge(exp, "--validate", validate, dataset=str(description))
    killed, clean = tree_bytes(merged), tree_bytes(exps[1] / "messy-extracted-merged")
    assert {k: v for k, v in killed.items() if k.endswith(".jsonl")} == \
        {k: v for k, v in clean.items() if k.endswith(".jsonl")}
    assert sorted(killed) == sorted(clean)
    assert [p for p in merged.rglob(".*") if p.is_file()] == []


# ---------------------------------------------------------------------------------------------
# clean-intermediate
# ---------------------------------------------------------------------------------------------

def test_clean_intermediate_needs_every_tokenized_output_then_keeps_steps_up_to_date(make, exp_dir):
    generate(exp_dir / DOLMINO, docs=3)
    make("extract", "merge", "ALLOW_PARTIAL=1")
    extracted, merged = exp_dir / f"{DOLMINO}-extracted", exp_dir / f"{DOLMINO}-extracted-merged"
    tokenized = state(exp_dir, DOLMINO, "tokenize-v3.1")
    for output in SAMPLE_MERGED[:-1]:
        sentinel = tokenized / (output[: -len(".jsonl")] + ".json")
        sentinel.parent.mkdir(parents=True, exist_ok=True)
        sentinel.write_text("{}")
    refused = make("clean-intermediate", check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr   # a job's output goes to its log and to stdout
    assert f"{SAMPLE_MERGED[-1]} is not tokenized" in said and "tokenize-v3.1 stage" in said
    assert extracted.is_dir() and merged.is_dir()

    last = tokenized / (SAMPLE_MERGED[-1][: -len(".jsonl")] + ".json")
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text("{}")
    (tokenized / "done.json").write_text("{}")
    size = sum(p.stat().st_size for tree in (extracted, merged) for p in tree.rglob("*") if p.is_file())
    cleaned = make("clean-intermediate")
    assert not extracted.exists() and not merged.exists()
    freed = re.search(r"freed ([\d.]+) KB", cleaned.stdout)
    assert freed and abs(float(freed.group(1)) - size / 1000) < 0.2
    merge_done = (state(exp_dir, DOLMINO, "merge") / "done.json").read_bytes()

    again = make("extract", "merge", "ALLOW_PARTIAL=1")
    assert "0 to extract" in again.stdout and "up to date" in again.stdout
    assert not extracted.exists() and not merged.exists(), "nothing extracted or merged again"
    assert (state(exp_dir, DOLMINO, "merge") / "done.json").read_bytes() == merge_done
    status = make("status")
    assert re.search(r"^extract\s+done\s+removed after use", status.stdout, re.M)
    assert re.search(r"^merge\s+done\s+removed after use", status.stdout, re.M)


# ---------------------------------------------------------------------------------------------
# the merge stream itself, at block boundaries, with and without the kernel copy
# ---------------------------------------------------------------------------------------------

def reference_merge(chunks: list[bytes]) -> tuple[bytes, int, int]:
    out, documents, blanks = [], 0, 0
    for data in filter(None, chunks):
        for line in data.split(b"\n")[:-1] + ([data.rsplit(b"\n", 1)[-1]] if not data.endswith(b"\n") else []):
            if not line.strip():
                blanks += 1
                continue
            out.append(line + b"\n")
            documents += 1
    return b"".join(out), documents, blanks


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_merge_stream_at_every_block_boundary(tmp_path, monkeypatch, kernel_copy):
    import os

    from pipeline import streams

    monkeypatch.setattr(streams, "SCAN_BLOCK", 16)
    monkeypatch.setattr(streams, "LINE_BATCH", 8)
    monkeypatch.setattr(streams.MergeWriter, "kernel_copy", kernel_copy)
    inputs = [b'{"text": "a"}\n' * 5, b'{"text": "b"}\n{"text": "cc"}', b'\n{"text": "d"}\n', b"",
              b'{"text": "e"}\n \t\n{"text": "f"}\n', b'{"text": "g"}\n   ', b'{"text": "0123456789abcdef"}\n\n',
              b'{"text": "h"}\n' + b" " * 40 + b"\n" + b'{"text": "i"}\n', b"\n\n\n"]
    paths = []
    for index, data in enumerate(inputs):
        paths.append(tmp_path / f"{index}.jsonl")
        paths[-1].write_bytes(data)
    out = tmp_path / "out.jsonl"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        writer = streams.MergeWriter(fd)
        for path in paths:
            writer.append(path)
    finally:
        os.close(fd)
    expected, documents, blanks = reference_merge(inputs)
    assert out.read_bytes() == expected
    assert (writer.stats.documents, writer.stats.blank_lines_dropped, writer.stats.bytes) == \
        (documents, blanks, len(expected))
    assert writer.stats.missing_final_newlines == 1
