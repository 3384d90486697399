"""The `train_data*.sh` lists: `export TRAIN_DATA_PATH=(` then `    <weight> <prefix>` lines, then `)`.

The same format serves the all-files list (weight = exact token count) and mixtures (weight =
tokens to draw); Megatron gets it as `--data-path w1 p1 w2 p2 ...`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.errors import fail

HEAD = "export TRAIN_DATA_PATH=("
TAIL = ")"
_ENTRY = re.compile(r"^\s+(\S+)\s+(\S+)\s*$")


@dataclass(frozen=True)
class Entry:
    weight: int
    prefix: str


def read_list(path: str | os.PathLike) -> list[Entry]:
    path = Path(path)
    if not path.is_file():
        fail(f"{path}: data list not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    body = [(n, line) for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not body or body[0][1].strip() != HEAD:
        fail(f"{path}:{body[0][0] if body else 1}: expected '{HEAD}'")
    if body[-1][1].strip() != TAIL:
        fail(f"{path}:{body[-1][0]}: expected ')' closing the list")
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for lineno, line in body[1:-1]:
        match = _ENTRY.match(line)
        if not match:
            fail(f"{path}:{lineno}: expected '<weight> <prefix>', got {line.strip()!r}")
        weight, prefix = match.groups()
        if not weight.isdigit():
            fail(f"{path}:{lineno}: weight {weight!r} is not a non-negative integer")
        if prefix in seen:
            fail(f"{path}:{lineno}: {prefix} listed twice (first on line {seen[prefix]})")
        seen[prefix] = lineno
        entries.append(Entry(int(weight), prefix))
    return entries


def render_list(entries: list[Entry], header_comment: str = "") -> str:
    lines = [f"# {c}" for c in header_comment.splitlines()] if header_comment else []
    lines.append(HEAD)
    lines += [f"    {e.weight} {e.prefix}" for e in entries]
    lines.append(TAIL)
    return "\n".join(lines) + "\n"


def write_list(path: str | os.PathLike, entries: list[Entry], header_comment: str = "") -> None:
    write_text(path, render_list(entries, header_comment))


def total_weight(entries: list[Entry]) -> int:
    return sum(e.weight for e in entries)


def data_path_args(entries: list[Entry], root: str | os.PathLike | None = None) -> list[str]:
    """`--data-path` values: weight, prefix pairs, prefixes made absolute under `root` if given."""
    args: list[str] = []
    for entry in entries:
        prefix = entry.prefix if root is None or os.path.isabs(entry.prefix) else os.path.join(root, entry.prefix)
        args += [str(entry.weight), prefix]
    return args
