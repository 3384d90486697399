"""`make mix`: mixture lists by ratio, share and union, the report, and derived iterations."""
from __future__ import annotations

import json
import math
import os
import re
from fractions import Fraction

import pytest

from conftest import run_script, shared_path
from mix_helpers import DEMO_FILES, make_tokenized, write_all_list, write_params, write_task
from pipeline.datalist import Entry, read_list, write_list
from pipeline.errors import PipelineError
from pipeline.mixture import (files_from_list, iterations, list_iterations, load_task, resolve,
                              share_weights, FileTokens)

DOLMINO = "v4-dolmino-mix-1124"
MEGAMATH = "v4-megamath-pro-max"
LLMJP_TOTALS = {"50B": 57_874_242_563, "100B": 117_590_300_876, "300B": 349_625_609_934}
LLMJP_RATIOS = {"50B": {"dclm": "0.0323", "flan": "0.5", "pes2o": "0.0515"},
                "100B": {"dclm": "0.0685", "flan": "1.0", "pes2o": "0.167", "math": "2.0"},
                "300B": {"dclm": "0.2078", "flan": "2.0", "stackexchange": "4.0", "math": "4.0", "wiki": "4.0",
                         "pes2o": "1.0"}}
TABLE13_MIX = {  # OLMo 2 Table 13, mix %
    "olmo2-50B": {"dclm": 47.2, "flan": 16.6, "stackexchange": 2.45, "pes2o": 5.85, "wiki": 7.11, "math": 20.8},
    "olmo2-100B": {"dclm": 50.2, "flan": 16.7, "stackexchange": 2.47, "pes2o": 9.52, "wiki": 3.57, "math": 17.5},
    "olmo2-300B": {"dclm": 51.9, "flan": 11.3, "stackexchange": 1.68, "pes2o": 19.4, "wiki": 4.86, "math": 10.8},
}


@pytest.fixture(scope="module")
def llmjp_list():
    return shared_path("reference", "llmjp-v3.1-dolmino.train_data.all.sh")


def mix_of(task, size, lists, tasks_dir=None):
    kwargs = {"tasks_dir": tasks_dir} if tasks_dir else {}
    config = load_task(task, **kwargs)
    return resolve(config, size, dict(lists), **kwargs)


# ---------------------------------------------------------------------------------------------
# The real configs on the real LLM-jp all-list (../shared)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["50B", "100B", "300B"])
def test_ratio_sizes_reproduce_the_llmjp_lists(llmjp_list, size):
    mix = mix_of(DOLMINO, size, {DOLMINO: llmjp_list})
    assert mix.total == LLMJP_TOTALS[size]
    # every file: ceil(tokens x ratio), computed independently here
    for entry in read_list(llmjp_list):
        source = entry.prefix.split("/")[1]
        ratio = Fraction(LLMJP_RATIOS[size].get(source, "1.0"))
        assert mix.weights[entry.prefix] == math.ceil(entry.weight * ratio), entry.prefix


def test_olmo2_50B_hits_the_total_and_table_13_shares(llmjp_list):
    mix = mix_of(DOLMINO, "olmo2-50B", {DOLMINO: llmjp_list})
    assert abs(mix.total - 50_000_000_000) <= 5
    column = TABLE13_MIX["olmo2-50B"]
    norm = sum(column.values())
    assert norm != 100  # 100.01: the shares must be normalised
    for (_, source), row in mix.rows.items():
        assert abs(row.used / mix.total * 100 - column[source] / norm * 100) < 0.01, source
        assert row.repetitions <= 1, f"{source} repeated at 50B"
    assert {row.source for row in mix.rows.values()} == set(column)


@pytest.mark.parametrize("size", ["olmo2-100B", "olmo2-300B"])
def test_olmo2_larger_sizes_repeat_within_their_limits(llmjp_list, size):
    mix = mix_of(DOLMINO, size, {DOLMINO: llmjp_list})
    total = int(size[len("olmo2-"):-1]) * 10**9
    assert mix.total == total
    column = TABLE13_MIX[size]
    for (_, source), row in mix.rows.items():
        assert abs(row.used / total * 100 - column[source] / sum(column.values()) * 100) < 0.01
        assert row.repetitions <= 4
    assert mix.rows[(DOLMINO, "stackexchange")].repetitions > 1  # 300B and 100B repeat SE


def test_megamath_unions_across_tasks(llmjp_list, tmp_path):
    megamath = {f"megamath/part-{i:04d}": 10_000_000_000 + i for i in range(8)}
    mm_list = write_all_list(tmp_path / "mm.sh", "megamath-web-pro-max-v3.1-tokenized", megamath)
    lists = {MEGAMATH: mm_list, DOLMINO: llmjp_list}
    alone = mix_of(MEGAMATH, "80B", lists)
    assert alone.total == sum(megamath.values())
    for size, part in (("130B", "50B"), ("180B", "100B"), ("380B", "300B")):
        union = mix_of(MEGAMATH, size, lists)
        assert union.total == LLMJP_TOTALS[part] + alone.total
        assert len(union.entries()) == 36 + 8
        assert union.rows[(MEGAMATH, "megamath")].used == alone.total


def test_make_mix_with_another_all_list(make, llmjp_list, tmp_path):
    params = write_params(tmp_path / "p.yaml", 8192, 1024)
    out = tmp_path / "out"
    result = make("mix", f"TASK={DOLMINO}", "SIZE=50B", f"PARAM={params}", f"ALL_LIST={llmjp_list}", f"TASK_OUT={out}")
    assert "57,874,242,563 tokens" in result.stdout
    assert "6,900" in result.stdout  # ceil(57,874,242,563 / 8192 / 1024)
    entries = read_list(out / "train_data_50B.sh")
    assert sum(e.weight for e in entries) == LLMJP_TOTALS["50B"]
    assert json.loads((out / "train_data_50B.json").read_text())["iterations"] == 6900


# ---------------------------------------------------------------------------------------------
# The demo task end to end through make, on a tokenized tree made here
# ---------------------------------------------------------------------------------------------
def test_make_count_mix_demo_report_and_byte_identical_rerun(make, exp_dir, tmp_path):
    make_tokenized(exp_dir, "dolmino-mix-1124", "demo", DEMO_FILES)
    params = write_params(tmp_path / "p.yaml", 64, 8)
    out = tmp_path / "out"
    args = ("count", "mix", "TASK=demo", "SIZE=demo", "TOKENIZER_NAME=demo", f"PARAM={params}", f"TASK_OUT={out}")
    result = make(*args)
    report = (out / "train_data_demo.md").read_text()
    assert report in result.stdout  # the report is printed
    assert "- total: **10,000 tokens**" in report
    assert "- iterations: **20** = ceil(10,000 / (64 x 8))" in report
    row = re.search(r"^\| stackexchange \| 1 \| 1,500 \| ([\d.]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$",
                    report, re.M)
    assert row, report
    target = 2.45 / 100.01 * 100
    assert abs(float(row.group(3)) - target) < 0.01 and float(row.group(4)) == round(target, 2)
    assert sum(e.weight for e in read_list(out / "train_data_demo.sh")) == 10_000
    png = (out / "train_data_demo.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    outputs = sorted(out.iterdir())
    before = {p.name: p.read_bytes() for p in outputs}
    for p in outputs:
        os.utime(p, ns=(1, 1))
    again = make(*args)
    assert "(unchanged)" in again.stdout
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == before
    assert all(p.stat().st_mtime_ns == 1 for p in out.iterdir())


def test_weight_zero_files_are_left_out(tmp_path):
    tasks = tmp_path / "tasks"
    write_task(tasks, "t", "datasets: [ds]\nsources: {a: [a/*], b: [b/*]}\n"
                           "sizes: {s: {ratio: {a: 0.5, b: 0}}, u: {union: [s, s]}}\n")
    write_all_list(tasks / "t" / "train_data.all.sh", "ds-x-tokenized", {"a/1": 3, "a/2": 4, "b/1": 10})
    mix = mix_of("t", "s", {}, tasks)
    assert [(e.weight, e.prefix) for e in mix.entries()] == [(2, "ds-x-tokenized/a/1_text_document"),
                                                              (2, "ds-x-tokenized/a/2_text_document")]
    assert mix.rows[("t", "b")].used == 0
    # a union of a size with itself draws it twice: weights summed per file
    assert [e.weight for e in mix_of("t", "u", {}, tasks).entries()] == [4, 4]


def test_share_weights_hit_the_total_exactly_split_by_tokens():
    files = [FileTokens("a1", "a", 1), FileTokens("a2", "a", 2), FileTokens("a3", "a", 4), FileTokens("b1", "b", 10)]
    weights = share_weights(files, {"a": Fraction(1), "b": Fraction(2)}, 1000)
    assert sum(weights.values()) == 1000
    # exact shares: a1 47.62, a2 95.24, a3 190.48, b1 666.67 -> floors 998, the two largest remainders +1
    assert weights == {"a1": 48, "a2": 95, "a3": 190, "b1": 667}


def test_iterations_are_derived():
    assert iterations(57_874_242_563, 8192, 1024) == 6900
    assert iterations(8192 * 1024, 8192, 1024) == 1


def test_list_iterations_reads_a_written_list(tmp_path):
    path = write_all_list(tmp_path / "l.sh", "r", {"a": 100, "b": 29})
    assert list_iterations(path, 16, 2) == (129, 5)


# ---------------------------------------------------------------------------------------------
# Errors name what is wrong
# ---------------------------------------------------------------------------------------------
BASE = "datasets: [ds]\nsources: {a: [a/*], b: [b/*]}\nsizes:\n"


@pytest.mark.parametrize("sizes, size, message", [
    ("  s: {ratio: {a: -0.5, b: 1}}\n", "s", r"sizes\.s\.ratio\.a: ratio must not be negative"),
    ("  s: {ratio: {a: lots, b: 1}}\n", "s", r"sizes\.s\.ratio\.a: ratio must be a number, got 'lots'"),
    ("  s: {ratio: {a: 1}}\n", "s", r"sizes\.s\.ratio: no ratio for source\(s\) b"),
    ("  s: {ratio: {a: 1, c: 1}}\n", "s", r"sizes\.s\.ratio: unknown source\(s\) c"),
    ("  s: {ratio: {a: 1, b: 1}}\n  t: {ratio: {a: 1, b: 1}}\n", "nope", r"unknown size 'nope' .*\(known: s, t\)"),
    ("  s: {total: 100, share: {a: 90, b: 10}}\n", "s",
     r"source a would be repeated 9\.000 times .* max_repetitions 4"),
    ("  s: {ratio: {a: 5, b: 1}}\n", "s", r"sizes\.s\.ratio\.a = 5 is more than the source's max_repetitions 4"),
    ("  s: {total: 5 tokens, share: {a: 1, b: 1}}\n", "s", r"sizes\.s\.total: expected a token total"),
    ("  s: {union: [s]}\n", "s", r"size s includes itself"),
    ("  s: {union: [other:1B]}\n", "s", r"TASK=other: .* not found"),
    ("  s: {union: [x]}\n", "s", r"union names unknown size 'x'"),
    ("  s: {ratio: {a: 1, b: 1}, share: {a: 1, b: 1}}\n", "s", r"exactly one of ratio, share or union"),
    ("  s: {ratio: {a: 1, b: 1}, rate: 2}\n", "s", r"sizes\.s: unknown key\(s\) rate"),
])
def test_mix_errors(tmp_path, sizes, size, message):
    tasks = tmp_path / "tasks"
    write_task(tasks, "t", BASE + sizes)
    write_all_list(tasks / "t" / "train_data.all.sh", "ds-x-tokenized", {"a/1": 10, "b/1": 10})
    with pytest.raises(PipelineError, match=message):
        mix_of("t", size, {}, tasks)


def test_mix_list_errors(tmp_path):
    tasks = tmp_path / "tasks"
    write_task(tasks, "t", BASE + "  s: {ratio: {a: 1, b: 1}}\n")
    config = load_task("t", tasks)
    with pytest.raises(PipelineError, match=r"all-files list of task t not found .*make count TASK=t"):
        resolve(config, "s", {}, tasks)
    bad = write_all_list(tmp_path / "x.sh", "ds-x-tokenized", {"a/1": 1, "c/1": 1, "b/1": 1})
    with pytest.raises(PipelineError, match=r"ds-x-tokenized/c/1_text_document matches no source"):
        files_from_list(config, bad)
    bad = write_all_list(tmp_path / "y.sh", "other-x-tokenized", {"a/1": 1})
    with pytest.raises(PipelineError, match=r"other-x-tokenized/a/1_text_document is under none of the task's"):
        files_from_list(config, bad)
    two = tmp_path / "z.sh"
    two.write_text("export TRAIN_DATA_PATH=(\n    1 ds-x-tokenized/a/1\n    1 ds-y-tokenized/b/1\n)\n")
    with pytest.raises(PipelineError, match=r"more than one tokenizer"):
        files_from_list(config, two)


def test_mix_script_unknown_size_fails_nonzero(tmp_path):
    result = run_script("mix", "--task", "demo", "--size", "huge", "--seq-length", "8", "--global-batch-size", "2",
                        "--out-dir", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "unknown size 'huge' for task demo (known: demo, demo-ratio, demo-both)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_committed_task_configs_load():
    for task in (DOLMINO, MEGAMATH, "demo"):
        config = load_task(task)
        assert config.sizes
    assert set(load_task(DOLMINO).sizes) >= {"50B", "100B", "300B", "olmo2-50B", "olmo2-100B", "olmo2-300B"}
    assert set(load_task(MEGAMATH).sizes) == {"80B", "130B", "180B", "380B"}


def test_make_n_mix_shows_the_count_then_the_mix(make, exp_dir, tmp_path):
    make_tokenized(exp_dir, "dolmino-mix-1124", "demo", DEMO_FILES)
    out = tmp_path / "out"
    knobs = ("TASK=demo", "SIZE=demo", "TOKENIZER_NAME=demo", "PARAM=tiny", f"TASK_OUT={out}")
    planned = make("-n", "mix", *knobs).stdout
    assert "scripts/count.py" in planned and "scripts/mix.py" in planned
    assert planned.index("scripts/count.py") < planned.index("scripts/mix.py")
    assert not out.exists()   # -n ran nothing
    make("mix", *knobs)
    assert (out / "train_data.all.sh").is_file() and (out / "train_data_demo.sh").is_file()


def test_without_tokenized_data_here_an_existing_all_list_is_used_as_it_is(make, tmp_path):
    # a login node that has the lists but not the data: mix must not try to count
    out = tmp_path / "out"
    write_list(out / "train_data.all.sh", [Entry(tokens, f"/data/{rel}_text_document")
                                           for rel, tokens in sorted(DEMO_FILES.items())])
    planned = make("-n", "mix", "TASK=demo", "SIZE=demo", "TOKENIZER_NAME=demo", "PARAM=tiny", f"TASK_OUT={out}").stdout
    assert "scripts/count.py" not in planned and "scripts/mix.py" in planned
