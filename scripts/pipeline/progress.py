"""Progress for long steps: a tqdm bar on a terminal, a periodic plain line in logs (PBS, CI)."""
from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _LogProgress:
    """tqdm's update()/close() interface, printing one line every LOG_INTERVAL_S seconds."""

    def __init__(self, total: float | None, desc: str, unit: str, unit_scale: bool, interval: float) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = 0.0
        self.start = self.last = time.monotonic()
        self.interval = interval

    def _fmt(self, value: float) -> str:
        if not self.unit_scale:
            return f"{value:,.0f}"
        for prefix in ("", "k", "M", "G", "T"):
            if abs(value) < 1000:
                return f"{value:.1f}{prefix}"
            value /= 1000
        return f"{value:.1f}P"

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        done = f"{self._fmt(self.n)}" + (f"/{self._fmt(self.total)}" if self.total else "")
        return f"{self.desc}: {done} {self.unit} in {elapsed:.0f}s ({self._fmt(self.n / elapsed)} {self.unit}/s)"

    def update(self, amount: float = 1) -> None:
        self.n += amount
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self._line(), file=sys.stderr, flush=True)

    def set_postfix_str(self, *_: Any, **__: Any) -> None:
        pass

    def close(self) -> None:
        print(self._line() + " done", file=sys.stderr, flush=True)

    def __enter__(self) -> "_LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: float | None = None, desc: str = "", unit: str = "it", unit_scale: bool = False,
             interval: float = LOG_INTERVAL_S, enabled: bool = True):
    """A bar on a terminal, periodic lines otherwise; `enabled=False` prints nothing at all."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True)
    return _LogProgress(total, desc, unit, unit_scale, interval)
