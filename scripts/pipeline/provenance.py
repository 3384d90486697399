"""What produced an output: command line, git commit, host, time."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = REPO_DIR) -> str:
    """HEAD's commit, with '-dirty' when tracked files differ; 'unknown' outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def provenance(**extra: object) -> dict:
    """The common provenance block; callers add their own fields."""
    record = {
        "command": [sys.executable, *sys.argv],
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "time": now_iso(),
        "pbs_jobid": os.environ.get("PBS_JOBID"),
    }
    record.update(extra)
    return record
