"""Training reports (`make report`): runs' Megatron logs -> metrics.csv, PNG plots, summary.txt/.json.

pipeline.megatron_log parses the log lines; this module picks the runs and their report folder,
resolves seq_length, writes the outputs, and does nothing when the logs, the options and this code
are unchanged (the signature in provenance.json).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import megatron_log
from pipeline.atomic import atomic_output, write_json, write_text
from pipeline.errors import fail
from pipeline.megatron_log import (COLUMNS, RunLog, Summary, arg_int, find_logs, finite, parse_file, merge_jobs,
                                   summarize, summary_text)
from pipeline.params import load_params
from pipeline.paths import run_dir as run_dir_of
from pipeline.progress import progress
from pipeline.provenance import provenance, sha256_file

OUTPUTS = ("metrics.csv", "summary.json", "summary.txt", "loss.png", "lr.png", "throughput.png", "grad_norm.png",
           "overview.png")
INT_COLUMNS = {"iteration", "train_iters", "consumed_samples", "skipped_samples", "global_batch_size",
               "skipped_iterations", "nan_iterations", "tokens"}
OPTIONAL_COLUMNS = {"skipped_samples", "decoupled_learning_rate", "num_zeros", "params_norm"}
# the code a report depends on: a change to it redoes the report
CODE = [Path(__file__).resolve(), Path(megatron_log.__file__).resolve()]


@dataclass
class Run:
    folder: Path
    label: str
    param: str | None            # PARAM from the folder's place under EXP/runs, for seq_length
    logs: list[Path]
    log: RunLog | None = None
    seq_length: int | None = None
    summary: Summary | None = None


# ------------------------------------------------------------------ which runs, which labels

def runs_from_args(exp: Path, run_dirs: list[Path], task: str | None, param: str | None, size: str | None,
                   seeds: list[int]) -> list[tuple[Path, str | None]]:
    """(folder, PARAM or None) for each run asked for."""
    if run_dirs:
        found = []
        for folder in run_dirs:
            folder = folder.resolve()
            parts = _under_runs(exp, folder)
            found.append((folder, parts[1] if parts and len(parts) == 4 else param))
        return found
    if not (task and param and size and seeds):
        fail("report: give --run-dir, or --task, --param, --size and --seeds")
    return [(run_dir_of(exp, task, param, size, seed), param) for seed in seeds]


def _under_runs(exp: Path, folder: Path) -> tuple[str, ...] | None:
    try:
        return folder.relative_to(exp / "runs").parts
    except ValueError:
        return None


def labels_for(exp: Path, folders: list[Path]) -> tuple[list[str], list[str]]:
    """Short labels (the path parts that differ between runs) and the parts they share."""
    paths = [_under_runs(exp, f) or f.parts for f in folders]
    common: list[str] = []
    for column in zip(*paths):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    if len(folders) == 1:
        common = list(paths[0][:-1])
    labels = ["/".join(p[len(common):]) or p[-1] for p in paths]
    if len(set(labels)) != len(labels):
        fail(f"report: the same run folder is named twice ({', '.join(map(str, folders))})")
    return labels, [c for c in common if c != "/"]


def report_dir(exp: Path, runs: list[Run], common: list[str], name: str | None) -> Path:
    if len(runs) == 1 and not name:
        return runs[0].folder / "report"
    if not name:
        name = "-".join(common + ["+".join(r.label.replace("/", "_") for r in runs)])
    if "/" in name or name in (".", ".."):
        fail(f"--name {name!r}: a report name must not contain '/'")
    return exp / "reports" / name


# ------------------------------------------------------------------ reading

def resolve_seq_length(run: Run, override: int | None) -> int:
    if override:
        return override
    assert run.log is not None
    from_log = arg_int(run.log.args, "seq_length")
    if from_log:
        return from_log
    if run.param:
        return load_params(run.param).get("seq_length", int)
    fail(f"{run.folder}: seq_length unknown: no argument dump in {', '.join(map(str, run.logs))} and no PARAM; "
         "pass --seq-length (SEQ_LENGTH=...)")


def read_runs(runs: list[Run], seq_length: int | None, show_progress: bool = True) -> None:
    total = sum(p.stat().st_size for r in runs for p in r.logs)
    with progress(total=total, desc="report: read logs", unit="B", unit_scale=True, enabled=show_progress) as bar:
        for run in runs:
            run.log = merge_jobs([parse_file(p, on_bytes=bar.update) for p in run.logs])
            if not run.log.records:
                fail(f"{run.folder}: no Megatron iteration lines in {', '.join(p.name for p in run.logs)}")
            run.seq_length = resolve_seq_length(run, seq_length)
            run.summary = summarize(run.log, run.seq_length, run.label, str(run.folder))


# ------------------------------------------------------------------ writing

def _cell(column: str, value: float | None) -> str:
    if value is None:
        return ""
    if column in INT_COLUMNS and finite(value) and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def metrics_csv(runs: list[Run]) -> str:
    extras: list[str] = []
    present: set[str] = set()
    for run in runs:
        for record in run.log.records:
            extras += [k for k in record.extra if k not in extras]
            present.update(record.values)
    # the usual fields always; the optional ones (params norm, skipped samples, ...) when some line has them
    columns = [c for c in COLUMNS[2:] if c not in OPTIONAL_COLUMNS or c in present]
    header = ["run", "job", "timestamp", "iteration", "train_iters", "tokens", *columns, *extras]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for run in runs:
        for r in run.log.records:
            consumed = r.get("consumed_samples")
            tokens = consumed * run.seq_length if finite(consumed) else None
            writer.writerow([run.label, r.job, r.timestamp or "", r.iteration, r.train_iters, _cell("tokens", tokens),
                             *(_cell(c, r.get(c)) for c in columns),
                             *(_cell(c, r.extra.get(c)) for c in extras)])
    return buffer.getvalue()


PLOTS = {
    # file stem: (column, x axis, title, y label)
    "loss": ("lm_loss", "tokens", "LM loss", "lm loss"),
    "lr": ("learning_rate", "iteration", "Learning rate", "learning rate"),
    "throughput": ("tflops_per_gpu", "iteration", "Throughput per GPU", "TFLOP/s/GPU"),
    "grad_norm": ("grad_norm", "iteration", "Gradient norm", "grad norm"),
}


def _token_scale(runs: list[Run]) -> tuple[float, str]:
    most = max(((r.get("consumed_samples") or 0) * run.seq_length for run in runs for r in run.log.records),
               default=0)
    for scale, name in ((1e12, "trillions"), (1e9, "billions"), (1e6, "millions"), (1e3, "thousands")):
        if most >= scale:
            return scale, name
    return 1.0, ""


def _x(run: Run, record, x_axis: str, scale: float) -> float | None:
    if x_axis == "iteration":
        return record.iteration
    consumed = record.get("consumed_samples")
    return consumed * run.seq_length / scale if finite(consumed) else None


def draw(ax, runs: list[Run], stem: str) -> None:
    column, x_axis, title, ylabel = PLOTS[stem]
    scale, scale_name = _token_scale(runs)
    drawn = marked = False
    for n, run in enumerate(runs):
        points = [(_x(run, r, x_axis, scale), r.get(column)) for r in run.log.records]
        points = [(x, y) for x, y in points if x is not None and finite(y)]
        if not points:
            continue
        drawn = True
        color = f"C{n % 10}"
        ax.plot(*zip(*points), color=color, linewidth=1.2, label=run.label, marker="." if len(points) < 50 else None)
        if stem == "throughput" and run.summary and run.summary.mean_tflops_per_gpu:
            ax.axhline(run.summary.mean_tflops_per_gpu, color=color, linewidth=0.8, linestyle="--",
                       label=f"mean {run.summary.mean_tflops_per_gpu:.1f}" if len(runs) == 1 else None)
            marked = marked or len(runs) == 1
        if stem in ("loss", "grad_norm"):
            # iterations with NaNs (no loss logged there) as red dotted lines
            bad = [_x(run, r, x_axis, scale) for r in run.log.records if (r.get("nan_iterations") or 0) > 0]
            for k, x in enumerate(x for x in bad if x is not None):
                ax.axvline(x, color="red", linewidth=1.5, linestyle=":", label="NaN iteration" if k == 0 else None)
                marked = True
        if len(runs) == 1:
            starts: dict = {}
            for r in run.log.records:
                starts.setdefault(r.segment, r)
            for k, r in enumerate(list(starts.values())[1:]):
                x = _x(run, r, x_axis, scale)
                if x is not None:
                    ax.axvline(x, color="gray", linewidth=0.8, linestyle="--", label="restart" if k == 0 else None)
                    marked = True
    ax.set_title(title)
    ax.set_xlabel(f"tokens ({scale_name})" if x_axis == "tokens" and scale_name else x_axis)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, f"no '{column}' values in the logs", ha="center", va="center", transform=ax.transAxes)
    elif len(runs) > 1 or marked:
        ax.legend(fontsize="small")


def _save(fig, path: Path) -> None:
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100, metadata={"Software": None})


def write_plots(runs: list[Run], out: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    for stem in PLOTS:
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        draw(fig.add_subplot(), runs, stem)
        _save(fig, out / f"{stem}.png")
    fig = Figure(figsize=(14, 9), layout="constrained")
    for n, stem in enumerate(PLOTS, 1):
        draw(fig.add_subplot(2, 2, n), runs, stem)
    fig.suptitle(", ".join(r.label for r in runs))
    _save(fig, out / "overview.png")


def summary_json(runs: list[Run]) -> dict:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    return {"runs": [{k: clean(v) for k, v in asdict(r.summary).items()} for r in runs]}


def signature(runs: list[Run], options: dict) -> str:
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for path in [*CODE, *(p for r in runs for p in r.logs)]:
        digest.update(f"{path}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def up_to_date(out: Path, sig: str) -> bool:
    record = out / "provenance.json"
    if not record.is_file() or not all((out / name).is_file() for name in OUTPUTS):
        return False
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("inputs_signature") == sig
    except json.JSONDecodeError:
        return False


def make_report(exp: Path, wanted: list[tuple[Path, str | None]], seq_length: int | None = None,
                name: str | None = None, output: Path | None = None, pattern: str = "train-*.out",
                force: bool = False, show_progress: bool = True) -> tuple[Path, str, bool]:
    """Write the report; returns (folder, summary text, whether anything was written)."""
    labels, common = labels_for(exp, [folder for folder, _ in wanted])
    runs = []
    for (folder, param), label in zip(wanted, labels):
        if not folder.is_dir():
            fail(f"{folder}: run folder not found")
        logs = find_logs(folder, pattern)
        if not logs:
            fail(f"{folder}: no training logs ({pattern}) in the run folder")
        runs.append(Run(folder=folder, label=label, param=param, logs=logs))
    out = (output.resolve() if output else report_dir(exp, runs, common, name))
    sig = signature(runs, {"seq_length": seq_length, "pattern": pattern, "labels": labels,
                           "params": [r.param for r in runs]})
    if not force and up_to_date(out, sig):
        return out, (out / "summary.txt").read_text(encoding="utf-8"), False
    read_runs(runs, seq_length, show_progress)
    text = "".join(summary_text(r.summary) for r in runs)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "metrics.csv", metrics_csv(runs))
    write_plots(runs, out)
    write_json(out / "summary.json", summary_json(runs))
    write_text(out / "summary.txt", text)
    write_json(out / "provenance.json", provenance(
        inputs_signature=sig, runs=[str(r.folder) for r in runs],
        logs={str(p): p.stat().st_size for r in runs for p in r.logs},
        seq_length={r.label: r.seq_length for r in runs}))
    return out, text, True
