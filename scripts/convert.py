#!/usr/bin/env python3
"""Convert a run's Megatron checkpoint to Hugging Face format (make convert), and the job's helpers.

    convert.py plan   RUN... --iter latest --converter megatron --hf-tokenizer-dir DIR   # DRY_RUN=1: the steps
    convert.py submit RUN... [SCHEDULER FLAGS]   # checks, then submits pbs/convert.pbs (pipeline/scheduler.py)
    convert.py locate RUN...                     # (job) run folder, iteration, output folder; one per line
    convert.py step1-args RUN... --tmp DIR       # (job) pretrain_gpt.py's arguments for step 1, one per line
    convert.py record DIR --converter megatron ...   # (job) provenance JSON inside a converted folder
    convert.py check-tokenizer DIR --run-dir RUN # (job) its tokenizer encodes as the run's SentencePiece model
    convert.py check DIR                         # config.json and every safetensors shard load

RUN... names the run as make does: --exp-dir --task --param --size --seed (plus --data-list,
--tokenizer-model, --env-dir, --megatron-path where the run's Megatron arguments need them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.atomic import read_json, write_json, write_text
from pipeline.convert_job import CONVERTERS, DTYPES, check_inputs, conversion_args, output_dir, step1_resolved
from pipeline.convert_submit import show_plan, submit_conversion
from pipeline.errors import fail, run_main
from pipeline.hf_folder import RECORD_FILE
from pipeline.provenance import provenance
from pipeline.run_options import add_convert_job_arguments, add_request_arguments, request

def do_locate(args: argparse.Namespace) -> int:
    """For the job: fail on any problem; print run folder, iteration and output folder."""
    req = request(args)
    if args.run_dir and Path(args.run_dir).absolute() != req.run_dir:
        fail(f"RUN_DIR={args.run_dir}: TASK PARAM SIZE SEED give the run folder {req.run_dir}")
    iteration, problems = check_inputs(req)
    if problems:
        fail("cannot convert:\n  " + "\n  ".join(problems))
    print(req.run_dir)
    print(iteration)
    print(output_dir(req.run_dir, iteration))
    return 0


def do_step1_args(args: argparse.Namespace) -> int:
    resolved = step1_resolved(request(args), Path(args.tmp), args.world_size)
    if args.env_out:
        write_text(args.env_out, resolved.environment_lines())
    sys.stdout.write("".join(f"{a}\n" for a in conversion_args(resolved.args)))
    return 0


def do_record(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    step1 = Path(args.step1_args).read_text().splitlines() if args.step1_args else None
    write_json(folder / RECORD_FILE, provenance(
        converter=args.converter, source=args.source, iteration=args.iteration, megatron_path=args.megatron_path,
        hf_tokenizer_dir=args.hf_tokenizer_dir or None, dtype=args.dtype, step1_args=step1,
        steps=json.loads(args.steps) if args.steps else None))
    return 0


def do_check_tokenizer(args: argparse.Namespace) -> int:
    """The converted folder's tokenizer against the run's SentencePiece model; the verdict goes into its record."""
    from pipeline.tokenizer_check import (describe_verdict, recorded_tokenizers, run_documents, training_tokenizer,
                                          verify_hf_tokenizer)
    folder, run = Path(args.folder), Path(args.run_dir)
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    model = training_tokenizer(args.tokenizer_model or None, recorded_tokenizers(run, checkpoint), f"the run {run}")
    verdict = verify_hf_tokenizer(folder, model, run_documents(run))
    record = read_json(folder / RECORD_FILE, bad="fail") or {}
    write_json(folder / RECORD_FILE, {**record, "tokenizer_check": verdict})
    print(f"{folder}: tokenizer: {describe_verdict(verdict)}")
    return 0


def do_check(args: argparse.Namespace) -> int:
    from pipeline.convert_native import check_hf_folder
    check_hf_folder(args.folder, load_config=not args.no_transformers)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "print the steps the job will run (DRY_RUN=1) and the submission, run nothing"),
                       ("submit", "check, then submit pbs/convert.pbs through the job layer")):
        p = sub.add_parser(name, help=text)
        add_request_arguments(p)
        add_convert_job_arguments(p)
    p = sub.add_parser("locate", help="(job) check and print run folder, iteration, output folder")
    add_request_arguments(p)
    p.add_argument("--run-dir", default="", help="RUN_DIR the job was given (must match)")
    p = sub.add_parser("step1-args", help="(job) pretrain_gpt.py's arguments of step 1, one per line")
    add_request_arguments(p)
    p.add_argument("--tmp", required=True, help="the job's temporary folder (torch_dist/ in, torch/ out)")
    p.add_argument("--world-size", type=int, default=None, help="GPUs of step 1 (checks the batch splits)")
    p.add_argument("--env-out", default="", help="write the job's environment changes for this Megatron here")
    p = sub.add_parser("record", help="(job) write the provenance JSON into a converted folder")
    p.add_argument("folder", help="the converted folder")
    p.add_argument("--converter", choices=CONVERTERS, required=True, help="which converter wrote it")
    p.add_argument("--source", required=True, help="the Megatron iteration folder converted")
    p.add_argument("--iteration", type=int, required=True, help="its iteration")
    p.add_argument("--megatron-path", default="", help="MEGATRON_PATH used")
    p.add_argument("--hf-tokenizer-dir", default="", help="HF_TOKENIZER_DIR used")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype written")
    p.add_argument("--step1-args", default="", help="file with step 1's arguments, one per line")
    p.add_argument("--steps", default="", help="JSON list of the commands run")
    p = sub.add_parser("check-tokenizer", help="(job) the converted folder's tokenizer encodes as the run's "
                       "SentencePiece model; the verdict goes into its record")
    p.add_argument("folder", help="the converted folder")
    p.add_argument("--run-dir", required=True, help="the run folder (its train_args.json and data)")
    p.add_argument("--checkpoint", default="", help="the Megatron iteration folder converted")
    p.add_argument("--tokenizer-model", default="", help="TOKENIZER_MODEL (default: the one the run records)")
    p = sub.add_parser("check", help="config.json and every safetensors shard of a converted folder load")
    p.add_argument("folder", help="Hugging Face model folder")
    p.add_argument("--no-transformers", action="store_true", help="do not load config.json with transformers")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command in ("plan", "submit"):
        if args.nodes < 1:
            fail(f"NODES={args.nodes}: must be at least 1")
        if args.command == "plan":
            return show_plan(args)
        job_id = submit_conversion(args)
        if job_id:
            print(job_id)
        return 0
    return {"locate": do_locate, "step1-args": do_step1_args, "record": do_record, "check-tokenizer": do_check_tokenizer,
            "check": do_check}[args.command](args)


if __name__ == "__main__":
    run_main(main)
