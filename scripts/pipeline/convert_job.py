"""The conversion job of a run (`make convert`, pbs/convert.pbs): what it runs, checked before it is submitted.

Two converters write `<run>/checkpoints_hf/iter_NNNNNNN/`:

* `megatron` (default): the three steps LLM-jp used (pretrain_gpt.py to the torch format, tools/checkpoint/convert.py with the fork's llmjp4_hf saver, the tokenizer files copied in), with the user's Megatron-LM and
  no hand edits:
    1. `pretrain_gpt.py` with the run's own arguments in convert mode (scripts/train_args.py --mode
       convert: same model and parallelism, no --save, no wandb) plus the optimizer handling a
       conversion needs (CONVERSION_FLAGS), loading a temporary checkpoints folder that holds only the
       wanted iteration (a tracker and a link), saving `torch` format into the temporary folder;
    2. `tools/checkpoint/convert.py --loader mcore --saver llmjp4_hf` (the llm-jp fork's saver) to
       Hugging Face safetensors;
    3. the Hugging Face tokenizer files copied in.
  PyTorch >= 2.6's `torch.load(weights_only=True)` default is undone by the job's environment
  (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), not by editing Megatron.
* `native`: scripts/convert_to_hf.py on a CPU node, no Megatron (pipeline.convert_native).

Either way the output is written beside its final name, checked (config and every shard load, and its
tokenizer id for id against the run's SentencePiece model: pipeline.tokenizer_check, whose verdict joins the
record), then renamed into place, so `checkpoints_hf/iter_NNNNNNN/` is complete or absent. HF_TOKENIZER_DIR
is checked the same way before the job is submitted.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import fail
from pipeline.hf_folder import tokenizer_files
from pipeline.megatron_ckpt import TRACKER, completeness_problems, iteration_dir_name, read_tracker

CONVERTERS = ("megatron", "native")
DTYPES = ("bf16", "fp32")             # pipeline.convert_native.DTYPES (not imported here: it imports torch)
CHECKPOINTS_HF = "checkpoints_hf"
TMP_PREFIX = ".convert-tmp."          # the job's temporary folder inside the run folder (visible to all nodes)
LOADER, SAVER = "mcore", "llmjp4_hf"
SAVE_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}   # --save-dtype of the llmjp4_hf saver
# A conversion needs the weights only: the Adam moments and RNG states are neither loaded (they cost
# memory and time, and a different data-parallel size would have to reshard them) nor written to the
# temporary torch checkpoint.
CONVERSION_FLAGS = ("--no-load-optim", "--no-load-rng", "--no-save-optim", "--no-save-rng")
# flags a conversion must not carry (value-taking ones drop their value too): --finetune would load
# the weights as iteration 0, a --save would be a second output, wandb would log a run that is not one
DROPPED_FLAGS = {"--finetune": 0, "--save": 1, "--save-interval": 1, "--wandb-entity": 1, "--wandb-project": 1,
                 "--wandb-exp-name": 1, "--wandb-save-dir": 1}


@dataclass
class ConvertRequest:
    exp: Path
    task: str
    param: str
    size: str
    seed: int
    iteration: str = "latest"           # a number or `latest` (the run's tracker)
    converter: str = "megatron"
    hf_tokenizer_dir: str | None = None
    vocab_size: int | None = None
    dtype: str = "bf16"
    env_dir: str | None = None
    megatron_path: str | None = None
    tokenizer_model: str | None = None
    data_list: str | None = None
    launcher: str = "mpi"
    train_python: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.converter not in CONVERTERS:
            fail(f"CONVERTER={self.converter!r}: expected one of {', '.join(CONVERTERS)}")
        if self.dtype not in DTYPES:
            fail(f"CONVERT_DTYPE={self.dtype!r}: expected one of {', '.join(DTYPES)}")
        text = str(self.iteration).strip()
        if text not in ("", "latest") and not text.isdigit():
            fail(f"ITER={self.iteration!r}: expected an iteration number or 'latest'")
        self.iteration = text or "latest"

    def run_spec(self):
        from pipeline.megatron_args import RunSpec
        return RunSpec(exp=Path(self.exp), task=self.task, param=self.param, size=self.size, seed=self.seed,
                       data_list=self.data_list, tokenizer_model=self.tokenizer_model, env_dir=self.env_dir,
                       megatron_path=self.megatron_path, launcher=self.launcher, train_python=self.train_python)

    @property
    def run_dir(self) -> Path:
        return self.run_spec().run_dir

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def megatron(self) -> Path | None:
        from pipeline.megatron_args import resolve_megatron
        return resolve_megatron(self.run_spec())


def resolve_iteration(checkpoints: Path, text: str) -> int:
    """ITER as a number: itself, or the run's tracker for `latest`; the iteration folder must exist."""
    if text == "latest":
        if not (checkpoints / TRACKER).is_file():
            fail(f"{checkpoints / TRACKER}: missing, so ITER=latest cannot be resolved; has the run saved a "
                 f"checkpoint? (ITER=N names one)")
        tracked = read_tracker(checkpoints)
        if tracked == "release":
            fail(f"{checkpoints / TRACKER}: says 'release'; give ITER=N")
        iteration = tracked
    else:
        iteration = int(text)
    if not (checkpoints / iteration_dir_name(iteration)).is_dir():
        have = sorted(p.name for p in checkpoints.glob("iter_*")) if checkpoints.is_dir() else []
        fail(f"{checkpoints / iteration_dir_name(iteration)}: iteration folder missing "
             f"(present: {', '.join(have) or 'none'})")
    return iteration


def output_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINTS_HF / iteration_dir_name(iteration)


def output_tmp(output: Path, tag: str) -> Path:
    """Where the job builds the output before renaming it into place (not an iter_NNNNNNN name)."""
    return output.parent / f".{output.name}.tmp.{tag}"


def conversion_args(train_args: list[str]) -> list[str]:
    """The run's convert-mode Megatron arguments with the conversion's optimizer handling (see above)."""
    out: list[str] = []
    skip = 0
    for arg in train_args:
        if skip:
            skip -= 1
            continue
        if arg in DROPPED_FLAGS:
            skip = DROPPED_FLAGS[arg]
            continue
        out.append(arg)
    out += [flag for flag in CONVERSION_FLAGS if flag not in out]
    return out


def step1_resolved(req: ConvertRequest, tmp: Path, world_size: int | None = None):
    """The run's arguments in convert mode for step 1 (load tmp/torch_dist, write tmp/torch)."""
    from pipeline.megatron_args import RunSpec, resolve
    spec = req.run_spec()
    if world_size is not None:
        spec = RunSpec(**{**spec.__dict__, "world_size": world_size})
    return resolve(spec, "convert", load=tmp / "torch_dist", convert_save=tmp)


def step1_args(req: ConvertRequest, tmp: Path, world_size: int | None = None) -> list[str]:
    """pretrain_gpt.py's arguments for step 1: load tmp/torch_dist, write tmp/torch."""
    return conversion_args(step1_resolved(req, tmp, world_size).args)


def step2_argv(megatron: str | Path, tmp: Path, out_tmp: Path, hf_tokenizer_dir: str, dtype: str) -> list[str]:
    """Step 2 as pbs/convert.pbs runs it (`python` is the training environment's)."""
    return ["python", f"{megatron}/tools/checkpoint/convert.py", "--model-type", "GPT", "--loader", LOADER,
            "--saver", SAVER, "--load-dir", f"{tmp}/torch", "--save-dir", str(out_tmp),
            "--hf-tokenizer-path", str(hf_tokenizer_dir), "--save-dtype", SAVE_DTYPES[dtype],
            "--loader-transformer-impl", "transformer_engine", "--megatron-path", str(megatron)]


def native_argv(python: str, req: ConvertRequest, iteration: int | str, out_tmp: Path) -> list[str]:
    """The native converter as pbs/convert.pbs runs it."""
    argv = [python, "scripts/convert_to_hf.py", "--load", str(req.checkpoints), "--iteration", str(iteration),
            "--output", str(out_tmp), "--dtype", req.dtype]
    if req.hf_tokenizer_dir:
        argv += ["--tokenizer", str(req.hf_tokenizer_dir)]
        if req.tokenizer_model:
            argv += ["--tokenizer-model", str(req.tokenizer_model)]
    else:
        argv += ["--vocab-size", str(req.vocab_size)]
    return argv


def check_inputs(req: ConvertRequest, *, pending: bool = False) -> tuple[int | None, list[str]]:
    """What can be checked before submitting: (the iteration, when known, and the problems found).

    `pending`: the checkpoint is made by a job not finished yet (DEPEND), so it is not looked for."""
    problems: list[str] = []
    if req.converter == "megatron":
        if not req.hf_tokenizer_dir:
            problems.append("HF_TOKENIZER_DIR is not set: the Megatron converter's saver (and step 3) needs the "
                            "Hugging Face tokenizer folder of the run's tokenizer")
        megatron = req.megatron()
        if megatron is None:
            problems.append("Megatron-LM: set MEGATRON_PATH=<checkout> or ENV_DIR=<environment> (make env), "
                            "or use CONVERTER=native (no Megatron needed)")
        else:
            for part in ("pretrain_gpt.py", "tools/checkpoint/convert.py", f"tools/checkpoint/saver_{SAVER}.py",
                         f"tools/checkpoint/loader_{LOADER}.py"):
                if not (megatron / part).is_file():
                    hint = (" (the llm-jp fork's saver; CONVERTER=native needs no Megatron)"
                            if SAVER in part else "")
                    problems.append(f"{megatron / part}: not found{hint}")
    elif not req.hf_tokenizer_dir and req.vocab_size is None:
        problems.append("the native converter needs the true vocabulary size: HF_TOKENIZER_DIR=<Hugging Face "
                        "tokenizer folder> (also copied into the output) or VOCAB_SIZE=N")
    if req.hf_tokenizer_dir and not Path(req.hf_tokenizer_dir).is_dir():
        problems.append(f"HF_TOKENIZER_DIR={req.hf_tokenizer_dir}: not a folder")
    if req.hf_tokenizer_dir and req.vocab_size is not None and req.converter == "native":
        problems.append("give HF_TOKENIZER_DIR or VOCAB_SIZE, not both (the tokenizer gives the vocabulary size)")
    iteration = None
    if not pending:
        try:
            iteration = resolve_iteration(req.checkpoints, req.iteration)
            problems += completeness_problems(req.checkpoints / iteration_dir_name(iteration))
        except Exception as exc:  # PipelineError: listed with the rest
            problems.append(str(exc))
    elif req.iteration != "latest":
        iteration = int(req.iteration)
    if req.hf_tokenizer_dir and Path(req.hf_tokenizer_dir).is_dir():
        problems += tokenizer_problems(req, iteration)
    return iteration, problems


def tokenizer_problems(req: ConvertRequest, iteration: int | None) -> list[str]:
    """HF_TOKENIZER_DIR must encode as the SentencePiece model the run was trained with (TOKENIZER_MODEL, or
    the one its train_args.json or Megatron's copy in the checkpoint names): checked before any queue wait."""
    from pipeline.errors import PipelineError
    from pipeline.tokenizer_check import recorded_tokenizers, training_tokenizer, verify_hf_tokenizer
    checkpoint = req.checkpoints / iteration_dir_name(iteration) if iteration is not None else None
    try:
        model = training_tokenizer(req.tokenizer_model, recorded_tokenizers(req.run_dir, checkpoint),
                                   f"the run {req.run_dir}")
        verify_hf_tokenizer(Path(req.hf_tokenizer_dir), model)
    except PipelineError as exc:
        return [str(exc)]
    return []


def plan_text(req: ConvertRequest, iteration: int | None, *, world_size: int | None = None,
              python: str = "${PY}") -> str:
    """What the job will run, step by step, with the arguments resolved now (make convert DRY_RUN=1)."""
    run = req.run_dir
    iter_name = iteration_dir_name(iteration) if iteration is not None else "iter_<latest at job start>"
    output = run / CHECKPOINTS_HF / iter_name
    out_tmp = output_tmp(output, "<job>")
    lines = [f"run: {run}",
             f"checkpoint: {req.checkpoints / iter_name}" + ("" if iteration is not None else
                                                               f" (ITER=latest: read from {req.checkpoints / TRACKER})"),
             f"output: {output} (built in {out_tmp}, checked, then renamed into place)",
             f"converter: {req.converter}"]
    q = shlex.join
    if req.converter == "native":
        lines += ["", "step 1/1: native conversion on the CPU (no Megatron, no GPU):",
                  "  " + q(native_argv(python, req, iteration if iteration is not None else "<latest>", out_tmp))]
    else:
        megatron = req.megatron() or Path("${MEGATRON_PATH}")
        tmp = run / f"{TMP_PREFIX}<job>"
        try:
            args = step1_args(req, tmp, world_size)
        except Exception as exc:  # PipelineError: shown, the rest of the plan is still useful
            args = [f"<cannot resolve the run's arguments: {exc}>"]
        lines += [
            f"temporary folder: {tmp} (removed by a trap when the job ends)",
            "environment: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (PyTorch >= 2.6 torch.load default undone for Megatron)"
            + (f"; source {req.env_dir}/activate.sh" if req.env_dir else ""),
            "",
            f"step 0: {tmp}/torch_dist/ = {TRACKER} ({iteration if iteration is not None else '<latest>'}) + "
            f"{iter_name} -> {req.checkpoints / iter_name}",
            "step 1/3: torch_dist -> torch with the run's own arguments in convert mode (GPUs, same parallelism):",
            f"  <mpirun -np NODES*GPUS_PER_NODE | torchrun> python {megatron}/pretrain_gpt.py \\",
            *(f"      {shlex.quote(a)} \\" for a in args[:-1]), f"      {shlex.quote(args[-1])}" if args else "",
            "step 2/3: torch -> Hugging Face:",
            "  " + q(step2_argv(megatron, tmp, out_tmp, req.hf_tokenizer_dir or "${HF_TOKENIZER_DIR}", req.dtype)),
            "step 3/3: copy the Hugging Face tokenizer files:",
        ]
        if req.hf_tokenizer_dir and Path(req.hf_tokenizer_dir).is_dir():
            files = [str(p) for p in tokenizer_files(Path(req.hf_tokenizer_dir))]
            lines.append("  " + q(["cp", "--", *files, f"{out_tmp}/"]))
        else:
            lines.append(f"  cp -- {req.hf_tokenizer_dir or '${HF_TOKENIZER_DIR}'}/<tokenizer files> {out_tmp}/")
        lines.append("check the tokenizer: " + q([python, "scripts/convert.py", "check-tokenizer", str(out_tmp),
                                                  "--run-dir", str(run), "--tokenizer-model", req.tokenizer_model or ""]))
    lines += ["check: " + q([python, "scripts/convert.py", "check", str(out_tmp)]),
              "then: " + q(["mv", "-T", str(out_tmp), str(output)])]
    return "\n".join(lines) + "\n"
