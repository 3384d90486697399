"""Local jobs (SCHEDULER=local): a pbs/ template run here with bash, the PBS variables emulated (PBS_JOBID,
PBS_ARRAY_INDEX, PBS_NODEFILE, ...), array indices with bounded parallelism. Each index runs in a session of
its own, as under PBS, so it must be stopped by us: a signal to this process (Ctrl-C, SIGTERM, SIGHUP, its
parent dying) is passed on to every running index.
"""
from __future__ import annotations

import concurrent.futures
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.errors import fail
from pipeline.provenance import git_commit, now_iso
from pipeline.scheduler import PARENT_PID, Job, SchedulerOptions, array_indices, record

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




def _local_env(job: Job, job_id: str, nodefile: Path, index: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(job.variables)
    env.update({"PBS_JOBID": job_id if index is None else job_id.replace("[]", f"[{index}]"),
                "PBS_JOBNAME": job.name, "PBS_O_WORKDIR": os.getcwd(), "PBS_NODEFILE": str(nodefile),
                "PBS_ENVIRONMENT": "PBS_BATCH"})
    if index is not None:
        env["PBS_ARRAY_INDEX"] = str(index)
    else:
        env.pop("PBS_ARRAY_INDEX", None)
    return env


def run_local(job: Job, args: SchedulerOptions, exp: Path) -> int:
    indices = array_indices(job.array) if job.array else [None]
    serial = f"{int(time.time() * 1000) % 10**10}{os.getpid() % 100:02d}"
    job_id = f"{serial}[].local" if job.array else f"{serial}.local"
    cmd = ["bash", str(job.template)]
    if args.dry_run:
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in job.variables.items())
        array_text = f" (for PBS_ARRAY_INDEX in {job.array})" if job.array else ""
        print(f"{env_text} {shlex.join(cmd)}{array_text}".strip())
        return 0
    if job.depend:
        print(f"note: DEPEND={job.depend} ignored locally (local jobs run in order)", file=sys.stderr)
    # a killed make (or train.py) must not leave its job running: the job has a session of its own
    die_with_parent(signal.SIGTERM)
    if os.getppid() != PARENT_PID:
        fail(f"job {job.name}: the process that started submit.py is gone; nothing was run")
    with tempfile.NamedTemporaryFile("w", prefix="pbs_nodefile.", suffix=".txt", delete=False) as nodefile:
        nodefile.write(socket.gethostname() + "\n")
    started = now_iso()
    jobs = LocalJobs()
    try:
        def run_one(index: int | None) -> int | None:
            return jobs.run(cmd, _local_env(job, job_id, Path(nodefile.name), index))

        if len(indices) == 1:
            statuses = {indices[0]: run_one(indices[0])}
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
                futures = [pool.submit(run_one, index) for index in indices]
                try:
                    statuses = {index: future.result() for index, future in zip(indices, futures)}
                except KeyboardInterrupt:
                    jobs.stop()     # before the pool waits for its threads, which wait for the jobs
                    raise
    except KeyboardInterrupt as exc:   # Ctrl-C, or SIGTERM/SIGHUP (pipeline.errors.Terminated)
        jobs.stop()
        how = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
        record(exp, {"time": started, "end_time": now_iso(), "scheduler": "local", "template": str(job.template),
                     "name": job.name, "variables": job.variables, "array": job.array, "job_id": job_id,
                     "exit_status": 128 + getattr(exc, "signum", signal.SIGINT), "interrupted": how,
                     "git_commit": git_commit()})
        print(f"error: job {job.name} stopped ({how}): its processes were sent SIGTERM", file=sys.stderr)
        raise
    finally:
        os.unlink(nodefile.name)
    failed = {i: s for i, s in statuses.items() if s != 0}
    status = next(iter(failed.values())) if failed else 0
    record(exp, {"time": started, "end_time": now_iso(), "scheduler": "local", "template": str(job.template),
                 "name": job.name, "variables": job.variables, "array": job.array, "job_id": job_id,
                 "exit_status": status, "failed_indices": sorted(i for i in failed if i is not None),
                 "git_commit": git_commit()})
    if failed:
        where = "" if indices == [None] else f" (array indices {', '.join(map(str, sorted(failed)))})"
        print(f"error: job {job.name} from {job.template} failed with exit status {status}{where}",
              file=sys.stderr)
        return status if 0 < status < 256 else 1
    return 0
