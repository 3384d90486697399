"""Per-output locks: one writer per output at a time, across processes and hosts.

A step takes the lock of an output before it looks at the output's state and keeps it until the
output and its record are written. A second run of the same step that reaches the output meanwhile
refuses, naming the holder (pid, host, start time, command); one that comes later finds the output
up to date. The lock is flock(2) on a hidden file beside the output (`.<name>.lock`, holding the
owner's description); the kernel drops it when the owner dies, however it dies, so a lock is never
stale, and the temporaries of an output whose lock we hold were left by a run that is gone.
File systems without locks (some network mounts) get a warning: runs there are not serialised.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError
from pipeline.provenance import now_iso

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_held: dict[str, int] = {}       # lock path -> nesting depth in this process (re-entrant)
_warned: set[str] = set()


class Busy(PipelineError):
    """Another live run holds the output's lock."""


def lock_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def owner_text(data: dict) -> str:
    if not data:
        return "owner not recorded yet"
    text = f"pid {data.get('pid')} on {data.get('host')}, since {data.get('started')}"
    return text + (f": {data['command']}" if data.get("command") else "")


def read_owner(lock: Path) -> dict:
    try:
        data = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _acquire(lock: Path, output: Path, what: str) -> int | None:
    """The locked descriptor, or None where the file system has no locks; Busy when held."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(f"{output}: {what} by another run ({owner_text(read_owner(lock))}; lock {lock}); "
                       "let it finish or stop it, then re-run") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _UNSUPPORTED:
                raise
            if str(lock.parent) not in _warned:
                _warned.add(str(lock.parent))
                print(f"warning: {lock.parent}: the file system does not support locks ({exc.strerror}); "
                      "concurrent runs of this step are not detected there", file=sys.stderr)
            return None
        # the previous holder removes the file when it is done: make sure ours is the one in place
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, what: str = "being written") -> Iterator[None]:
    """Hold `output`'s lock for the block; re-entrant within a process. Raises Busy when held."""
    output = Path(output)
    lock = lock_path(output)
    key = os.path.abspath(lock)
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _acquire(lock, output, what)
    _held[key] = 1
    try:
        if fd is not None:
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
                     "command": " ".join(sys.argv)[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode(), 0)
        yield
    finally:
        _held.pop(key, None)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)      # while still locked: a waiting run then retries on a fresh file
            os.close(fd)
