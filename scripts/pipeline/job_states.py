"""The states of submitted jobs, as `make status` shows them and the live-job refusal of `make train` reads them:
`qstat -f -x -F json` under PBS (one id per call, an array with its subjobs), `squeue` then `sacct` under Slurm.

What a finished PBS job's record says, as a real PBS server (OpenPBS, tests/test_pbs.py) writes it: `job_state`
F, `substate` 92 (finished) or 93 (failed) with its `Exit_status` (the script's status; 256 + N when a signal N
killed it; negative when PBS ended it: -29 the walltime); substate 91 when qdel ended it; no `Exit_status` at all
when it never ran (deleted by qdel while queued, or because an `afterok` dependency failed). An array's own
`Exit_status` is that of whichever subjob ended last, so an array is judged by its subjobs (`qstat -t`).
Without job history (`job_history_enable`) PBS forgets a finished job at once: it is then left out here.
(A job of root's, as in the tests, has Exit_status 0 after qdel: the mom tracks no root-owned processes. The
substate tells qdel apart all the same.)
"""
from __future__ import annotations

import json
import re
import shutil
import signal
from dataclasses import dataclass

from pipeline.errors import fail
from pipeline.scheduler import run_pbs

# anything but finished (F) or moved/expired (X)
PBS_LIVE = {"Q", "R", "H", "W", "T", "E", "B", "S", "U", "M"}
SLURM_LIVE = {"PENDING", "RUNNING", "SUSPENDED", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
              "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
PBS_TERMINATED = 91       # substate of a job qdel ended
PBS_FAILED = 93           # substate of a job that exited non-zero or that PBS killed
# Exit_status values PBS sets itself when it ends a job (JOB_EXEC_KILL_* of OpenPBS's job.h)
PBS_KILLED = {-29: "walltime exceeded", -28: "cput exceeded", -27: "mem exceeded", -26: "vmem exceeded",
              -25: "ncpus exceeded", -24: "ncpus exceeded"}
SUBJOBS_SHOWN = 3


@dataclass
class JobState:
    text: str     # as `make status` shows it: R, F (exit 1); RUNNING, FAILED, PENDING (DependencyNeverSatisfied)
    live: bool    # queued, running or held: not finished


def _same_job(a: str, b: str) -> bool:
    """An id as submitted (1.pbs1) is qstat's full one (1.pbs1.example.org) or its number."""
    return a == b or a.split(".")[0] == b.split(".")[0]


NO_HISTORY = "not configured to maintain job history"


def qstat_jobs(job_ids: list[str], what: str) -> dict[str, dict]:
    """job id -> qstat's record of it (job_state, substate, Exit_status, ...); an array's record has its
    subjobs' records under "subjobs". One qstat per id: given several, `qstat -f -F json` of OpenPBS 23.06
    prints only the first. Ids PBS no longer knows (finished without job history) are left out. Where the
    server keeps no job history, `qstat -x` answers nothing at all, not even for a running job (exit 0, a
    message): the ids are asked again without -x."""
    found = {}
    history = True
    for job_id in dict.fromkeys(job_ids):
        array = "[]" in job_id
        result = None
        while result is None:
            cmd = ["qstat", "-f", *(["-x"] if history else []), *(["-t"] if array else []), "-F", "json", job_id]
            result = run_pbs(cmd, what, missing=f"qstat not found on PATH: cannot {what}")
            if history and NO_HISTORY in result.stderr:
                history, result = False, None
        jobs: dict = {}
        if result.stdout.strip():
            try:
                jobs = json.loads(result.stdout).get("Jobs") or {}
            except (json.JSONDecodeError, AttributeError) as exc:
                fail(f"{' '.join(cmd)}: unreadable output while trying to {what} ({exc})")
        if result.returncode != 0 and not jobs:
            if any(gone in result.stderr.lower() for gone in ("unknown job id", "job has finished")):
                continue
            fail(f"{' '.join(cmd)} failed (exit {result.returncode}) while trying to {what}: {result.stderr.strip()}")
        record = next((v for k, v in jobs.items() if _same_job(k, job_id)), None)
        if record is None:
            continue
        if array:
            number = job_id.split("[")[0]
            record = {**record, "subjobs": {k: v for k, v in jobs.items()
                                            if k.startswith(f"{number}[") and not k.startswith(f"{number}[]")}}
        found[job_id] = record
    return found


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def pbs_outcome(record: dict) -> str:
    """How a finished job (F or X) ended, in words: 'exit 0', 'killed: walltime exceeded', 'deleted by qdel',
    'deleted: its dependency failed', ..."""
    status, substate = _as_int(record.get("Exit_status")), _as_int(record.get("substate"))
    if status is None:            # it never ran
        if substate == PBS_TERMINATED:
            return "deleted by qdel before it ran"
        if "after" in str(record.get("depend", "")):     # "afterok:12.pbs1@pbs1": what it waited for
            return "deleted: its dependency failed"
        return "deleted before it ran"
    if substate == PBS_TERMINATED:
        return "deleted by qdel"
    if status < 0:
        return f"killed: {PBS_KILLED[status]}" if status in PBS_KILLED else f"not run by PBS (exit {status})"
    if status > 256:
        try:
            name = signal.Signals(status - 256).name
        except ValueError:
            name = f"signal {status - 256}"
        return f"killed by {name}"
    return f"exit {status}"


def _index(subjob_id: str) -> str:
    match = re.search(r"\[(\d+)\]", subjob_id)
    return match[1] if match else subjob_id


def pbs_state(record: dict) -> JobState:
    state = record.get("job_state", "?")
    if state in PBS_LIVE:
        return JobState(state, True)
    subjobs = record.get("subjobs") or {}
    if not subjobs:
        return JobState(f"{state} ({pbs_outcome(record)})", False)
    outcomes = {_index(k): pbs_outcome(v) for k, v in subjobs.items()}
    bad = {index: text for index, text in outcomes.items() if text != "exit 0"}
    if not bad:
        return JobState(f"{state} (exit 0, {len(outcomes)} subjobs)", False)
    shown = ", ".join(f"[{index}] {text}" for index, text in list(bad.items())[:SUBJOBS_SHOWN])
    more = f", ... {len(bad) - SUBJOBS_SHOWN} more" if len(bad) > SUBJOBS_SHOWN else ""
    return JobState(f"{state} ({len(bad)} of {len(outcomes)} subjobs failed: {shown}{more})", False)


def slurm_jobs(job_ids: list[str], what: str) -> dict[str, dict[str, str]]:
    """job id -> {state, reason} from squeue (which still lists jobs that ended within the cluster's
    MinJobAge), then sacct for the rest where accounting is on. An array is summed up over its tasks:
    live while one is, else failed if one failed."""
    if not job_ids:
        return {}
    tasks: dict[str, list[tuple[str, str]]] = {}
    result = run_pbs(["squeue", "-h", "--states=all", "-o", "%F|%i|%T|%r", "-j", ",".join(job_ids)], what,
                     missing=f"squeue not found on PATH: cannot {what}")
    if result.returncode != 0 and "Invalid job id" not in result.stderr:
        fail(f"squeue -j {','.join(job_ids)} failed (exit {result.returncode}) while trying to {what}: "
             f"{result.stderr.strip()}")
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            tasks.setdefault(parts[0], []).append((parts[2], parts[3]))
    unknown = [i for i in job_ids if i.split("_")[0] not in tasks]
    if unknown and shutil.which("sacct"):
        result = run_pbs(["sacct", "-n", "-P", "-X", "-o", "JobIDRaw,State,Reason", "-j", ",".join(unknown)], what)
        if result.returncode == 0:   # without accounting sacct only says so; squeue was all there is
            for line in result.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    tasks.setdefault(parts[0].split("_")[0], []).append((parts[1].split()[0], parts[2]))
    found = {}
    for job_id in job_ids:
        states = tasks.get(job_id.split("_")[0])
        if not states:
            continue
        live = [s for s in states if s[0] in SLURM_LIVE]
        bad = [s for s in states if s[0] not in SLURM_LIVE and s[0] != "COMPLETED"]
        state, reason = (live or bad or states)[0]
        found[job_id] = {"state": state, "reason": reason if reason not in ("None", "") else ""}
    return found


def job_states(scheduler: str, job_ids: list[str], what: str) -> dict[str, JobState]:
    """The states of submitted jobs; ids the scheduler has forgotten are left out."""
    if scheduler == "pbs":
        return {job_id: pbs_state(record) for job_id, record in qstat_jobs(job_ids, what).items()}
    if scheduler == "slurm":
        return {job_id: JobState(f"{info['state']} ({info['reason']})" if info["reason"] else info["state"],
                                 info["state"] in SLURM_LIVE)
                for job_id, info in slurm_jobs(job_ids, what).items()}
    return {}
