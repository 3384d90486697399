"""pipeline.progress: a tqdm bar with throughput on a terminal, periodic plain lines in logs."""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from conftest import SCRIPTS
from pipeline import progress as progress_module


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_gives_periodic_lines_and_no_bar(capsys, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    with progress_module.progress(total=10, desc="tokenize x", unit="doc", interval=30) as bar:
        for _ in range(10):
            clock.now += 10          # 10 s per document: a line every third update
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err, "no bar when stderr is not a terminal"
    lines = err.splitlines()
    assert lines == ["tokenize x: 3/10 doc in 30s (0 doc/s)", "tokenize x: 6/10 doc in 60s (0 doc/s)",
                     "tokenize x: 9/10 doc in 90s (0 doc/s)", "tokenize x: 10/10 doc in 100s (0 doc/s) done"]


def test_log_lines_scale_units_and_show_throughput(capsys, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    bar = progress_module.progress(total=4e9, desc="read", unit="B", unit_scale=True, interval=1)
    clock.now += 2
    bar.update(3e9)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["read: 3.0G/4.0G B in 2s (1.5G B/s)",
                                                     "read: 3.0G/4.0G B in 2s (1.5G B/s) done"]


def test_disabled_prints_nothing(capsys):
    with progress_module.progress(total=3, desc="quiet", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr() == ("", "")


def test_a_terminal_gets_a_tqdm_bar_with_throughput():
    if not hasattr(os, "openpty"):
        pytest.skip("no pseudo-terminals here")
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from pipeline.progress import progress\n"
            "with progress(total=40, desc='work', unit='doc') as bar:\n"
            "    for _ in range(40):\n"
            "        time.sleep(0.005); bar.update(1)\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a fresh pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-c", code, str(SCRIPTS)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:        # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out and "work:" in out, out
    assert "100%|" in out and "40/40" in out and "doc/s" in out, out
