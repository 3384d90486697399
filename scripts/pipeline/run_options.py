"""The command-line options that name a run and its inputs, shared by the training and conversion scripts.

`add_run_arguments` / `spec_from_args` (scripts/train_args.py, train.py, convert.py), `write_resolved`
(what a job and a submission record in the run folder), `add_request_arguments` / `request` and
`add_convert_job_arguments` (a conversion and its job: scripts/convert.py, and make chain's conversions).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.atomic import write_json, write_text
from pipeline.convert_job import CONVERTERS, DTYPES, ConvertRequest
from pipeline.errors import fail
from pipeline.megatron_args import LAUNCHERS, RunSpec
from pipeline.paths import exp_dir
from pipeline.provenance import provenance
from pipeline.scheduler import add_scheduler_arguments


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options naming a run and its inputs (shared with scripts/train.py)."""
    parser.add_argument("--exp-dir", default=None, help="EXP_DIR (data prefixes and runs/ live here)")
    parser.add_argument("--task", required=True, help="TASK: the mixture's task (tasks/<TASK>/)")
    parser.add_argument("--param", required=True, help="PARAM: params/<PARAM>.yaml, or a path to a params YAML")
    parser.add_argument("--size", required=True, help="SIZE: the mixture size (train_data_<SIZE>.sh)")
    parser.add_argument("--data-list", default="", help="DATA_LIST: read this list instead of "
                        "tasks/<TASK>/train_data_<SIZE>.sh")
    parser.add_argument("--tokenizer-model", default="", help="TOKENIZER_MODEL (default: the params' model "
                        "inside ENV_DIR's llm-jp-tokenizer checkout)")
    parser.add_argument("--env-dir", default="", help="ENV_DIR: the training environment (make env)")
    parser.add_argument("--megatron-path", default="", help="MEGATRON_PATH (default ENV_DIR/src/Megatron-LM)")
    parser.add_argument("--wandb-entity", default="", help="WANDB_ENTITY (wandb logging needs WANDB_PROJECT)")
    parser.add_argument("--wandb-project", default="", help="WANDB_PROJECT: log to wandb when set")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="mpi",
                        help="mpi: mpirun (ABCI, the LLM-jp setup); torchrun: one node")
    parser.add_argument("--train-python", default="", help="TRAIN_PYTHON: the Python that runs Megatron-LM, asked "
                        "which arguments its parser takes (default: ENV_DIR's venv; none: decided at job start)")


def spec_from_args(args: argparse.Namespace, seed: int, world_size: int | None = None) -> RunSpec:
    return RunSpec(exp=exp_dir(args.exp_dir), task=args.task, param=args.param, size=args.size, seed=seed,
                   data_list=args.data_list or None, tokenizer_model=args.tokenizer_model or None,
                   env_dir=args.env_dir or None, megatron_path=args.megatron_path or None,
                   wandb_entity=args.wandb_entity or None, wandb_project=args.wandb_project or None,
                   launcher=args.launcher, world_size=world_size, train_python=args.train_python or None)


def write_resolved(resolved, resolved_at: str) -> None:
    """<run>/train_args.txt (one argument per line), train_env.txt (the job's environment changes) and
    train_args.json (with the derivation)."""
    layout = resolved.spec.layout
    if resolved.params.data.args == "file":
        write_text(layout.data_args_file, resolved.data_args_text())
    write_text(layout.args_txt, "".join(f"{a}\n" for a in resolved.args))
    write_text(layout.env_txt, resolved.environment_lines())
    write_json(layout.args_json, {**resolved.record(), "resolved_at": resolved_at, "provenance": provenance()})


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, required=True, help="SEED: the run folder seed<SEED>")
    parser.add_argument("--iter", default="latest", help="ITER: iteration to convert, or 'latest' (the tracker)")
    parser.add_argument("--converter", choices=CONVERTERS, default="megatron",
                        help="megatron: the three Megatron-LM steps on GPUs; native: scripts/convert_to_hf.py on a CPU")
    parser.add_argument("--hf-tokenizer-dir", default="",
                        help="HF_TOKENIZER_DIR: Hugging Face tokenizer folder (copied into the output)")
    parser.add_argument("--vocab-size", default="", help="VOCAB_SIZE: true vocabulary size (native, no tokenizer)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="CONVERT_DTYPE of the weights")


def add_convert_job_arguments(parser: argparse.ArgumentParser) -> None:
    """How a conversion job is submitted (make convert's scheduler knobs)."""
    add_scheduler_arguments(parser, with_exp_dir=False)   # with DEPEND the checkpoint is not looked for now
    parser.add_argument("--cpu-queue", default="", help="CPU_QUEUE: queue (PBS) or partition (Slurm) of the "
                        "native (CPU) job (default PBS_QUEUE / SLURM_PARTITION)")
    parser.add_argument("--walltime", default="", help="job walltime HH:MM:SS")
    parser.add_argument("--gpus-per-node", default="", help="GPUS_PER_NODE (default: counted by the job, else 8)")
    parser.add_argument("--launcher-knob", choices=("auto", "mpi", "torchrun"), default="auto",
                        help="LAUNCHER of step 1")
    parser.add_argument("--master-port", default="", help="MASTER_PORT of step 1")
    parser.add_argument("--force", action="store_true", help="FORCE=1: convert again over an existing output")


def request(args: argparse.Namespace) -> ConvertRequest:
    vocab = args.vocab_size.strip() if isinstance(args.vocab_size, str) else args.vocab_size
    if vocab and not str(vocab).isdigit():
        fail(f"VOCAB_SIZE={vocab!r}: expected a whole number")
    return ConvertRequest(exp=exp_dir(args.exp_dir), task=args.task, param=args.param, size=args.size,
                          seed=args.seed, iteration=args.iter, converter=args.converter,
                          hf_tokenizer_dir=str(Path(args.hf_tokenizer_dir).absolute())
                          if args.hf_tokenizer_dir else None,
                          vocab_size=int(vocab) if vocab else None, dtype=args.dtype,
                          env_dir=args.env_dir or None, megatron_path=args.megatron_path or None,
                          tokenizer_model=args.tokenizer_model or None, data_list=args.data_list or None,
                          launcher=args.launcher, train_python=args.train_python or None)


def convert_job_options(argv: list[str]) -> argparse.Namespace:
    """The options `scripts/convert.py submit ARGV...` takes, parsed (make chain submits its conversions so)."""
    parser = argparse.ArgumentParser(prog="convert", add_help=False)
    add_request_arguments(parser)
    add_convert_job_arguments(parser)
    args = parser.parse_args(argv)
    if args.nodes < 1:
        fail(f"NODES={args.nodes}: must be at least 1")
    return args
