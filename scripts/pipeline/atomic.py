"""Write-to-temporary-then-rename, so an output that exists under its final name is complete."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator


def tmp_path_for(path: Path) -> Path:
    """The temporary name used while `path` is being written (same folder, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync and rename it into place.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with open(tmp, mode, **kwargs) as handle:
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


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete `.name.tmp.PID` leftovers of killed runs below `folder`; returns how many."""
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp.*"):
        if tmp.is_file():
            tmp.unlink()
            removed += 1
    return removed
