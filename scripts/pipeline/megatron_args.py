"""The Megatron-LM argument list of a run, derived from params, the mixture list and the run's state.

    spec = RunSpec(exp=..., task=..., param=..., size=..., seed=42, tokenizer_model=...)
    resolved = resolve(spec)                 # mode "train"; resolve(spec, mode="convert", ...) for conversion
    resolved.args                            # ['--num-layers', '32', ..., '--train-iters', '6900', ...]
    resolved.record()                        # the same with the derivation, for train_args.json

Flag names are those of the LLM-jp Megatron-LM v4 (megatron/training/arguments.py, core ~0.10),
which upstream shares except `--use-mpi` (a fork addition; only with the mpirun launcher).
Every value is one list element: a value never needs shell quoting, and a value with a newline is
refused (the list is written one argument per line).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.datalist import Entry, data_path_args, read_list, total_weight
from pipeline.errors import fail
from pipeline.megatron_features import MegatronFeatures, attention_launch, probe
from pipeline.midtrain import MECHANISM, MECHANISM_ALTERNATIVE, MECHANISM_WHY, SCRATCH, RunLayout
from pipeline.params import TrainParams, load_train_params, param_name
from pipeline.paths import TASKS_DIR, run_dir

MODES = ("train", "convert")
LAUNCHERS = ("mpi", "torchrun")
TOKENIZER_CHECKOUT = Path("src") / "llm-jp-tokenizer"   # inside ENV_DIR (pipeline.environment.Layout)
MEGATRON_CHECKOUT = Path("src") / "Megatron-LM"
WANDB_OFF = "wandb off: set WANDB_PROJECT (and WANDB_ENTITY) to log to Weights & Biases"


@dataclass
class RunSpec:
    exp: Path
    task: str
    param: str
    size: str
    seed: int
    data_list: Path | None = None        # default tasks/<TASK>/train_data_<SIZE>.sh
    tokenizer_model: str | None = None   # TOKENIZER_MODEL; default: params' model inside ENV_DIR
    env_dir: str | None = None
    megatron_path: str | None = None     # MEGATRON_PATH; default ENV_DIR/src/Megatron-LM
    wandb_entity: str | None = None
    wandb_project: str | None = None
    launcher: str = "mpi"
    world_size: int | None = None
    train_python: str | None = None      # TRAIN_PYTHON: runs Megatron (and asks its parser); default ENV_DIR's venv
    features: MegatronFeatures | None = None   # what the Megatron accepts, when already known (else asked)

    @property
    def run_dir(self) -> Path:
        return run_dir(self.exp, self.task, param_name(self.param), self.size, self.seed)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def list_path(self) -> Path:
        return Path(self.data_list) if self.data_list else TASKS_DIR / self.task / f"train_data_{self.size}.sh"


def resolve_tokenizer(spec: RunSpec, params: TrainParams) -> Path:
    if spec.tokenizer_model:
        return Path(spec.tokenizer_model).absolute()
    model = Path(params.tokenizer.model)
    if model.is_absolute():
        return model
    if spec.env_dir:
        return Path(spec.env_dir).absolute() / TOKENIZER_CHECKOUT / model
    fail(f"no tokenizer model: set TOKENIZER_MODEL=<file>, or ENV_DIR (then {params.path} tokenizer.model "
         f"{model} is taken inside $ENV_DIR/{TOKENIZER_CHECKOUT})")


def resolve_megatron(spec: RunSpec) -> Path | None:
    if spec.megatron_path:
        return Path(spec.megatron_path).absolute()
    if spec.env_dir:
        return Path(spec.env_dir).absolute() / MEGATRON_CHECKOUT
    return None


def resolve_train_python(spec: RunSpec) -> str | None:
    if spec.train_python:
        return spec.train_python
    if spec.env_dir:
        venv_python = Path(spec.env_dir).absolute() / "venv" / "bin" / "python"
        if venv_python.is_file():
            return str(venv_python)
    return None


def megatron_features(spec: RunSpec, megatron: Path | None) -> MegatronFeatures | None:
    """What the run's Megatron accepts (its parser, asked with TRAIN_PYTHON), or None when it cannot be asked
    here (no Megatron or no Python for it: the job asks at its start)."""
    if spec.features is not None:
        return spec.features
    python = resolve_train_python(spec)
    if megatron is None or python is None or not (megatron / "pretrain_gpt.py").is_file():
        return None
    return probe(megatron, python, spec.exp / ".cache")


def _num(value: float) -> str:
    """A float as Megatron's argparse reads it back exactly (3e-05, 0.9, 1e-08, 0.0)."""
    return repr(float(value))


@dataclass
class Resolved:
    spec: RunSpec
    params: TrainParams
    mode: str
    data_list: Path
    entries: list[Entry]
    train_iters: int
    load_dir: Path | None                # None: a run from random weights that has not saved yet
    tokenizer: Path
    megatron: Path | None
    features: MegatronFeatures | None = None
    args: list[str] = field(default_factory=list)
    environment: dict[str, str | None] = field(default_factory=dict)   # for the job: export (value) / unset (None)
    notes: list[str] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return total_weight(self.entries)

    def data_prefixes(self) -> list[Path]:
        return [Path(p) for p in data_path_args(self.entries, self.spec.exp)[1::2]]

    def data_args_text(self) -> str:
        """The --data-args-path file: 'w1 p1 w2 p2 ...' (Megatron splits it on whitespace)."""
        return " ".join(data_path_args(self.entries, self.spec.exp)) + "\n"

    def environment_lines(self) -> str:
        """The job's environment changes, one per line: `export NAME VALUE` or `unset NAME` (read by the
        templates with `read`, never evaluated)."""
        return "".join(f"export {k} {v}\n" if v is not None else f"unset {k}\n"
                       for k, v in sorted(self.environment.items()))

    def start_info(self) -> dict:
        layout = self.spec.layout
        init = layout.init_info() or {}
        if init.get("mechanism") == SCRATCH:
            return {"mechanism": SCRATCH, "why": init.get("why"), "train_iters": self.train_iters,
                    "starts_at_step": 0, "load_dir": str(self.load_dir) if self.load_dir else None,
                    "loads": "own checkpoints (resume)" if self.load_dir else "nothing: random weights",
                    "initialised": layout.is_initialised(), "start_from": SCRATCH}
        source = init.get("source") or {}
        base_iteration = source.get("iteration")
        if base_iteration is None and self.params.start.kind == "pretrained":
            base_iteration = self.params.start.iteration
        info = {
            "mechanism": MECHANISM,
            "why": MECHANISM_WHY,
            "alternative": MECHANISM_ALTERNATIVE,
            "train_iters": self.train_iters,
            "starts_at_step": 0,
            "load_dir": str(self.load_dir),
            "loads": "own checkpoints (resume)" if self.load_dir == layout.checkpoints else "start (make init)",
            "initialised": layout.is_initialised(),
            "start_from": self.params.start.kind,
            "base_checkpoint": source.get("iter_dir"),
            "base_iteration": base_iteration,
        }
        if base_iteration is not None:
            info["train_iters_if_step_count_kept"] = base_iteration + self.train_iters
            info["not_used"] = (f"--train-iters {base_iteration + self.train_iters} (= {base_iteration:,} + "
                                f"{self.train_iters:,}) is what resuming with the pretraining step count would "
                                f"need; this run starts at step 0 with --train-iters {self.train_iters}")
        return info

    def record(self) -> dict:
        p = self.params
        schedule = {"style": p.schedule.style, "lr": p.schedule.lr, "warmup_iters": 0}
        if p.schedule.style == "linear_to_zero":
            schedule.update(min_lr=0.0, decay_iters=self.train_iters)
        else:
            schedule.update(min_lr=p.schedule.lr)
        return {
            "mode": self.mode,
            "run_dir": str(self.spec.run_dir),
            "task": self.spec.task, "param": p.name, "params_file": str(p.path), "size": self.spec.size,
            "seed": self.spec.seed,
            "data_list": str(self.data_list),
            "data_list_sha256": hashlib.sha256(self.data_list.read_bytes()).hexdigest(),
            "data_files": len(self.entries),
            "total_tokens": self.total_tokens,
            "seq_length": p.seq_length, "global_batch_size": p.global_batch_size,
            "tokens_per_iteration": p.tokens_per_iteration,
            "train_iters": self.train_iters,
            "train_iters_formula": f"ceil({self.total_tokens:,} / {p.seq_length} / {p.global_batch_size}) = "
                                   f"{self.train_iters:,}",
            "epochs_of_mixture": round(self.train_iters * p.tokens_per_iteration / max(self.total_tokens, 1), 6),
            "schedule": schedule,
            "start": self.start_info(),
            "tokenizer_model": str(self.tokenizer),
            "megatron_path": str(self.megatron) if self.megatron else None,
            "megatron": {"core_version": self.features.core_version, "launch": self.features.describe()}
            if self.features else None,
            "environment": self.environment,
            "launcher": self.spec.launcher,
            "world_size": self.spec.world_size,
            "wandb": bool(self.spec.wandb_project),
            "notes": self.notes,
            "arguments": self.args,
        }


def _model_args(p: TrainParams) -> list[str]:
    m = p.model
    args = ["--num-layers", str(m.num_layers), "--hidden-size", str(m.hidden_size),
            "--ffn-hidden-size", str(m.ffn_hidden_size), "--num-attention-heads", str(m.num_attention_heads)]
    if m.num_query_groups != m.num_attention_heads:
        args += ["--group-query-attention", "--num-query-groups", str(m.num_query_groups)]
    args += ["--seq-length", str(p.seq_length), "--max-position-embeddings", str(m.max_position_embeddings),
             "--position-embedding-type", "rope", "--rotary-base", str(m.rotary_base)]
    if m.untie_embeddings_and_output_weights:
        args.append("--untie-embeddings-and-output-weights")
    if m.activation == "swiglu":
        args.append("--swiglu")
    args += ["--normalization", m.normalization, "--norm-epsilon", _num(m.norm_epsilon)]
    if not m.bias_linear:
        args.append("--disable-bias-linear")
    return args


def _optimizer_args(p: TrainParams) -> list[str]:
    o, m = p.optimizer, p.model
    return ["--optimizer", "adam", "--adam-beta1", _num(o.adam_beta1), "--adam-beta2", _num(o.adam_beta2),
            "--adam-eps", _num(o.adam_eps), "--clip-grad", _num(o.clip_grad), "--weight-decay", _num(o.weight_decay),
            "--init-method-std", _num(m.init_method_std), "--attention-dropout", _num(m.attention_dropout),
            "--hidden-dropout", _num(m.hidden_dropout)]


def schedule_args(p: TrainParams, train_iters: int) -> list[str]:
    """constant: the LR stays at lr; linear_to_zero: lr -> 0 linearly over this run, no warmup."""
    lr = _num(p.schedule.lr)
    if p.schedule.style == "constant":
        args = ["--lr", lr, "--min-lr", lr, "--lr-decay-style", "constant", "--lr-warmup-iters", "0"]
    else:
        args = ["--lr", lr, "--min-lr", "0.0", "--lr-decay-style", "linear", "--lr-warmup-iters", "0",
                "--lr-decay-iters", str(train_iters)]
    # the scheduler state in the checkpoint (pretraining's max LR, warmup, decay length) must not win
    return args + ["--override-opt_param-scheduler", "--train-iters", str(train_iters),
                   "--eval-interval", "999999999", "--eval-iters", "0"]


def _parallel_args(p: TrainParams, launcher: str) -> list[str]:
    par = p.parallel
    args = ["--micro-batch-size", str(par.micro_batch_size), "--global-batch-size", str(p.global_batch_size),
            "--tensor-model-parallel-size", str(par.tensor), "--pipeline-model-parallel-size", str(par.pipeline),
            "--context-parallel-size", str(par.context)]
    if par.sequence_parallel:
        args.append("--sequence-parallel")
    if par.distributed_optimizer:
        args.append("--use-distributed-optimizer")
    args += ["--distributed-backend", "nccl", "--distributed-timeout-minutes", str(par.distributed_timeout_minutes)]
    return args


# every optional fused kernel (each needs apex or TransformerEngine, or a JIT build) when fusions: false
NO_FUSION_ARGS = ("--no-masked-softmax-fusion", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion",
                  "--no-rope-fusion", "--no-gradient-accumulation-fusion", "--no-persist-layer-norm")


def _implementation_args(p: TrainParams) -> list[str]:
    imp = p.implementation
    args = {"bf16": ["--bf16"], "fp16": ["--fp16"], "fp32": []}[imp.precision]
    if imp.use_mcore_models:
        args.append("--use-mcore-models")
    if not imp.fusions:
        args += NO_FUSION_ARGS
    elif not imp.masked_softmax_fusion:
        args.append("--no-masked-softmax-fusion")
    if imp.attention_softmax_in_fp32:
        args.append("--attention-softmax-in-fp32")
    return args + ["--transformer-impl", imp.transformer_impl]


def _check_values(args: list[str]) -> None:
    for value in args:
        if "\n" in value or "\r" in value or "\0" in value:
            fail(f"argument {value!r}: a newline or NUL byte cannot go into the one-per-line argument list")


def resolve(spec: RunSpec, mode: str = "train", *, load: str | os.PathLike | None = None,
            convert_save: str | os.PathLike | None = None, convert_format: str = "torch") -> Resolved:
    """Every Megatron argument of the run (mode `train`), or of its conversion job (mode `convert`:
    the same model arguments, --load `load`, --ckpt-convert-format/--ckpt-convert-save, no --save, no wandb)."""
    if mode not in MODES:
        fail(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if spec.launcher not in LAUNCHERS:
        fail(f"launcher {spec.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    params = load_train_params(spec.param)
    if spec.world_size is not None:
        params.check_world_size(spec.world_size, f"{spec.world_size} GPUs")
    list_path = spec.list_path()
    if not list_path.is_file():
        hint = f" (make mix TASK={spec.task} SIZE={spec.size} writes it; DATA_LIST=<file> reads another)" \
            if not spec.data_list else ""
        fail(f"{list_path}: data list not found{hint}")
    entries = [e for e in read_list(list_path) if e.weight > 0]
    if not entries:
        fail(f"{list_path}: no file with a positive weight")
    train_iters = params.iterations(total_weight(entries))
    layout = spec.layout
    tokenizer = resolve_tokenizer(spec, params)
    megatron = resolve_megatron(spec)
    resolved = Resolved(spec=spec, params=params, mode=mode, data_list=list_path.absolute(), entries=entries,
                        train_iters=train_iters, load_dir=layout.load_dir(), tokenizer=tokenizer,
                        megatron=megatron, features=megatron_features(spec, megatron))

    args = _model_args(params)
    args += ["--tokenizer-type", params.tokenizer.type, "--tokenizer-model", str(tokenizer)]
    args += _optimizer_args(params)
    args += schedule_args(params, train_iters)
    args += _parallel_args(params, spec.launcher)
    if params.data.args == "file":
        args += ["--data-args-path", str(layout.data_args_file)]
        for prefix in resolved.data_prefixes():
            if any(c.isspace() for c in str(prefix)):
                fail(f"{list_path}: {prefix} holds whitespace, which --data-args-path cannot carry "
                     f"(Megatron splits the file on whitespace); use data.args: inline in {params.path}")
    else:
        args += ["--data-path", *data_path_args(entries, spec.exp)]
    args += ["--data-cache-path", str(layout.data_cache), "--split", params.data.split, "--seed", str(spec.seed)]

    if mode == "train":
        if resolved.load_dir is not None:
            args += ["--load", str(resolved.load_dir), "--exit-on-missing-checkpoint"]
        args += ["--save", str(layout.checkpoints)]
    else:
        args += ["--load", str(Path(load).absolute() if load else layout.checkpoints), "--exit-on-missing-checkpoint"]
    args += ["--ckpt-format", params.checkpoint.format]
    if mode == "train":
        args += ["--save-interval", str(params.checkpoint.save_interval)]
    else:
        args += ["--ckpt-convert-format", convert_format,
                 "--ckpt-convert-save", str(Path(convert_save).absolute() if convert_save
                                            else spec.run_dir / "checkpoints_torch")]
    args += _implementation_args(params)
    args += ["--log-interval", str(params.logging.log_interval)]
    if params.logging.log_throughput:
        args.append("--log-throughput")
    if mode == "train" and spec.wandb_project:
        if spec.wandb_entity:
            args += ["--wandb-entity", spec.wandb_entity]
        args += ["--wandb-project", spec.wandb_project,
                 "--wandb-exp-name", f"{spec.task}_{params.name}_{spec.size}_seed{spec.seed}",
                 "--wandb-save-dir", str(layout.wandb)]
    elif mode == "train":
        resolved.notes.append(WANDB_OFF if not spec.wandb_entity else
                              "wandb off: WANDB_ENTITY is set but WANDB_PROJECT is not")
    args += _launch_args(resolved)
    args += list(params.extra_args)
    _check_values(args)
    if resolved.features is not None:
        unknown = resolved.features.unknown(args)
        if unknown:
            fail(f"Megatron-LM at {resolved.features.megatron_path} (core {resolved.features.core_version}) does not "
                 f"know {len(unknown)} generated argument(s): {' '.join(unknown)} (from {params.path} and the run)")
    resolved.args = args
    return resolved


def _launch_args(resolved: Resolved) -> list[str]:
    """What depends on the Megatron generation: the attention selection and --use-mpi (megatron_features)."""
    features, spec, params = resolved.features, resolved.spec, resolved.params
    if features is None:
        resolved.notes.append("attention and rank flags are decided at job start, from the Megatron-LM checkout "
                              "(none to ask here: set MEGATRON_PATH or ENV_DIR, and TRAIN_PYTHON)")
        return []
    args, resolved.environment = attention_launch(features, params.implementation.attention_backend)
    if spec.launcher == "mpi" and features.has_use_mpi:
        args.append("--use-mpi")   # ranks from OMPI_COMM_WORLD_* (LLM-jp fork); else pbs/launch_env.sh maps them
    return args
