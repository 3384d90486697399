"""Model and training parameters: params/<PARAM>.yaml, validated, and what is derived from them.

Two keys are part of the contract every step relies on and stay at the top level of each file:
`seq_length` and `global_batch_size` (training iterations are derived from them).

`load_params(name)` gives the raw strict `Section` (what count/mix/report read);
`load_train_params(name)` validates the whole file into `TrainParams` (what the training steps use):
unknown keys, missing keys, wrong types and inconsistent values fail naming the file and the key.
A params file describes a model and how to train it; nothing in it is a site path (the tokenizer
model is a path inside the training environment, or TOKENIZER_MODEL).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Section, load_yaml
from pipeline.errors import fail
from pipeline.paths import PARAMS_DIR

SCHEDULES = ("constant", "linear_to_zero")
START_KINDS = ("pretrained", "run")
NORMALIZATIONS = ("RMSNorm", "LayerNorm")
ACTIVATIONS = ("swiglu", "gelu")
PRECISIONS = ("bf16", "fp16", "fp32")
TRANSFORMER_IMPLS = ("transformer_engine", "local")
ATTENTION_BACKENDS = ("flash", "fused", "unfused", "auto")
CKPT_FORMATS = ("torch_dist",)          # the midtraining start (make init) rewrites torch_dist checkpoints
DATA_ARGS = ("inline", "file")          # --data-path w p ... | --data-args-path <file> (newer Megatron only)
NOT_PARAMS = ("environment",)           # other YAML files living in params/


def params_path(name: str) -> Path:
    """params/<name>.yaml, or `name` itself when it is a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)
    return PARAMS_DIR / f"{name}.yaml"


def param_name(param: str) -> str:
    """The name a PARAM goes by in run folders: itself, or the file name of a params YAML path."""
    return Path(param).stem if param.endswith((".yaml", ".yml")) else param


def known_params() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml") if p.stem not in NOT_PARAMS)


def load_params(name: str) -> Section:
    path = params_path(name)
    if not path.is_file():
        fail(f"PARAM={name}: {path} not found (known: {', '.join(known_params()) or 'none'})")
    return Section(load_yaml(path), path)


def tokens_per_iteration(params: Section) -> int:
    seq = params.get("seq_length", int)
    batch = params.get("global_batch_size", int)
    if seq <= 0 or batch <= 0:
        fail(f"{params.path}: seq_length and global_batch_size must be positive")
    return seq * batch


def train_iterations(total_tokens: int, params: Section) -> int:
    """Iterations that draw `total_tokens` once: ceil(tokens / (seq_length x global_batch_size))."""
    return math.ceil(total_tokens / tokens_per_iteration(params))


# ---------------------------------------------------------------------------------------------
# The full, validated training description
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    max_position_embeddings: int
    rotary_base: int
    normalization: str
    norm_epsilon: float
    activation: str
    untie_embeddings_and_output_weights: bool
    bias_linear: bool
    init_method_std: float
    attention_dropout: float
    hidden_dropout: float


@dataclass(frozen=True)
class Tokenizer:
    type: str
    model: str        # absolute, or relative to the environment's llm-jp-tokenizer checkout


@dataclass(frozen=True)
class Optimizer:
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    clip_grad: float
    weight_decay: float


@dataclass(frozen=True)
class Schedule:
    style: str        # constant | linear_to_zero
    lr: float


@dataclass(frozen=True)
class Parallel:
    micro_batch_size: int
    tensor: int
    pipeline: int
    context: int
    sequence_parallel: bool
    distributed_optimizer: bool
    distributed_timeout_minutes: int

    @property
    def model_parallel(self) -> int:
        return self.tensor * self.pipeline * self.context


@dataclass(frozen=True)
class Implementation:
    precision: str
    transformer_impl: str
    attention_backend: str           # flash | fused | unfused | auto (how the job asks for it: megatron_features)
    fusions: bool                    # False: every optional fused kernel off (a GPU without TransformerEngine/apex)
    attention_softmax_in_fp32: bool
    masked_softmax_fusion: bool
    use_mcore_models: bool


@dataclass(frozen=True)
class Checkpointing:
    save_interval: int
    format: str


@dataclass(frozen=True)
class Logging:
    log_interval: int
    log_throughput: bool


@dataclass(frozen=True)
class Data:
    args: str         # inline | file
    split: str


@dataclass(frozen=True)
class PreviousRun:
    task: str
    param: str
    size: str


@dataclass(frozen=True)
class Start:
    kind: str                        # pretrained | run
    iteration: int | None            # pretrained: the pretraining iteration to start from (BASE_ITER overrides)
    run: PreviousRun | None          # run: the earlier stage (same seed) whose final checkpoint starts this one


@dataclass(frozen=True)
class TrainParams:
    name: str
    path: Path
    description: str
    seq_length: int
    global_batch_size: int
    model: Model
    tokenizer: Tokenizer
    optimizer: Optimizer
    schedule: Schedule
    parallel: Parallel
    implementation: Implementation
    checkpoint: Checkpointing
    logging: Logging
    data: Data
    start: Start
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tokens_per_iteration(self) -> int:
        return self.seq_length * self.global_batch_size

    def iterations(self, total_tokens: int) -> int:
        return math.ceil(total_tokens / self.tokens_per_iteration)

    def check_world_size(self, world_size: int, where: str) -> int:
        """The data-parallel size for `world_size` GPUs; fails when the batch cannot be split."""
        mp = self.parallel.model_parallel
        if world_size < mp or world_size % mp:
            fail(f"{where}: {world_size} GPUs cannot hold tensor x pipeline x context parallel = {mp} "
                 f"({self.path})")
        dp = world_size // mp
        if self.global_batch_size % (self.parallel.micro_batch_size * dp):
            fail(f"{where}: global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                 f"{self.parallel.micro_batch_size} x data-parallel size {dp} ({world_size} GPUs; {self.path})")
        return dp


def _positive_int(section: Section, key: str, default=...) -> int:
    value = section.get(key, int, default)
    if value is not None and value <= 0:
        fail(f"{section.where(key)}: must be a positive integer, got {value}")
    return value


def _non_negative(section: Section, key: str, default=...) -> float:
    value = section.get(key, (int, float), default)
    if value < 0:
        fail(f"{section.where(key)}: must be >= 0, got {value}")
    return float(value)


def _choice(section: Section, key: str, choices: tuple[str, ...], default=...) -> str:
    value = section.get(key, str, default)
    if value not in choices:
        fail(f"{section.where(key)}: {value!r} is not one of {', '.join(choices)}")
    return value


def _model(s: Section) -> Model:
    s.check_keys(required={"num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                           "num_query_groups", "max_position_embeddings", "rotary_base", "normalization",
                           "norm_epsilon", "activation", "untie_embeddings_and_output_weights", "bias_linear"},
                 optional={"init_method_std", "attention_dropout", "hidden_dropout"})
    model = Model(
        num_layers=_positive_int(s, "num_layers"), hidden_size=_positive_int(s, "hidden_size"),
        ffn_hidden_size=_positive_int(s, "ffn_hidden_size"),
        num_attention_heads=_positive_int(s, "num_attention_heads"),
        num_query_groups=_positive_int(s, "num_query_groups"),
        max_position_embeddings=_positive_int(s, "max_position_embeddings"),
        rotary_base=_positive_int(s, "rotary_base"),
        normalization=_choice(s, "normalization", NORMALIZATIONS),
        norm_epsilon=float(s.get("norm_epsilon", (int, float))),
        activation=_choice(s, "activation", ACTIVATIONS),
        untie_embeddings_and_output_weights=s.get("untie_embeddings_and_output_weights", bool),
        bias_linear=s.get("bias_linear", bool),
        init_method_std=_non_negative(s, "init_method_std", 0.02),
        attention_dropout=_non_negative(s, "attention_dropout", 0.0),
        hidden_dropout=_non_negative(s, "hidden_dropout", 0.0),
    )
    if model.norm_epsilon <= 0:
        fail(f"{s.where('norm_epsilon')}: must be > 0")
    if model.hidden_size % model.num_attention_heads:
        fail(f"{s.where('num_attention_heads')}: hidden_size {model.hidden_size} is not divisible by "
             f"{model.num_attention_heads} heads")
    if model.num_attention_heads % model.num_query_groups:
        fail(f"{s.where('num_query_groups')}: {model.num_attention_heads} heads are not divisible into "
             f"{model.num_query_groups} query groups")
    return model


def _start(s: Section) -> Start:
    kind = _choice(s, "from", START_KINDS)
    if kind == "pretrained":
        s.check_keys(required={"from"}, optional={"iteration"})
        iteration = s.get("iteration", (int, type(None)), None)
        if iteration is not None and iteration <= 0:
            fail(f"{s.where('iteration')}: must be a positive iteration (or null: the checkpoint's tracker)")
        return Start(kind, iteration, None)
    s.check_keys(required={"from", "run"})
    run = s.section("run")
    run.check_keys(required={"task", "param", "size"})
    return Start(kind, None, PreviousRun(run.get("task", str), run.get("param", str), str(run.get("size", (str, int)))))


def parse_train_params(name: str, path: Path, doc: object) -> TrainParams:
    top = Section(doc, path)
    top.check_keys(required={"seq_length", "global_batch_size", "model", "tokenizer", "optimizer", "schedule",
                             "parallel", "implementation", "checkpoint", "logging", "data", "start"},
                   optional={"description", "extra_args"})
    seq = _positive_int(top, "seq_length")
    batch = _positive_int(top, "global_batch_size")
    model = _model(top.section("model"))
    if seq > model.max_position_embeddings:
        fail(f"{top.where('seq_length')}: {seq} exceeds model.max_position_embeddings {model.max_position_embeddings}")

    tok = top.section("tokenizer")
    tok.check_keys(required={"type", "model"})
    tokenizer = Tokenizer(tok.get("type", str), tok.get("model", str))

    opt = top.section("optimizer")
    opt.check_keys(required={"adam_beta1", "adam_beta2", "adam_eps", "clip_grad", "weight_decay"})
    optimizer = Optimizer(*(_non_negative(opt, k) for k in ("adam_beta1", "adam_beta2", "adam_eps", "clip_grad",
                                                             "weight_decay")))
    for key in ("adam_beta1", "adam_beta2"):
        if not getattr(optimizer, key) < 1:
            fail(f"{opt.where(key)}: must be < 1")

    sch = top.section("schedule")
    sch.check_keys(required={"style", "lr"})
    schedule = Schedule(_choice(sch, "style", SCHEDULES), float(sch.get("lr", (int, float))))
    if schedule.lr <= 0:
        fail(f"{sch.where('lr')}: must be > 0")

    par = top.section("parallel")
    par.check_keys(required={"micro_batch_size", "tensor", "pipeline", "context"},
                   optional={"sequence_parallel", "distributed_optimizer", "distributed_timeout_minutes"})
    parallel = Parallel(_positive_int(par, "micro_batch_size"), _positive_int(par, "tensor"),
                        _positive_int(par, "pipeline"), _positive_int(par, "context"),
                        par.get("sequence_parallel", bool, False), par.get("distributed_optimizer", bool, False),
                        _positive_int(par, "distributed_timeout_minutes", 10))
    if batch % parallel.micro_batch_size:
        fail(f"{top.where('global_batch_size')}: {batch} is not a multiple of parallel.micro_batch_size "
             f"{parallel.micro_batch_size}")
    if model.num_layers % parallel.pipeline:
        fail(f"{par.where('pipeline')}: {model.num_layers} layers do not split into {parallel.pipeline} stages")
    if model.num_attention_heads % parallel.tensor or model.num_query_groups % parallel.tensor:
        fail(f"{par.where('tensor')}: heads ({model.num_attention_heads}) and query groups "
             f"({model.num_query_groups}) must divide by tensor parallel {parallel.tensor}")

    imp = top.section("implementation")
    imp.check_keys(required={"precision", "transformer_impl"},
                   optional={"attention_backend", "fusions", "attention_softmax_in_fp32", "masked_softmax_fusion",
                             "use_mcore_models"})
    implementation = Implementation(_choice(imp, "precision", PRECISIONS),
                                    _choice(imp, "transformer_impl", TRANSFORMER_IMPLS),
                                    _choice(imp, "attention_backend", ATTENTION_BACKENDS, "auto"),
                                    imp.get("fusions", bool, True),
                                    imp.get("attention_softmax_in_fp32", bool, False),
                                    imp.get("masked_softmax_fusion", bool, True),
                                    imp.get("use_mcore_models", bool, False))
    if implementation.transformer_impl == "local" and implementation.attention_backend != "auto":
        fail(f"{imp.where('attention_backend')}: {implementation.attention_backend!r} selects a TransformerEngine "
             f"kernel; transformer_impl local runs Megatron's own attention (use auto)")

    ck = top.section("checkpoint")
    ck.check_keys(required={"save_interval"}, optional={"format"})
    checkpoint = Checkpointing(_positive_int(ck, "save_interval"), _choice(ck, "format", CKPT_FORMATS, "torch_dist"))

    lg = top.section("logging")
    lg.check_keys(optional={"log_interval", "log_throughput"})
    logging = Logging(_positive_int(lg, "log_interval", 1), lg.get("log_throughput", bool, False))

    da = top.section("data")
    da.check_keys(optional={"args", "split"})
    data = Data(_choice(da, "args", DATA_ARGS, "inline"), da.get("split", str, "1,0,0"))
    parts = data.split.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) == 0:
        fail(f"{da.where('split')}: expected 'train,valid,test' whole numbers with train > 0, got {data.split!r}")

    start = _start(top.section("start"))
    extra = top.get("extra_args", list, [])
    for n, item in enumerate(extra):
        if not isinstance(item, str) or not item or "\n" in item:
            fail(f"{top.where('extra_args')}[{n}]: expected a one-line string, got {item!r}")
    return TrainParams(name=name, path=path, description=top.get("description", str, ""), seq_length=seq,
                       global_batch_size=batch, model=model, tokenizer=tokenizer, optimizer=optimizer,
                       schedule=schedule, parallel=parallel, implementation=implementation,
                       checkpoint=checkpoint, logging=logging, data=data, start=start, extra_args=tuple(extra))


def load_train_params(name: str) -> TrainParams:
    """params/<name>.yaml (or a path) fully validated for training."""
    section = load_params(name)
    return parse_train_params(param_name(name), section.path, section.data)
