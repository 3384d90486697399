#!/usr/bin/env python3
"""Check that a training environment can run the jobs: one line per check, non-zero exit on a FAIL.

Python and torch versions against the pins, CUDA visible and the GPU count, TransformerEngine / apex /
flash-attn importable, the Megatron-LM checkout and its built C++ helper, the tokenizer models, and
the checkpoint-loading (weights_only) setting in force. The checks run in the environment's own
Python after sourcing ENV_DIR/activate.sh, as a job would. Needs only the standard library (and
reads params/environment.toml with tomllib, no PyYAML), so it also runs on a bare GPU machine:

    env_check.py --env-dir /path/to/env                 # an environment made by `make env`
    env_check.py --python python3 --no-gpu              # this interpreter, on a login node
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.env_checks import FAIL, OK, SKIP, WARN, Row, Target, failures, format_table, judge, run_probe
from pipeline.environment import DEFAULT_CONFIG, Layout, load_environment
from pipeline.errors import fail, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-dir", default="", help="the environment made by `make env` (ENV_DIR)")
    parser.add_argument("--python", default="",
                        help="interpreter to check (command or path); default ENV_DIR/venv/bin/python")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the pinned environment description (TOML)")
    parser.add_argument("--megatron-path", default="",
                        help="Megatron-LM checkout to check; default ENV_DIR/src/Megatron-LM")
    parser.add_argument("--tokenizer-model", action="append", default=[],
                        help="a tokenizer model file to check as well (repeatable; empty values ignored)")
    parser.add_argument("--no-gpu", action="store_true",
                        help="skip the CUDA and GPU-count checks (a login node); everything else still counts")
    parser.add_argument("--timeout", type=float, default=600, help="seconds the interpreter may take to answer")
    return parser.parse_args(argv)


def build_target(args: argparse.Namespace, spec) -> Target:
    layout = Layout.of(args.env_dir) if args.env_dir else None
    if layout is None and not args.python:
        fail("nothing to check: give --env-dir (ENV_DIR=...) or --python (ENV_PYTHON=python3)")
    if layout is not None and not layout.root.is_dir():
        fail(f"{layout.root}: ENV_DIR does not exist (install it with make env ENV_DIR={layout.root})")
    python = args.python or str(layout.venv_python)
    megatron = Path(args.megatron_path).resolve() if args.megatron_path else (layout.megatron if layout else None)
    tokenizers = [(layout.tokenizer / m.path, m.pieces) for m in spec.tokenizer_models] if layout else []
    tokenizers += [(Path(p).resolve(), None) for p in args.tokenizer_model if p]
    return Target(python=python, layout=layout, megatron=megatron, tokenizers=tokenizers, gpu=not args.no_gpu)


def launch_rows(target: Target) -> list:
    """How the jobs will launch this Megatron: what its own argument parser offers (pipeline.megatron_features)."""
    if target.megatron is None or not (target.megatron / "pretrain_gpt.py").is_file():
        return []
    from pipeline.errors import PipelineError
    from pipeline.megatron_features import probe
    try:
        features = probe(target.megatron, target.python)
    except PipelineError as exc:
        return [Row("megatron_launch", FAIL, str(exc).splitlines()[0], "its parser answers")]
    return [Row("megatron_launch", OK, features.describe(), "detected from its parser")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_environment(args.config)
    target = build_target(args, spec)
    where = target.layout.root if target.layout else target.python
    print(f"env-check: {where} against {spec.source}", flush=True)
    findings, note = run_probe(target, spec, timeout=args.timeout)
    rows = judge(target, spec, findings, note) + launch_rows(target)
    print(format_table(rows))
    counts = {status: sum(r.status == status for r in rows) for status in (OK, WARN, FAIL, SKIP)}
    print(f"\n{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} FAIL, {counts[SKIP]} skipped", flush=True)
    bad = failures(rows)
    if bad:
        fail(f"{where}: cannot run the jobs: {', '.join(dict.fromkeys(r.check for r in bad))} "
             f"(see the FAIL lines above)")
    return 0


if __name__ == "__main__":
    run_main(main)
