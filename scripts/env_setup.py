#!/usr/bin/env python3
"""Install the training environment (Python, torch, apex, flash-attn, TransformerEngine, Megatron-LM,
llm-jp-tokenizer) into ENV_DIR, with every version from params/environment.toml.

Ordered, named steps; each logged to ENV_DIR/logs/; a re-run skips finished steps and resumes at the
failed one; a failure names its step. The last step writes ENV_DIR/activate.sh, which the train and
convert jobs source. `--dry-run` (or DRY_RUN=1) prints every command and does nothing.

    env_setup.py --env-dir /path/to/env [--config params/environment.toml] [--dry-run]
"""
from __future__ import annotations

import argparse
import os

from pipeline.env_install import RUNNER_ENV, plan, print_plan, run_plan, write_activate_files
from pipeline.environment import DEFAULT_CONFIG, Layout, load_environment
from pipeline.errors import fail, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-dir", default=os.environ.get("ENV_DIR", ""),
                        help="where to install (ENV_DIR); created if missing")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the pinned environment description (TOML)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel build jobs (make -j, MAX_JOBS for apex/flash-attn)")
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "") == "1",
                        help="print every command with its pinned versions and run nothing (also DRY_RUN=1)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not echo command output (it still goes to ENV_DIR/logs/)")
    parser.add_argument("--runner", default=os.environ.get(RUNNER_ENV, ""),
                        help=f"test hook: run each command as RUNNER STEP COMMAND instead of bash (also {RUNNER_ENV})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.env_dir:
        fail("ENV_DIR is not set: give the environment's folder, e.g. make env ENV_DIR=/path/to/env "
             "(or ENV_DIR in local.mk)")
    if args.jobs < 1:
        fail(f"--jobs {args.jobs}: must be at least 1")
    spec = load_environment(args.config)
    layout = Layout.of(args.env_dir)
    steps = plan(spec, layout, write_activate=lambda: write_activate_files(spec, layout, steps))
    if args.dry_run:
        print_plan(spec, layout, steps, args.jobs)
        return 0
    if layout.root.exists() and not layout.root.is_dir():
        fail(f"{layout.root}: ENV_DIR exists and is not a folder")
    ran = run_plan(spec, layout, steps, args.jobs, runner=args.runner or None, quiet=args.quiet)
    if ran:
        print(f"done: {layout.root} ({', '.join(ran)}); jobs source {layout.activate}; "
              f"check it with: make env-check ENV_DIR={layout.root}", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
