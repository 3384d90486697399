"""Talking to PBS: qsub and qstat with a time limit, and job states from `qstat -f -x -F json`.

A PBS server that hangs must not hang make: every call gives up after PBS_TIMEOUT seconds
(environment; default 120) with a message saying what was asked and what to check.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from pipeline.errors import fail

DEFAULT_TIMEOUT_S = 120.0
# 123.pbs1, 123[].pbs1 (a whole array), 123[4].pbs1 (one index); server suffix optional
JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")
DEPEND_TYPES = ("afterok", "afterany", "afternotok")


def normalize_depend(depend: str) -> str | None:
    """'afterok:1.pbs1:2.pbs1' stays; a bare id list ('1.pbs1 2.pbs1', '1:2', '1,2') means afterok."""
    depend = depend.strip()
    if not depend:
        return None
    clauses = []
    if any(depend.startswith(f"{kind}:") for kind in DEPEND_TYPES):
        for clause in depend.split(","):
            kind, _, ids = clause.partition(":")
            if kind not in DEPEND_TYPES or not ids:
                fail(f"DEPEND={depend!r}: clause {clause!r} is not <{'|'.join(DEPEND_TYPES)}>:ID[:ID...]")
            clauses.append((kind, ids.split(":")))
    else:
        clauses.append(("afterok", re.split(r"[\s,:]+", depend)))
    for _, ids in clauses:
        for job_id in ids:
            if not JOB_ID.match(job_id):
                fail(f"DEPEND={depend!r}: {job_id!r} is not a PBS job id (like 123.pbs1 or 123[].pbs1)")
    return ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in clauses)


def timeout_s() -> float:
    text = os.environ.get("PBS_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        fail(f"PBS_TIMEOUT={text!r}: expected a number of seconds > 0")
    return value


def run_pbs(cmd: list[str], what: str, missing: str = "", after_timeout: str = "") -> subprocess.CompletedProcess:
    """Run a PBS client command (qsub, qstat) with the time limit; its output is captured as text."""
    limit = timeout_s()
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        fail(missing or f"{cmd[0]} not found on PATH: PBS commands run on a PBS login node")
    except subprocess.TimeoutExpired:
        fail(f"{cmd[0]} did not answer within {limit:g} s ({what}); the PBS server may be down or overloaded. "
             f"{after_timeout}PBS_TIMEOUT=<seconds> waits longer")


def qstat_jobs(job_ids: list[str], what: str) -> dict[str, dict]:
    """job id -> qstat's record of it (job_state, Exit_status, ...), one qstat call for all of them;
    ids PBS no longer knows are left out. An id as submitted (1.pbs1) matches qstat's full one."""
    if not job_ids:
        return {}
    result = run_pbs(["qstat", "-f", "-x", "-F", "json", *job_ids], what,
                     missing=f"qstat not found on PATH: cannot {what}")
    jobs: dict = {}
    if result.stdout.strip():
        try:
            jobs = json.loads(result.stdout).get("Jobs") or {}
        except (json.JSONDecodeError, AttributeError) as exc:
            fail(f"qstat -f -x -F json: unreadable output while trying to {what} ({exc})")
    if result.returncode != 0 and not jobs:
        error = result.stderr.strip()
        if not all("unknown job" in line.lower() for line in error.splitlines() if line.strip()):
            fail(f"qstat -f -x -F json {' '.join(job_ids)} failed (exit {result.returncode}) while trying to "
                 f"{what}: {error}")
    found = {}
    for job_id in job_ids:
        record = jobs.get(job_id) or next((v for k, v in jobs.items() if k.split(".")[0] == job_id.split(".")[0]),
                                          None)
        if record is not None:
            found[job_id] = record
    return found


# ---------------------------------------------------------------------------------------------
# Local jobs (SCHEDULER=local): each runs in a session of its own, so it must be stopped by us
# ---------------------------------------------------------------------------------------------
STOP_GRACE_S = 30.0


def die_with_parent(signum: int) -> None:
    """Ask Linux to send `signum` to this process when its parent dies (a killed make or wrapper)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalJobs:
    """The process groups of a local job's running array indices; `stop` ends every one of them.

    The jobs run in sessions of their own (as under PBS, and so that a terminal's Ctrl-C reaches
    this process only): when this process is told to stop (Ctrl-C, SIGTERM, SIGHUP, its parent
    dying), `stop` passes SIGTERM on to every group, as qdel does, then SIGKILL after a grace period,
    and no index starts afterwards.
    """

    def __init__(self) -> None:
        import threading
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopped = False

    def run(self, cmd: list[str], env: dict[str, str]) -> int | None:
        """Run one index to its end; None when stopped before it could start."""
        with self._lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            self._running.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                if proc.returncode is not None:
                    self._running.discard(proc)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        import signal
        import time

        with self._lock:
            self.stopped = True
            procs = list(self._running)
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# The generic job (pbs/run_step.pbs): one pipeline script, its arguments passed as text
# ---------------------------------------------------------------------------------------------
STEP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def step_command(step: str, step_args: str, python: str, scripts_dir: Path) -> list[str]:
    """argv of `scripts/<step>.py` with STEP_ARGS split as a shell splits words (quotes group) but
    never evaluated: no expansion, no command substitution, nothing of it runs as code."""
    if not STEP_NAME.match(step) or step == "run_step" or not (scripts_dir / f"{step}.py").is_file():
        fail(f"STEP={step!r}: not a script of {scripts_dir} (lower-case letters, digits and _)")
    try:
        args = shlex.split(step_args)
    except ValueError as exc:
        fail(f"STEP_ARGS={step_args!r}: cannot be split into arguments ({exc})")
    return [python, str(scripts_dir / f"{step}.py"), *args]
