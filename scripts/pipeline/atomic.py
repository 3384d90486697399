"""Write-to-temporary-then-rename, so an output that exists under its final name is complete."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator, Literal

from pipeline.errors import fail, naming


def tmp_path_for(path: Path) -> Path:
    """The temporary name used while `path` is being written (same folder, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync and rename it into place.

    On any exception the temporary file is removed and `path` is left as it was; an OSError of a
    write (disk full) names `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with naming(path), open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_if_changed(path: str | os.PathLike, content: str | bytes) -> bool:
    """Atomic write unless the file already holds exactly this; True when it was written.

    Leaving an unchanged file alone keeps its mtime, so make and later stages see it as up to date.
    """
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_output(path, "wb") as handle:
        handle.write(data)
    return True


def read_json(path: str | os.PathLike, *, bad: Literal["none", "fail"]) -> dict | None:
    """A JSON object from `path`; None when the file is missing or holds no object.

    bad="none": an unparsable file also reads as None (a half-written record counts as absent and
    is redone). bad="fail": an unreadable or unparsable file stops the run (a sentinel that must
    not be silently ignored).
    """
    path = Path(path)
    if bad == "none":
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            fail(f"{path}: unreadable JSON ({exc})")
    return data if isinstance(data, dict) else None


def remove_temporaries(path: str | os.PathLike) -> int:
    """Delete the `.name.tmp.PID` leftovers of `path`; returns how many.

    Only under `path`'s lock (pipeline.locks.output_lock): every writer holds it, so whoever wrote
    these is gone, and a live run's temporaries are never touched.
    """
    path = Path(path)
    removed = 0
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{path.name}.tmp.*"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target` (same file system); an existing `target` is swapped out,
    then removed, so `target` is always either the old folder or the new one."""
    if target.exists():
        old = target.parent / f".{target.name}.old.{os.getpid()}"
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old)
    else:
        os.replace(new, target)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; on success it replaces `path`, on any exception it is
    removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with naming(tmp):
            yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
