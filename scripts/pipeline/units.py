"""Sizes for people: one formatter, so every message and table prints bytes the same way."""
from __future__ import annotations


def human(size: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disk and hub sizes are quoted)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"


def human_binary(size: float) -> str:
    """1234567 -> '1.2 MiB' (binary units, as file and checkpoint sizes on disk are shown)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"
