"""One error type for everything a user can fix, and a main() wrapper that reports it cleanly.

run_main turns every failure a user can act on into one line on stderr: the project's own
PipelineError, and any OSError (disk full, permission, missing file) as `<file>: <cause>`, with the
file system's free space for a full disk. SIGTERM and SIGHUP end a script like Ctrl-C does: as an
exception, so temporaries are removed on the way out (a closed terminal or a killed job leaves no
half-written output behind).
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from pipeline.units import human

# a full disk or quota: the message also says how much room the file system has
_NO_ROOM = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class PipelineError(Exception):
    """A failure the user can act on; the message names the file (and line) involved."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C (every `except KeyboardInterrupt` cleans up)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def fail(message: str) -> NoReturn:
    raise PipelineError(message)


def filesystem_room(path: str | os.PathLike) -> str:
    """'file system /mnt: 0 B free of 1.0 TB' for the file system holding `path` (or '' if unknown)."""
    where = Path(os.path.abspath(path))
    while not where.exists() and where != where.parent:
        where = where.parent
    mount = where
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        stats = os.statvfs(where)
    except OSError:
        return ""
    return f"file system {mount}: {human(stats.f_bavail * stats.f_frsize)} free of " \
           f"{human(stats.f_blocks * stats.f_frsize)}"


def os_error_message(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """`<file>: <cause>` for an OSError; `path` names the file when the error itself does not."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else path
    text = f"{where}: {cause}" if where is not None else cause
    if exc.filename is not None and exc.filename2 is not None:
        text = f"{exc.filename} -> {exc.filename2}: {cause}"
    if exc.errno in _NO_ROOM and where is not None:
        room = filesystem_room(os.fsdecode(where))
        text += f" ({room})" if room else ""
    return text


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """OSErrors that name no file (a write to an open descriptor: disk full) name `path` instead."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise PipelineError(os_error_message(exc, path)) from exc
        raise


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's main(): PipelineError and OSError -> 'error: ...' on stderr and exit 1;
    Ctrl-C -> 130, SIGTERM/SIGHUP -> 128 + the signal number."""
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:   # a parent that ignores SIGHUP (nohup) keeps it so
            previous[signum] = signal.signal(signum, _terminate)
    try:
        status = main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        sys.exit(1)
    except Terminated as exc:
        print(f"terminated ({exc})", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    sys.exit(status or 0)
