"""make report: Megatron logs across restarts -> CSV, plots and a summary with the right numbers."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from conftest import run_script
from report_helpers import WARNING, args_dump, iteration_line, saved_line, write_log

SEQ, BATCH, TARGET = 4096, 8, 100
RUN_PARTS = ("v4-test", "tiny", "50B")


def lr(i: int) -> float:
    return 3e-5 * (1 - i / TARGET)


def line(i: int, ms: float, tflops: float, loss: float | None, **kw) -> str:
    return iteration_line(i, TARGET, i * BATCH, ms, lr(i), BATCH, loss, tflops=tflops,
                          timestamp=f"2025-01-0{kw.pop('day', 1)} {i // 60:02d}:{i % 60:02d}:00", **kw)


def first_job() -> str:
    return (WARNING + args_dump(seq_length=SEQ, global_batch_size=BATCH, train_iters=TARGET, world_size=8)
            + "> building train, validation, and test datasets ...\n"
            + line(10, 5000.0, 100.0, 3.0)
            + WARNING
            + line(20, 1000.0, 400.0, 2.8)
            # a NaN iteration: skipped, no lm loss, no grad norm
            + line(30, 1100.0, 380.0, None, grad_norm=None, skipped=1, nan=1)
            + saved_line(30)
            + line(40, 1000.0, 400.0, 2.6)
            + line(50, 1000.0, 400.0, 2.5)
            + "Traceback (most recent call last):\nRuntimeError: NCCL timeout\n")


def second_job() -> str:
    # the restart resumes from the checkpoint at 30: iterations 40 and 50 are logged again
    return (args_dump(seq_length=SEQ, global_batch_size=BATCH, train_iters=TARGET, world_size=8)
            + line(40, 4000.0, 120.0, 2.61, day=2)
            + "[1,3]<stderr>: UserWarning: glued to the next line without a newline "   # interleaved stderr
            + line(50, 1200.0, 390.0, 2.51, day=2)
            + WARNING
            + "[1,7]<stdout>:" + line(60, 1200.0, 390.0, 2.45, day=2)   # mpirun --tag-output prefix
            + saved_line(60)
            + line(70, 1300.0, 370.0, 2.40, day=2))


def make_run(exp: Path, seed: int = 42, second: str | None = None) -> Path:
    folder = exp / "runs" / Path(*RUN_PARTS) / f"seed{seed}"
    # job ids that sort wrongly as text (999 > 1000): the natural order must win
    write_log(folder, "999.pbs1", first_job())
    write_log(folder, "1000.pbs1", second if second is not None else second_job())
    return folder


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def color_pixels(png: Path, rgb: tuple[int, int, int], tolerance: float = 0.06) -> int:
    from matplotlib.image import imread
    image = imread(str(png))[..., :3]
    target = [c / 255 for c in rgb]
    close = (abs(image[..., 0] - target[0]) < tolerance) & (abs(image[..., 1] - target[1]) < tolerance) \
        & (abs(image[..., 2] - target[2]) < tolerance)
    return int(close.sum())


BLUE, ORANGE, RED = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0xFF, 0x00, 0x00)


def test_parse_line_reads_every_field_and_tolerates_missing_ones():
    from pipeline.megatron_log import parse_line
    record = parse_line(iteration_line(10, 6900, 10240, 12345.6, 2.999e-5, 1024, 2.345678, grad_norm=0.456,
                                       tflops=400.1))
    assert (record.iteration, record.train_iters, record.timestamp) == (10, 6900, "2025-01-01 00:00:00")
    assert record.values == {"consumed_samples": 10240, "elapsed_ms": 12345.6, "tflops_per_gpu": 400.1,
                             "learning_rate": 2.999e-5, "global_batch_size": 1024, "lm_loss": 2.345678,
                             "loss_scale": 1.0, "grad_norm": 0.456, "skipped_iterations": 0, "nan_iterations": 0}
    old = parse_line(iteration_line(5, 10, 40, 1.0, 1e-4, 8, None, grad_norm=None, tflops=None, timestamp=None)
                     .replace(" |\n", " | mtp_1 loss: 3.5E+00 | lm loss: NAN |\n"))
    assert old.timestamp is None and "tflops_per_gpu" not in old.values and "grad_norm" not in old.values
    assert math.isnan(old.values["lm_loss"]) and old.extra == {"mtp_1_loss": 3.5}
    assert parse_line("WARNING: iteration count is low") is None


def test_report_of_a_restarted_run(exp_dir):
    folder = make_run(exp_dir)
    result = run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder))
    out = folder / "report"
    assert f"report: {out}" in result.stdout

    table = rows(out / "metrics.csv")
    assert [int(r["iteration"]) for r in table] == [10, 20, 30, 40, 50, 60, 70]
    assert "params_norm" not in table[0] and "lm_loss" in table[0], "optional fields only when logged"
    assert [r["job"] for r in table] == ["999.pbs1"] * 3 + ["1000.pbs1"] * 4   # the later job's 40, 50 win
    by_iter = {int(r["iteration"]): r for r in table}
    assert float(by_iter[40]["lm_loss"]) == 2.61 and float(by_iter[50]["lm_loss"]) == 2.51
    assert float(by_iter[50]["elapsed_ms"]) == 1200.0 and float(by_iter[60]["tflops_per_gpu"]) == 390.0
    assert by_iter[30]["lm_loss"] == "" and by_iter[30]["grad_norm"] == ""
    assert by_iter[30]["nan_iterations"] == "1" and by_iter[30]["skipped_iterations"] == "1"
    assert int(by_iter[70]["tokens"]) == 70 * BATCH * SEQ and int(by_iter[70]["consumed_samples"]) == 70 * BATCH
    assert float(by_iter[20]["learning_rate"]) == float(f"{lr(20):.6E}")
    assert by_iter[60]["timestamp"] == "2025-01-02 01:00:00" and by_iter[70]["train_iters"] == "100"

    summary = json.loads((out / "summary.json").read_text())["runs"][0]
    # means leave out each job's first line (start-up): 20, 30 from the first job, 50, 60, 70 from the second
    assert summary["mean_tflops_per_gpu"] == pytest.approx((400 + 380 + 390 + 390 + 370) / 5)
    assert summary["mean_elapsed_ms"] == pytest.approx((1000 + 1100 + 1200 + 1200 + 1300) / 5)
    assert summary["tokens_per_second"] == pytest.approx(BATCH * SEQ / 1.160)
    # ETA: 30 iterations left at the latest job's pace (1233.3 ms)
    assert summary["eta_seconds"] == pytest.approx(30 * (1200 + 1200 + 1300) / 3 / 1000)
    assert summary["tokens"] == 70 * BATCH * SEQ and summary["target_tokens"] == TARGET * BATCH * SEQ
    assert (summary["iteration"], summary["train_iters"], summary["seq_length"]) == (70, TARGET, SEQ)
    assert (summary["latest_loss"], summary["latest_loss_iteration"]) == (2.40, 70)
    assert (summary["nan_iterations"], summary["skipped_iterations"], summary["nan_at"]) == (1, 1, [30])
    assert (summary["restarts"], summary["relogged"], summary["jobs"]) == (1, 2, ["999.pbs1", "1000.pbs1"])
    assert summary["checkpoints_saved"] == [30, 60]
    assert summary["warnings"] == 2 * 3   # three two-line warnings on their own lines; the glued one is not

    text = (out / "summary.txt").read_text()
    assert text in result.stdout
    for needle in ("70 / 100 (70.0 %)", "2.29M of 3.28M", "latest loss      2.4000 at iteration 70",
                   "386.0 TFLOP/s/GPU", "ETA              0m 37s", "NaN iterations   1 (at 30)",
                   "restarts         1 (2 jobs: 999.pbs1, 1000.pbs1; 2 logged"):
        assert needle in text, needle

    for name in ("loss.png", "lr.png", "throughput.png", "grad_norm.png", "overview.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    loss_png = out / "loss.png"
    assert color_pixels(loss_png, BLUE) > 300, "the loss curve is drawn"
    assert color_pixels(loss_png, RED) > 30, "the NaN iteration is marked"
    assert color_pixels(out / "lr.png", BLUE) > 300 and color_pixels(out / "throughput.png", BLUE) > 300
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["seq_length"] == {"seed42": SEQ} and provenance["inputs_signature"]


def test_rerun_is_skipped_then_redone_when_the_logs_grow(exp_dir):
    folder = make_run(exp_dir)
    out = folder / "report"
    run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder))
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder))
    assert "up to date" in again.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    forced = run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder), "--force")
    assert "up to date" not in forced.stdout
    for name, data in first.items():   # same logs: byte-identical outputs (provenance has the time)
        if name != "provenance.json":
            assert (out / name).read_bytes() == data, name
    with open(folder / "train-1000.pbs1.out", "a") as handle:
        handle.write(line(80, 1300.0, 370.0, 2.35, day=2))
    grown = run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder))
    assert "up to date" not in grown.stdout and "80 / 100" in grown.stdout
    assert rows(out / "metrics.csv")[-1]["iteration"] == "80"


def test_a_change_to_the_report_code_redoes_the_report(exp_dir, monkeypatch, tmp_path):
    from pipeline import megatron_log, run_report
    # the signature hashes the modules that hold the report's code, not the thin script
    assert run_report.CODE == [Path(run_report.__file__).resolve(), Path(megatron_log.__file__).resolve()]
    folder = make_run(exp_dir)
    wanted = run_report.runs_from_args(exp_dir, [folder], None, None, None, [])
    assert run_report.make_report(exp_dir, wanted, show_progress=False)[2]
    assert not run_report.make_report(exp_dir, wanted, show_progress=False)[2]
    code = tmp_path / "run_report.py"
    code.write_text(Path(run_report.__file__).read_text() + "# changed\n")
    monkeypatch.setattr(run_report, "CODE", [code, *run_report.CODE[1:]])
    assert run_report.make_report(exp_dir, wanted, show_progress=False)[2]

def test_restart_that_dies_early_drops_the_abandoned_iterations(exp_dir):
    # the second job resumes at 30 and logs only 40: the first job's 50 is from the abandoned trajectory
    folder = make_run(exp_dir, second=args_dump(seq_length=SEQ) + line(40, 4000.0, 120.0, 2.61, day=2))
    run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder))
    table = rows(folder / "report" / "metrics.csv")
    assert [(r["iteration"], r["job"]) for r in table] == [("10", "999.pbs1"), ("20", "999.pbs1"),
                                                           ("30", "999.pbs1"), ("40", "1000.pbs1")]
    summary = json.loads((folder / "report" / "summary.json").read_text())["runs"][0]
    assert (summary["restarts"], summary["relogged"], summary["iteration"]) == (1, 2, 40)


def test_several_seeds_share_one_plot_through_make(make, exp_dir):
    make_run(exp_dir, 42)
    other = exp_dir / "runs" / Path(*RUN_PARTS) / "seed666"
    write_log(other, "1234.pbs1", args_dump(seq_length=SEQ, global_batch_size=BATCH)
              + "".join(line(i, 1000.0, 400.0, 3.0 - i / 100) for i in range(10, 101, 10)))
    result = make("report", "TASK=v4-test", "PARAM=tiny", "SIZE=50B", "SEEDS=42 666")
    out = exp_dir / "reports" / "v4-test-tiny-50B-seed42+seed666"
    assert f"report: {out}" in result.stdout
    table = rows(out / "metrics.csv")
    assert {r["run"] for r in table} == {"seed42", "seed666"}
    assert [r["iteration"] for r in table if r["run"] == "seed666"] == [str(i) for i in range(10, 101, 10)]
    summaries = json.loads((out / "summary.json").read_text())["runs"]
    assert [(s["label"], s["iteration"], s["restarts"]) for s in summaries] == [("seed42", 70, 1),
                                                                                 ("seed666", 100, 0)]
    assert summaries[1]["eta_seconds"] == 0
    loss_png = out / "loss.png"
    assert color_pixels(loss_png, BLUE) > 300 and color_pixels(loss_png, ORANGE) > 300, "one curve per seed"


def test_make_report_for_one_seed_and_with_run_dir(make, exp_dir):
    folder = make_run(exp_dir, 42)
    result = make("report", "TASK=v4-test", "PARAM=tiny", "SIZE=50B", "SEED=42")
    assert f"report: {folder / 'report'}" in result.stdout
    again = make("report", f"RUN_DIR={folder}")
    assert "up to date" in again.stdout


def test_seq_length_from_the_flag_when_the_logs_have_no_argument_dump(exp_dir):
    folder = exp_dir / "elsewhere"
    write_log(folder, "5.local", line(10, 1000.0, 400.0, 3.0) + line(20, 1000.0, 400.0, 2.9))
    missing = run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder), check=False)
    assert missing.returncode == 1 and "seq_length unknown" in missing.stderr and str(folder) in missing.stderr
    run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(folder), "--seq-length", "2048")
    assert rows(folder / "report" / "metrics.csv")[-1]["tokens"] == str(20 * BATCH * 2048)


def test_seq_length_from_the_params_file(exp_dir, monkeypatch, tmp_path):
    from pipeline import params, run_report
    monkeypatch.setattr(params, "PARAMS_DIR", tmp_path)
    (tmp_path / "tiny.yaml").write_text("seq_length: 1024\nglobal_batch_size: 8\n")
    folder = exp_dir / "runs" / Path(*RUN_PARTS) / "seed1"
    write_log(folder, "7.local", line(10, 1000.0, 400.0, 3.0))
    out, text, written = run_report.make_report(
        exp_dir, run_report.runs_from_args(exp_dir, [folder], None, None, None, []), show_progress=False)
    assert written and "x seq_length 1024" in text
    assert rows(out / "metrics.csv")[0]["tokens"] == str(10 * BATCH * 1024)


def test_errors_name_the_run_folder(exp_dir):
    empty = exp_dir / "runs" / "t" / "p" / "s" / "seed1"
    empty.mkdir(parents=True)
    result = run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(empty), check=False)
    assert result.returncode == 1 and f"{empty}: no training logs" in result.stderr
    (empty / "train-1.out").write_text(WARNING + "no iterations yet\n")
    result = run_script("report", "--exp-dir", str(exp_dir), "--run-dir", str(empty), check=False)
    assert result.returncode == 1 and "no Megatron iteration lines in train-1.out" in result.stderr
    result = run_script("report", "--exp-dir", str(exp_dir), "--task", "t", "--param", "p", "--size", "s",
                        "--seeds", "2", check=False)
    assert result.returncode == 1 and "seed2: run folder not found" in result.stderr


def test_jobs_are_ordered_by_their_timestamps_when_job_ids_wrap_around():
    from pipeline.megatron_log import merge_jobs, parse_lines
    # PBS ids wrap: job 12 ran after job 9999999; its lines (resuming at 20) must replace the older ones
    late = parse_lines([line(20, 900.0, 410.0, 1.5, day=3), line(30, 900.0, 410.0, 1.4, day=3)], "12.pbs1")
    early = parse_lines([line(10, 1000.0, 400.0, 2.0), line(20, 1000.0, 400.0, 1.9), line(30, 1000.0, 400.0, 1.8)],
                        "9999999.pbs1")
    run = merge_jobs([late, early])
    assert [(r.iteration, r.job, r.get("lm_loss")) for r in run.records] == [
        (10, "9999999.pbs1", 2.0), (20, "12.pbs1", 1.5), (30, "12.pbs1", 1.4)]
    assert (run.restarts, run.relogged) == (1, 2)
    # without timestamps the given (natural job id) order stands
    plain = [parse_lines([text.split("] ", 1)[1] for text in job_lines], job) for job, job_lines in
             (("1.x", [line(10, 1.0, 1.0, 2.0)]), ("2.x", [line(10, 1.0, 1.0, 3.0)]))]
    assert [r.job for r in merge_jobs(plain).records] == ["2.x"]
