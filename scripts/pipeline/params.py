"""Model and training parameters: params/<PARAM>.yaml, validated, and what is derived from them.

Two keys are part of the contract every step relies on and stay at the top level of each file:
`seq_length` and `global_batch_size` (training iterations are derived from them).

`load_params(name)` gives the raw strict `Section` (what count/mix/report read);
`load_train_params(name)` validates the whole file into `TrainParams` (what the training steps use):
unknown keys, missing keys, wrong types and inconsistent values fail naming the file and the key.

Each key is declared once, as a field of the dataclass of its section: `key(reader, default)` says
how it is read and checked, and whether it may be left out. The allowed and required keys, the
reading and the checks all follow from those fields (`read_section`); checks that involve several
keys are the `check` method of their section.
A params file describes a model and how to train it; nothing in it is a site path (the tokenizer
model is a path inside the training environment, or TOKENIZER_MODEL).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from pipeline.config import Section, load_yaml
from pipeline.errors import fail
from pipeline.mixture import iterations
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


def params_path(name: str) -> Path:
    """params/<name>.yaml, or `name` itself when it is a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)
    return PARAMS_DIR / f"{name}.yaml"


def param_name(param: str) -> str:
    """The name a PARAM goes by in run folders: itself, or the file name of a params YAML path."""
    return Path(param).stem if param.endswith((".yaml", ".yml")) else param


def known_params() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))  # environment.toml is not a params file


def load_params(name: str) -> Section:
    path = params_path(name)
    if not path.is_file():
        fail(f"PARAM={name}: {path} not found (known: {', '.join(known_params()) or 'none'})")
    return Section(load_yaml(path), path)


def batch_shape(param: str | None, seq_length: int | None, global_batch_size: int | None) -> tuple[int, int, str]:
    """(seq_length, global_batch_size, where they came from)."""
    if seq_length is not None and global_batch_size is not None:
        return seq_length, global_batch_size, "--seq-length/--global-batch-size"
    if not param:
        fail("--param (PARAM=) is needed for the iterations, or both --seq-length and --global-batch-size")
    if param.endswith((".yaml", ".yml")) or "/" in param:
        params = Section(load_yaml(param), param)
        source = param
    else:
        params = load_params(param)
        source = f"params/{param}.yaml"
    seq = seq_length if seq_length is not None else params.get("seq_length", int)
    batch = global_batch_size if global_batch_size is not None else params.get("global_batch_size", int)
    if seq_length is not None or global_batch_size is not None:
        source += " with overrides"
    return seq, batch, source


def train_iterations(total_tokens: int, params: Section) -> int:
    """Iterations that draw `total_tokens` once with these params (pipeline.mixture.iterations)."""
    seq = params.get("seq_length", int)
    batch = params.get("global_batch_size", int)
    if seq <= 0 or batch <= 0:
        fail(f"{params.path}: seq_length and global_batch_size must be positive")
    return iterations(total_tokens, seq, batch)


# ---------------------------------------------------------------------------------------------
# How a key is read: a reader (section, key, default) -> checked value; default ... = required
# ---------------------------------------------------------------------------------------------
Reader = Callable[[Section, str, Any], Any]


@dataclass(frozen=True)
class Key:
    read: Reader
    default: Any = ...


def key(read: Reader, default: Any = ...) -> Any:
    """The dataclass field of the params key of the same name (`default`: the key may be left out)."""
    return field(metadata={"params": Key(read, default)})


def read_section(cls: type, section: Section, **given: Any) -> Any:
    """An instance of `cls` from `section`, every `key()` field read and checked; `given` fills the
    fields that are not keys. Unknown and missing keys fail first, naming file and key."""
    keys = {f.name: f.metadata["params"] for f in fields(cls) if "params" in f.metadata}
    section.check_keys(required={name for name, k in keys.items() if k.default is ...},
                       optional={name for name, k in keys.items() if k.default is not ...})
    value = cls(**given, **{name: k.read(section, name, k.default) for name, k in keys.items()})
    if hasattr(value, "check"):
        value.check(section)
    return value


def positive(section: Section, key: str, default: Any = ...) -> int:
    value = section.get(key, int, default)
    if value is not None and value <= 0:
        fail(f"{section.where(key)}: must be a positive integer, got {value}")
    return value


def non_negative(section: Section, key: str, default: Any = ...) -> float:
    value = section.get(key, (int, float), default)
    if value < 0:
        fail(f"{section.where(key)}: must be >= 0, got {value}")
    return float(value)


def below_one(section: Section, key: str, default: Any = ...) -> float:
    value = non_negative(section, key, default)
    if not value < 1:
        fail(f"{section.where(key)}: must be < 1")
    return value


def above_zero(section: Section, key: str, default: Any = ...) -> float:
    value = float(section.get(key, (int, float), default))
    if value <= 0:
        fail(f"{section.where(key)}: must be > 0")
    return value


def of(kind: type) -> Reader:
    return lambda section, key, default: section.get(key, kind, default)


def choice(choices: tuple[str, ...]) -> Reader:
    def read(section: Section, key: str, default: Any) -> str:
        value = section.get(key, str, default)
        if value not in choices:
            fail(f"{section.where(key)}: {value!r} is not one of {', '.join(choices)}")
        return value
    return read


def nested(cls: type) -> Reader:
    return lambda section, key, default: read_section(cls, section.section(key))


def one_line_strings(section: Section, key: str, default: Any) -> tuple[str, ...]:
    items = section.get(key, list, default)
    for n, item in enumerate(items):
        if not isinstance(item, str) or not item or "\n" in item:
            fail(f"{section.where(key)}[{n}]: expected a one-line string, got {item!r}")
    return tuple(items)


# ---------------------------------------------------------------------------------------------
# The full, validated training description: one field per key
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    num_layers: int = key(positive)
    hidden_size: int = key(positive)
    ffn_hidden_size: int = key(positive)
    num_attention_heads: int = key(positive)
    num_query_groups: int = key(positive)
    max_position_embeddings: int = key(positive)
    rotary_base: int = key(positive)
    normalization: str = key(choice(NORMALIZATIONS))
    norm_epsilon: float = key(above_zero)
    activation: str = key(choice(ACTIVATIONS))
    untie_embeddings_and_output_weights: bool = key(of(bool))
    bias_linear: bool = key(of(bool))
    init_method_std: float = key(non_negative, 0.02)
    attention_dropout: float = key(non_negative, 0.0)
    hidden_dropout: float = key(non_negative, 0.0)

    def check(self, s: Section) -> None:
        if self.hidden_size % self.num_attention_heads:
            fail(f"{s.where('num_attention_heads')}: hidden_size {self.hidden_size} is not divisible by "
                 f"{self.num_attention_heads} heads")
        if self.num_attention_heads % self.num_query_groups:
            fail(f"{s.where('num_query_groups')}: {self.num_attention_heads} heads are not divisible into "
                 f"{self.num_query_groups} query groups")


@dataclass(frozen=True)
class Tokenizer:
    type: str = key(of(str))
    model: str = key(of(str))        # absolute, or relative to the environment's llm-jp-tokenizer checkout


@dataclass(frozen=True)
class Optimizer:
    adam_beta1: float = key(below_one)
    adam_beta2: float = key(below_one)
    adam_eps: float = key(non_negative)
    clip_grad: float = key(non_negative)
    weight_decay: float = key(non_negative)


@dataclass(frozen=True)
class Schedule:
    style: str = key(choice(SCHEDULES))
    lr: float = key(above_zero)


@dataclass(frozen=True)
class Parallel:
    micro_batch_size: int = key(positive)
    tensor: int = key(positive)
    pipeline: int = key(positive)
    context: int = key(positive)
    sequence_parallel: bool = key(of(bool), False)
    distributed_optimizer: bool = key(of(bool), False)
    distributed_timeout_minutes: int = key(positive, 10)

    @property
    def model_parallel(self) -> int:
        return self.tensor * self.pipeline * self.context


@dataclass(frozen=True)
class Implementation:
    precision: str = key(choice(PRECISIONS))
    transformer_impl: str = key(choice(TRANSFORMER_IMPLS))
    # how the job asks for it: pipeline.megatron_features
    attention_backend: str = key(choice(ATTENTION_BACKENDS), "auto")
    # False: every optional fused kernel off (a GPU without TransformerEngine/apex)
    fusions: bool = key(of(bool), True)
    attention_softmax_in_fp32: bool = key(of(bool), False)
    masked_softmax_fusion: bool = key(of(bool), True)
    use_mcore_models: bool = key(of(bool), False)

    def check(self, s: Section) -> None:
        if self.transformer_impl == "local" and self.attention_backend != "auto":
            fail(f"{s.where('attention_backend')}: {self.attention_backend!r} selects a TransformerEngine "
                 f"kernel; transformer_impl local runs Megatron's own attention (use auto)")


@dataclass(frozen=True)
class Checkpointing:
    save_interval: int = key(positive)
    format: str = key(choice(CKPT_FORMATS), "torch_dist")


@dataclass(frozen=True)
class Logging:
    log_interval: int = key(positive, 1)
    log_throughput: bool = key(of(bool), False)


@dataclass(frozen=True)
class Data:
    args: str = key(choice(DATA_ARGS), "inline")
    split: str = key(of(str), "1,0,0")

    def check(self, s: Section) -> None:
        parts = self.split.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) == 0:
            fail(f"{s.where('split')}: expected 'train,valid,test' whole numbers with train > 0, got {self.split!r}")


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


def read_start(top: Section, name: str, default: Any) -> Start:
    """`start`, read by hand: which keys it takes depends on its `from`."""
    s = top.section(name)
    kind = choice(START_KINDS)(s, "from", ...)
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


@dataclass(frozen=True)
class TrainParams:
    name: str
    path: Path
    description: str = key(of(str), "")
    seq_length: int = key(positive)
    global_batch_size: int = key(positive)
    model: Model = key(nested(Model))
    tokenizer: Tokenizer = key(nested(Tokenizer))
    optimizer: Optimizer = key(nested(Optimizer))
    schedule: Schedule = key(nested(Schedule))
    parallel: Parallel = key(nested(Parallel))
    implementation: Implementation = key(nested(Implementation))
    checkpoint: Checkpointing = key(nested(Checkpointing))
    logging: Logging = key(nested(Logging))
    data: Data = key(nested(Data))
    start: Start = key(read_start)
    extra_args: tuple[str, ...] = key(one_line_strings, [])

    @property
    def tokens_per_iteration(self) -> int:
        return self.seq_length * self.global_batch_size

    def iterations(self, total_tokens: int) -> int:
        return iterations(total_tokens, self.seq_length, self.global_batch_size)

    def check(self, top: Section) -> None:
        """What ties the sections together."""
        model, par = self.model, self.parallel
        if self.seq_length > model.max_position_embeddings:
            fail(f"{top.where('seq_length')}: {self.seq_length} exceeds model.max_position_embeddings "
                 f"{model.max_position_embeddings}")
        if self.global_batch_size % par.micro_batch_size:
            fail(f"{top.where('global_batch_size')}: {self.global_batch_size} is not a multiple of "
                 f"parallel.micro_batch_size {par.micro_batch_size}")
        where = top.section("parallel")
        if model.num_layers % par.pipeline:
            fail(f"{where.where('pipeline')}: {model.num_layers} layers do not split into {par.pipeline} stages")
        if model.num_attention_heads % par.tensor or model.num_query_groups % par.tensor:
            fail(f"{where.where('tensor')}: heads ({model.num_attention_heads}) and query groups "
                 f"({model.num_query_groups}) must divide by tensor parallel {par.tensor}")

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


def parse_train_params(name: str, path: Path, doc: object) -> TrainParams:
    return read_section(TrainParams, Section(doc, path), name=name, path=path)


def load_train_params(name: str) -> TrainParams:
    """params/<name>.yaml (or a path) fully validated for training."""
    section = load_params(name)
    return parse_train_params(param_name(name), section.path, section.data)
