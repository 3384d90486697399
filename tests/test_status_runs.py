"""make status: per-run rows (iteration, checkpoint, HF conversions) and soups, beside the stage table."""
from __future__ import annotations

import json
import re

from report_helpers import WARNING, args_dump, iteration_line, saved_line, write_log


def add_run(exp, seed, lines, tracker=None, saved=(), hf=(), hf_partial=()):
    run = exp / "runs" / "v4-test" / "tiny" / "50B" / f"seed{seed}"
    for n, text in enumerate(lines):
        write_log(run, f"{100 + n}.pbs1", text)
    ckpt = run / "checkpoints"
    for it in saved:
        (ckpt / f"iter_{it:07d}").mkdir(parents=True)
    if tracker is not None:
        (ckpt / "latest_checkpointed_iteration.txt").write_text(f"{tracker}\n")
    for it in hf:
        folder = run / "checkpoints_hf" / f"iter_{it:07d}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    for it in hf_partial:   # a conversion still running: no config.json yet
        (run / "checkpoints_hf" / f"iter_{it:07d}").mkdir(parents=True)
    return run


def line(i, total=200):
    return iteration_line(i, total, i * 8, 1000.0, 1e-5, 8, 2.0)


def test_status_lists_runs_and_soups(make, exp_dir):
    # seed42: two jobs (a restart), the second one further along; a long log only its tail is read
    first = args_dump(seq_length=4096) + "".join(line(i) for i in range(1, 101)) + saved_line(100)
    second = WARNING + "".join(line(i) for i in range(101, 151)) + WARNING + "padding\n" * 5000
    run = add_run(exp_dir, 42, [first, second], tracker=150, saved=(100, 150), hf=(100, 150), hf_partial=(50,))
    verdict = {"passed": True, "probes": 40, "documents": 12}   # the latest conversion's tokenizer check
    (run / "checkpoints_hf" / "iter_0000150" / "megatron_conversion.json").write_text(
        json.dumps({"tokenizer_check": verdict}))
    started = add_run(exp_dir, 666, [args_dump(seq_length=4096)])      # started, no iteration line yet
    (started / "start").mkdir()
    (started / "start" / "latest_checkpointed_iteration.txt").write_text("432581\n")   # made by make init
    add_run(exp_dir, 7, [], saved=(200,))                     # checkpoint without a tracker file
    soups = exp_dir / "soups"
    (soups / "avg-3").mkdir(parents=True)
    (soups / "avg-3" / "soup.json").write_text(json.dumps(
        {"ingredients": [{}, {}, {}], "method": "linear", "dtype": "bfloat16", "tokenizer_check": verdict}))
    (soups / ".avg-2.tmp.1234").mkdir()
    (soups / "stray").mkdir()

    out = make("status").stdout
    assert re.search(r"^download\s+missing", out, re.M), "the stage table is still there"
    assert "none submitted" in out
    assert re.search(r"^v4-test/tiny/50B/seed42\s+150/200 \(75%\)\s+iter 150 \(2 saved\)\s+"
                     r"2: 100, 150 \(\+1 incomplete\)\s+ok: 40 probes \+ 12 docs\s+2\s+train-101\.pbs1\.out",
                     out, re.M), out
    assert re.search(r"^v4-test/tiny/50B/seed666\s+no iteration yet\s+start only \(init from iter 432581\)\s+-\s+-\s+"
                     r"1\s", out, re.M), out
    assert re.search(r"^v4-test/tiny/50B/seed7\s+not started\s+iter 200\? \(no latest_checkpointed_iteration"
                     r"\.txt\)\s+-\s+-\s+0\s+-$", out, re.M), out
    assert re.search(r"^avg-3\s+done\s+3 models, linear, bfloat16\s+ok: 40 probes \+ 12 docs", out, re.M), out
    assert re.search(r"^avg-2\s+merging \(or killed\)", out, re.M), out
    assert re.search(r"^stray\s+incomplete\s+no soup\.json", out, re.M), out
    # the sections come in order: stages, jobs, runs, soups
    assert out.index("stage") < out.index("Jobs") < out.index("Runs (under") < out.index("Soups (under")


def test_status_without_runs_or_soups(make, exp_dir):
    out = make("status").stdout
    assert f"Runs: none under {exp_dir / 'runs'}" in out and f"Soups: none under {exp_dir / 'soups'}" in out


def test_last_iteration_reads_only_the_tail(tmp_path):
    from pipeline.megatron_log import last_iteration
    log = tmp_path / "train-1.out"
    log.write_text(line(1) + "x" * 300_000 + "\n" + line(2) + "warning\n")
    record = last_iteration([log], tail_bytes=4096)
    assert (record.iteration, record.train_iters) == (2, 200)
    old = tmp_path / "train-0.out"
    old.write_text(line(5))
    empty = tmp_path / "train-2.out"
    empty.write_text("no iterations\n")
    assert last_iteration([old, empty]).iteration == 5   # the newest log without a line falls back
