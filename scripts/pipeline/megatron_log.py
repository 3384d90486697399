"""Megatron-LM training logs: the per-iteration lines, the argument dump, saved checkpoints.

One training run is several PBS jobs (restarts), each leaving `train-<jobid>.out` in the run folder.
Megatron prints one line per log interval (fields separated by ' | '):

     [2025-01-01 00:00:00] iteration       10/    6900 | consumed samples:        10240 |
     elapsed time per iteration (ms): 12345.6 | throughput per GPU (TFLOP/s/GPU): 400.1 |
     learning rate: 2.999E-05 | global batch size:  1024 | lm loss: 2.345678E+00 | loss scale: 1.0 |
     grad norm: 0.456 | number of skipped iterations:   0 | number of nan iterations:   0 |

Fields come and go between versions and iterations (no timestamp or throughput in older versions,
no `lm loss` on a skipped iteration, `nan`/`NAN` values), lines may carry an mpirun prefix and
warnings from other ranks interleave: the parser finds `iteration N/ M` anywhere in a line and
reads whatever `name: value` fields follow it.

Restarts: a job resumes from its last checkpoint, so it logs some iterations again. When a job (or a
new segment inside one log) starts at iteration k, every earlier record at iteration >= k belongs to
the abandoned trajectory and is dropped: the later job's values win.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

# log field name -> column name, in CSV order
FIELDS = {
    "consumed samples": "consumed_samples",
    "skipped samples": "skipped_samples",
    "elapsed time per iteration (ms)": "elapsed_ms",
    "throughput per GPU (TFLOP/s/GPU)": "tflops_per_gpu",
    "learning rate": "learning_rate",
    "decoupled learning rate": "decoupled_learning_rate",
    "global batch size": "global_batch_size",
    "lm loss": "lm_loss",
    "loss scale": "loss_scale",
    "grad norm": "grad_norm",
    "num zeros": "num_zeros",
    "params norm": "params_norm",
    "number of skipped iterations": "skipped_iterations",
    "number of nan iterations": "nan_iterations",
}
COLUMNS = ["iteration", "train_iters", *FIELDS.values()]

_ITERATION = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_TIMESTAMP = re.compile(r"\[(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)\]\s*$")
_PAIR = re.compile(r"\s*([^:|]*[^:|\s])\s*:\s*([^|\s]+)\s*(?=\||$)")   # ` name: value |`
_ARGS_START = re.compile(r"-{3,} arguments -{3,}")
_ARG = re.compile(r"(\w+) \.{2,} (.*?)\s*$")
_SAVED = re.compile(r"successfully saved checkpoint (?:at|from) iteration\s+(\d+)")
_WARNING = re.compile(r"warning", re.IGNORECASE)
_JOB_ID = re.compile(r"^train-(.+)\.(?:out|log)$")
TAIL_BYTES = 1 << 18


@dataclass
class Record:
    """One iteration line."""
    iteration: int
    train_iters: int
    values: dict[str, float]          # column name -> value (known fields)
    extra: dict[str, float]           # other numeric `name: value` fields (e.g. other losses)
    timestamp: str | None
    job: str
    where: str                        # file:line
    segment: int = 0                  # index of the uninterrupted stretch this line belongs to

    def get(self, column: str) -> float | None:
        return self.values.get(column)


@dataclass
class JobLog:
    job: str
    path: Path
    records: list[Record] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    saved: list[int] = field(default_factory=list)
    warnings: int = 0

    @property
    def first_timestamp(self) -> str | None:
        return next((r.timestamp for r in self.records if r.timestamp), None)


@dataclass
class RunLog:
    """A run's merged history across its jobs."""
    jobs: list[JobLog]
    records: list[Record]             # kept records, by iteration
    segments: int                     # uninterrupted stretches of iteration lines
    relogged: int                     # records dropped because a later job logged past them again
    args: dict[str, str]              # argument dump, later jobs win

    @property
    def restarts(self) -> int:
        return max(self.segments - 1, 0)


def parse_line(line: str, job: str = "", where: str = "") -> Record | None:
    """The Record of one iteration line, or None when the line is something else."""
    match = _ITERATION.search(line)
    if not match:
        return None
    stamp = _TIMESTAMP.search(line[:match.start()])
    values: dict[str, float] = {}
    extra: dict[str, float] = {}
    for name, text in _PAIR.findall(line, match.end()):
        try:
            value = float(text)
        except ValueError:
            continue
        column = FIELDS.get(name)
        if column is not None:
            values[column] = value
        else:
            extra[re.sub(r"\W+", "_", name).strip("_").lower()] = value
    return Record(iteration=int(match[1]), train_iters=int(match[2]), values=values, extra=extra,
                  timestamp=stamp[1] if stamp else None, job=job, where=where)


def parse_lines(lines: Iterable[str], job: str, source: str = "",
                on_bytes: Callable[[int], None] | None = None) -> JobLog:
    log = JobLog(job=job, path=Path(source))
    in_args = False
    pending = 0
    for number, line in enumerate(lines, 1):
        if on_bytes is not None:
            pending += len(line)
            if number % 4096 == 0:
                on_bytes(pending)
                pending = 0
        if "iteration" in line:
            record = parse_line(line, job, f"{source}:{number}")
            if record is not None:
                log.records.append(record)
                continue
            saved = _SAVED.search(line)
            if saved:
                log.saved.append(int(saved[1]))
                continue
        if in_args:
            if "end of arguments" in line:
                in_args = False
                continue
            arg = _ARG.search(line)
            if arg:
                log.args[arg[1]] = arg[2]
                continue
        elif " arguments " in line and _ARGS_START.search(line):
            in_args = True
            continue
        if ("arn" in line or "ARN" in line) and _WARNING.search(line):
            log.warnings += 1
    if on_bytes is not None and pending:
        on_bytes(pending)
    return log


def parse_file(path: Path, job: str | None = None, on_bytes: Callable[[int], None] | None = None) -> JobLog:
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        # split on \n and \r alike: progress output and mpirun can leave bare carriage returns
        lines = (piece for line in handle for piece in line.split("\r"))
        return parse_lines(lines, job if job is not None else job_id(path), str(path), on_bytes)


def job_id(path: Path) -> str:
    match = _JOB_ID.match(path.name)
    return match[1] if match else path.stem


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_logs(run: Path, pattern: str = "train-*.out") -> list[Path]:
    """The run's job logs in job-id order (PBS ids grow; natural order so 9 < 10)."""
    return sorted((p for p in run.glob(pattern) if p.is_file()), key=lambda p: _natural(job_id(p)))


def order_jobs(jobs: list[JobLog]) -> list[JobLog]:
    """Jobs in the order they ran: by their first timestamp when every job has one, else as given."""
    with_lines = [j for j in jobs if j.records]
    if with_lines and all(j.first_timestamp for j in with_lines):
        position = {id(j): n for n, j in enumerate(jobs)}
        return sorted(jobs, key=lambda j: (j.first_timestamp or "", position[id(j)]))
    return jobs


def merge_jobs(jobs: list[JobLog]) -> RunLog:
    """One history: later segments replace what an earlier one logged at or past their first iteration."""
    jobs = order_jobs(jobs)
    kept: list[Record] = []
    segments = relogged = 0
    args: dict[str, str] = {}
    for job in jobs:
        args.update(job.args)
        previous: int | None = None
        for record in job.records:
            if previous is None or record.iteration <= previous:
                segments += 1
                before = len(kept)
                kept = [r for r in kept if r.iteration < record.iteration]
                relogged += before - len(kept)
            record.segment = segments - 1
            kept.append(record)
            previous = record.iteration
    return RunLog(jobs=jobs, records=kept, segments=segments, relogged=relogged, args=args)


def read_run(run: Path, pattern: str = "train-*.out", on_bytes: Callable[[int], None] | None = None) -> RunLog:
    return merge_jobs([parse_file(path, on_bytes=on_bytes) for path in find_logs(run, pattern)])


def arg_int(args: dict[str, str], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def last_iteration(paths: list[Path], tail_bytes: int = TAIL_BYTES) -> Record | None:
    """The last iteration line of the newest log that has one, reading only the files' tails."""
    for path in reversed(paths):
        try:
            with open(path, "rb") as handle:
                handle.seek(max(os.fstat(handle.fileno()).st_size - tail_bytes, 0))
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        for line in reversed(text.replace("\r", "\n").splitlines()):
            record = parse_line(line, job_id(path))
            if record is not None:
                return record
    return None


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass
class Summary:
    """The numbers a researcher looks at first, for one run."""
    label: str
    run_dir: str
    jobs: list[str]
    restarts: int
    relogged: int
    iteration: int | None
    train_iters: int | None
    seq_length: int | None
    global_batch_size: int | None
    consumed_samples: int | None
    tokens: int | None
    target_tokens: int | None
    latest_loss: float | None
    latest_loss_iteration: int | None
    mean_tflops_per_gpu: float | None
    mean_elapsed_ms: float | None
    tokens_per_second: float | None
    eta_seconds: float | None
    nan_iterations: int
    skipped_iterations: int
    nan_at: list[int]
    checkpoints_saved: list[int]
    warnings: int


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if finite(v)]
    return sum(values) / len(values) if values else None


def steady(records: list[Record]) -> list[Record]:
    """Records without the first line of each segment (it includes start-up and warm-up time)."""
    firsts = {}
    for n, record in enumerate(records):
        firsts.setdefault(record.segment, n)
    rest = [r for n, r in enumerate(records) if firsts[r.segment] != n]
    return rest or records


def summarize(run: RunLog, seq_length: int | None, label: str = "", run_dir: str = "") -> Summary:
    records = run.records
    last = records[-1] if records else None
    loss = next((r for r in reversed(records) if finite(r.get("lm_loss"))), None)
    stable = steady(records)
    mean_ms = _mean([r.get("elapsed_ms") for r in stable])
    latest = steady([r for r in records if last is not None and r.segment == last.segment])
    latest_ms = _mean([r.get("elapsed_ms") for r in latest]) or mean_ms
    consumed = int(last.get("consumed_samples")) if last and finite(last.get("consumed_samples")) else None
    batch = int(last.get("global_batch_size")) if last and finite(last.get("global_batch_size")) else None
    tokens_per_s = None
    if mean_ms and batch and seq_length:
        tokens_per_s = batch * seq_length / (mean_ms / 1000)
    eta = None
    if last is not None and latest_ms is not None:
        eta = max(last.train_iters - last.iteration, 0) * latest_ms / 1000
    nan_at = [r.iteration for r in records if (r.get("nan_iterations") or 0) > 0]
    saved = sorted({i for job in run.jobs for i in job.saved})
    return Summary(
        label=label, run_dir=run_dir, jobs=[j.job for j in run.jobs if j.records],
        restarts=run.restarts, relogged=run.relogged,
        iteration=last.iteration if last else None, train_iters=last.train_iters if last else None,
        seq_length=seq_length, global_batch_size=batch, consumed_samples=consumed,
        tokens=consumed * seq_length if consumed is not None and seq_length else None,
        target_tokens=last.train_iters * batch * seq_length if last and batch and seq_length else None,
        latest_loss=loss.get("lm_loss") if loss else None, latest_loss_iteration=loss.iteration if loss else None,
        mean_tflops_per_gpu=_mean([r.get("tflops_per_gpu") for r in stable]), mean_elapsed_ms=mean_ms,
        tokens_per_second=tokens_per_s, eta_seconds=eta,
        nan_iterations=int(sum(r.get("nan_iterations") or 0 for r in records)),
        skipped_iterations=int(sum(r.get("skipped_iterations") or 0 for r in records)),
        nan_at=nan_at, checkpoints_saved=saved, warnings=sum(j.warnings for j in run.jobs))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def human_count(value: float | None) -> str:
    if value is None:
        return "unknown"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def summary_text(s: Summary) -> str:
    """A short human-readable block."""
    def num(value: float | None, fmt: str) -> str:
        return "unknown" if value is None else format(value, fmt)

    lines = [f"{s.label}  ({s.run_dir})"]
    if s.iteration is None:
        lines.append("  no iteration lines in the logs yet")
        return "\n".join(lines) + "\n"
    pct = f" ({100 * s.iteration / s.train_iters:.1f} %)" if s.train_iters else ""
    lines.append(f"  iterations       {s.iteration:,} / {s.train_iters:,}{pct}")
    target = f" of {human_count(s.target_tokens)}" if s.target_tokens else ""
    lines.append(f"  tokens           {human_count(s.tokens)}{target} (consumed samples {num(s.consumed_samples, ',')}"
                 f" x seq_length {s.seq_length})")
    loss_at = f" at iteration {s.latest_loss_iteration:,}" if s.latest_loss_iteration is not None else ""
    lines.append(f"  latest loss      {num(s.latest_loss, '.4f')}{loss_at}")
    lines.append(f"  throughput       {num(s.mean_tflops_per_gpu, '.1f')} TFLOP/s/GPU mean, "
                 f"{num(s.mean_elapsed_ms and s.mean_elapsed_ms / 1000, '.2f')} s/iteration, "
                 f"{human_count(s.tokens_per_second)} tokens/s")
    left = (s.train_iters or 0) - s.iteration
    lines.append(f"  ETA              {duration(s.eta_seconds)} ({left:,} iterations left)")
    nan_at = ", ".join(map(str, s.nan_at[:10])) + (" ..." if len(s.nan_at) > 10 else "")
    lines.append(f"  NaN iterations   {s.nan_iterations}" + (f" (at {nan_at})" if nan_at else ""))
    lines.append(f"  skipped iters    {s.skipped_iterations}")
    lines.append(f"  restarts         {s.restarts} ({len(s.jobs)} jobs: {', '.join(s.jobs)}; "
                 f"{s.relogged} logged iterations replaced after a restart)")
    saved = ", ".join(map(str, s.checkpoints_saved[-5:])) or "none"
    lines.append(f"  checkpoints      {saved} (saved, as logged)")
    lines.append(f"  warning lines    {s.warnings}")
    return "\n".join(lines) + "\n"
