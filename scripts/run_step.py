#!/usr/bin/env python3
"""Run the pipeline script STEP with the arguments STEP_ARGS, both from the environment (the generic
job pbs/run_step.pbs). STEP_ARGS is shell-quoted text (shlex.join); it is split into words, never
run by a shell, so a value in it cannot become code.
"""
from __future__ import annotations

import os
import sys

from pipeline.errors import run_main
from pipeline.paths import REPO_DIR
from pipeline.scheduler import step_command


def main() -> None:
    argv = step_command(os.environ.get("STEP", ""), os.environ.get("STEP_ARGS", ""), sys.executable,
                        REPO_DIR / "scripts")
    sys.stdout.flush()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    run_main(main)
