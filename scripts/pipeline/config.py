"""Strict config loading: unknown keys, missing keys and wrong types fail naming file and key (YAML, or
any document already parsed, through Section).

Usage:
    doc = load_yaml(path)
    section = Section(doc, path)                  # the whole document must be a mapping
    section.check_keys(required={"name"}, optional={"revision"})
    name = section.get("name", str)
    sizes = section.section("sizes")              # nested mapping, error names "sizes"
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.errors import fail


def load_yaml(path: str | os.PathLike) -> Any:
    import yaml  # here, not above: Section alone serves configs of other formats without PyYAML

    path = Path(path)
    if not path.is_file():
        fail(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        fail(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}")


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


class Section:
    """A mapping from a config file plus where it sits, for error messages."""

    def __init__(self, data: Any, path: str | os.PathLike, key_path: str = "") -> None:
        self.path = Path(path)
        self.key_path = key_path
        if not isinstance(data, dict):
            fail(f"{self.where()}: expected a mapping, got {type(data).__name__}")
        self.data: dict = data

    def where(self, key: str | None = None) -> str:
        parts = [p for p in (self.key_path, key) if p]
        return f"{self.path}: {'.'.join(parts)}" if parts else str(self.path)

    def check_keys(self, required: set[str] = frozenset(), optional: set[str] = frozenset()) -> None:
        unknown = sorted(set(map(str, self.data)) - set(required) - set(optional))
        if unknown:
            allowed = ", ".join(sorted(set(required) | set(optional)))
            fail(f"{self.where()}: unknown key(s) {', '.join(unknown)} (allowed: {allowed})")
        missing = sorted(set(required) - set(map(str, self.data)))
        if missing:
            fail(f"{self.where()}: missing key(s) {', '.join(missing)}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                fail(f"{self.where(key)}: missing")
            return default
        value = self.data[key]
        # bool is an int in Python; a config saying `true` where a number is wanted is a mistake
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            fail(f"{self.where(key)}: expected {_type_name(kind)}, got bool")
        if not isinstance(value, kind):
            fail(f"{self.where(key)}: expected {_type_name(kind)}, got {type(value).__name__} ({value!r})")
        return value

    def number(self, key: str, default: Any = ..., minimum: float | None = None) -> float:
        value = self.get(key, (int, float), default)
        if minimum is not None and value is not None and value < minimum:
            fail(f"{self.where(key)}: must be >= {minimum}, got {value}")
        return value

    def section(self, key: str, default: Any = ...) -> "Section":
        if key not in self.data and default is not ...:
            return Section(default, self.path, self._child(key))
        return Section(self.get(key, dict), self.path, self._child(key))

    def items(self):
        return self.data.items()

    def _child(self, key: str) -> str:
        return f"{self.key_path}.{key}" if self.key_path else key
