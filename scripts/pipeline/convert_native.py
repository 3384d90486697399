"""`CONVERTER=native`: Megatron GPT (Llama architecture) `torch_dist` checkpoint -> Hugging Face
`LlamaForCausalLM`, on the CPU; and the check of a converted folder (`check_hf_folder`, which the
Megatron converter's output goes through too). The safetensors files themselves are pipeline.hf_folder's.

No Megatron and no GPU: the tensors are read with PyTorch Distributed Checkpoint
(`torch.distributed.checkpoint`, FileSystemReader, `no_dist=True`), the architecture comes from the
checkpoint's own saved arguments (`common.pt`, or the `common_state` object inside the shards of
newer Megatron; pipeline.megatron_ckpt reads both).

Megatron -> Hugging Face names (GQA: per query group [q heads; k; v] rows in linear_qkv; linear_fc1 = [gate; up]). Per-layer tensors are stacked on a leading layer
dimension in `torch_dist` checkpoints, whatever the tensor / pipeline parallelism was:

    embedding.word_embeddings.weight                    [Vp, H]          model.embed_tokens.weight (rows < V)
    decoder.layers.self_attention.linear_qkv.weight     [L, (n+2g)d, H]  q_proj, k_proj, v_proj: rows are per
                                                                         query group [q heads of g; k_g; v_g]
    decoder.layers.self_attention.linear_qkv.layer_norm_weight [L, H]    input_layernorm
    decoder.layers.self_attention.linear_proj.weight    [L, H, nd]       o_proj
    decoder.layers.mlp.linear_fc1.weight                [L, 2F, H]       [gate_proj; up_proj]
    decoder.layers.mlp.linear_fc1.layer_norm_weight     [L, H]           post_attention_layernorm
    decoder.layers.mlp.linear_fc2.weight                [L, H, F]        down_proj
    decoder.final_layernorm.weight                      [H]              model.norm.weight
    output_layer.weight (untied only)                   [Vp, H]          lm_head.weight (rows < V)

Optimizer moments (`optimizer.*`) and byte entries (rng state, `_extra_state`, common state) are
ignored; any other tensor is an error that lists the names.

Memory: one stacked tensor is converted at a time, and of it one stored chunk (one pipeline stage's
layers of one tensor parallel rank, or the whole stack when the run had neither) is in memory at
once, twice during its read (the reader's copy and ours). For a 7.7B model in bf16 that is at most
the MLP input projection: 7.5 GB stored whole (PP=1), 3.8 GB per stage with PP=2. Hugging Face
tensors are written layer by layer straight into the safetensors shards (hf_folder's writer), whose
layout is planned from the shapes before anything is read.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from pipeline.atomic import replace_dir, write_json
from pipeline.errors import PipelineError, fail
from pipeline.hf_folder import (DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, RECORD_FILE, ShardedSafetensorsWriter,
                                tokenizer_files, weight_files)
from pipeline.megatron_ckpt import (COMMON_PT, LAYOUT_LEGACY, Checkpoint, check_complete, common_state_layout,
                                    load_common_state, resolve_checkpoint)
from pipeline.progress import progress
from pipeline.provenance import provenance
from pipeline.tokenizer_check import (describe_verdict, recorded_tokenizers, run_documents, training_tokenizer,
                                      verify_hf_tokenizer)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CONFIG_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}
# LLM-jp SentencePiece tokenizers (BOS 1, EOS 2): used when no tokenizer folder is given
DEFAULT_BOS_ID, DEFAULT_EOS_ID = 1, 2

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT_LAYER = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
QKV = "decoder.layers.self_attention.linear_qkv.weight"
QKV_NORM = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
PROJ = "decoder.layers.self_attention.linear_proj.weight"
FC1 = "decoder.layers.mlp.linear_fc1.weight"
FC1_NORM = "decoder.layers.mlp.linear_fc1.layer_norm_weight"
FC2 = "decoder.layers.mlp.linear_fc2.weight"
LAYER_TENSORS = (QKV, QKV_NORM, PROJ, FC1, FC1_NORM, FC2)
IGNORED_PREFIXES = ("optimizer.",)


# ---------------------------------------------------------------------------------------------
# The architecture, from the checkpoint's saved arguments
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LlamaSpec:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    padded_vocab_size: int
    rope_theta: float
    norm_epsilon: float
    tied_embeddings: bool
    max_position_embeddings: int

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Megatron torch_dist tensor name -> global shape."""
        L, H, F, d = self.num_layers, self.hidden_size, self.ffn_hidden_size, self.head_dim
        n, g, V = self.num_attention_heads, self.num_query_groups, self.padded_vocab_size
        shapes = {
            EMBEDDING: (V, H),
            QKV: (L, (n + 2 * g) * d, H),
            QKV_NORM: (L, H),
            PROJ: (L, H, n * d),
            FC1: (L, 2 * F, H),
            FC1_NORM: (L, H),
            FC2: (L, H, F),
            FINAL_NORM: (H,),
        }
        if not self.tied_embeddings:
            shapes[OUTPUT_LAYER] = (V, H)
        return shapes


_REQUIRED = object()
# argument -> the value a Llama model must have, and why
_LLAMA_ONLY = {
    "normalization": ("RMSNorm", "RMSNorm"),
    "swiglu": (True, "SwiGLU MLP"),
    "position_embedding_type": ("rope", "rotary position embeddings"),
    "add_bias_linear": (False, "no linear biases (--disable-bias-linear)"),
    "add_qkv_bias": (False, "no QKV bias"),
    "qk_layernorm": (False, "no QK layer norm"),
    "apply_layernorm_1p": (False, "plain (not zero-centred) norm weights"),
    "rotary_interleaved": (False, "non-interleaved rotary embeddings"),
    "use_rope_scaling": (False, "no Llama 3.1 RoPE scaling"),
    "multi_latent_attention": (False, "standard attention"),
}
_MUST_BE_SAVED = ("normalization", "swiglu", "position_embedding_type")  # the others default to Megatron's


def _arg(args: Any, name: str, where: str, default: Any = _REQUIRED) -> Any:
    value = getattr(args, name, default)
    if value is _REQUIRED:
        fail(f"{where}: the saved arguments have no {name!r}; cannot derive the architecture")
    return value


def spec_from_args(args: Any, where: str) -> LlamaSpec:
    """The Llama architecture of a Megatron run from its saved argparse.Namespace (`where` names the file)."""
    if args is None:
        fail(f"{where}: the common state has no 'args'; cannot derive the architecture")
    for name, (wanted, what) in _LLAMA_ONLY.items():
        value = _arg(args, name, where, _REQUIRED if name in _MUST_BE_SAVED else wanted)
        if value is None and wanted is False:  # an unset flag
            value = False
        if value != wanted:
            fail(f"{where}: args.{name} = {value!r}, but a Llama model has {what} ({name} = {wanted!r}); "
                 f"this checkpoint cannot be written as LlamaForCausalLM")
    experts = getattr(args, "num_experts", None)
    if experts:
        fail(f"{where}: args.num_experts = {experts}: mixture-of-experts checkpoints are not Llama models")
    rotary_percent = getattr(args, "rotary_percent", 1.0)
    if rotary_percent != 1.0:
        fail(f"{where}: args.rotary_percent = {rotary_percent}: partial rotary embeddings are not Llama")
    layers = int(_arg(args, "num_layers", where))
    hidden = int(_arg(args, "hidden_size", where))
    heads = int(_arg(args, "num_attention_heads", where))
    ffn = _arg(args, "ffn_hidden_size", where, None)
    if ffn is None:
        fail(f"{where}: the saved arguments have no ffn_hidden_size")
    gqa = bool(getattr(args, "group_query_attention", False))
    groups = int(_arg(args, "num_query_groups", where)) if gqa else heads
    if groups < 1 or heads % groups:
        fail(f"{where}: num_attention_heads = {heads} is not a multiple of num_query_groups = {groups}")
    head_dim = getattr(args, "kv_channels", None) or hidden // heads
    padded = getattr(args, "padded_vocab_size", None)
    theta = getattr(args, "rotary_base", 10000)
    eps = getattr(args, "norm_epsilon", 1e-5)
    untied = bool(getattr(args, "untie_embeddings_and_output_weights", False))
    max_pos = getattr(args, "max_position_embeddings", None) or getattr(args, "seq_length", None)
    if max_pos is None:
        fail(f"{where}: the saved arguments have neither max_position_embeddings nor seq_length")
    return LlamaSpec(num_layers=layers, hidden_size=hidden, ffn_hidden_size=int(ffn), num_attention_heads=heads,
                     num_query_groups=groups, head_dim=int(head_dim),
                     padded_vocab_size=int(padded) if padded else 0, rope_theta=float(theta),
                     norm_epsilon=float(eps), tied_embeddings=not untied, max_position_embeddings=int(max_pos))


# ---------------------------------------------------------------------------------------------
# Reading tensors (or a range of their leading dimension) from a torch_dist checkpoint
# ---------------------------------------------------------------------------------------------
class _CachedReader(FileSystemReader):
    """dcp.load re-reads .metadata on every call otherwise (tens of MB with optimizer states)."""

    _cached = None

    def read_metadata(self, *args: Any, **kwargs: Any):
        if self._cached is None:
            self._cached = super().read_metadata(*args, **kwargs)
        return self._cached


class _RegionPlanner(DefaultLoadPlanner):
    """Reads the region `offsets` + `out.shape` of the stored tensor `name` into `out`.

    A module-level class on purpose: a class made per call would sit in a reference cycle with `out`,
    keeping every tensor read alive until the cyclic garbage collector runs."""

    def __init__(self, name: str, md: Any, offsets: list[int], out: torch.Tensor) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._name, self._md, self._offsets, self._out = name, md, offsets, out

    def create_local_plan(self) -> LoadPlan:
        wanted = ChunkStorageMetadata(offsets=torch.Size(self._offsets), sizes=self._out.size())
        return LoadPlan(create_read_items_for_chunk_list(self._name, self._md, [wanted]))

    def lookup_tensor(self, index: Any) -> torch.Tensor:
        return self._out


class TorchDistReader:
    """Tensors of a PyTorch Distributed Checkpoint folder, read on the CPU in one process."""

    def __init__(self, iter_dir: str | os.PathLike) -> None:
        self.iter_dir = Path(iter_dir)
        self._buffer: torch.Tensor | None = None
        self._reader = _CachedReader(str(self.iter_dir))
        try:
            self.metadata = self._reader.read_metadata()
        except Exception as exc:  # a truncated or foreign .metadata
            fail(f"{self.iter_dir / '.metadata'}: cannot read the checkpoint metadata: {exc}")

    def tensors(self) -> dict[str, Any]:
        """Name -> TensorStorageMetadata (size, properties.dtype, chunks) of every tensor entry."""
        return {k: v for k, v in self.metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}

    def row_segments(self, name: str) -> list[tuple[int, int]]:
        """Ranges of the leading dimension that no stored chunk crosses (e.g. one per pipeline stage)."""
        md = self.metadata.state_dict_metadata[name]
        total = md.size[0]
        bounds = {0, total}
        for chunk in md.chunks:
            bounds.update((chunk.offsets[0], chunk.offsets[0] + chunk.sizes[0]))
        edges = sorted(b for b in bounds if 0 <= b <= total)
        return list(zip(edges[:-1], edges[1:]))

    def reserve(self, nbytes: int) -> None:
        """Make the reusable buffer at least `nbytes` (reserve the largest read first: a view of an old,
        smaller buffer still held by a caller would keep it alive beside the new one)."""
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = None
            self._buffer = torch.empty(nbytes, dtype=torch.uint8)

    def read(self, name: str, rows: tuple[int, int] | None = None, *, reuse: bool = False) -> torch.Tensor:
        """The tensor `name` (rows [start, stop) of its leading dimension when given), in its stored dtype.

        `reuse`: read into this reader's one reusable buffer (saves the page faults of a fresh allocation);
        the tensor returned is then only valid until the next `reuse` read."""
        md = self.metadata.state_dict_metadata[name]
        shape = list(md.size)
        start, stop = rows if rows is not None else (0, shape[0] if shape else 0)
        offsets = [0] * len(shape)
        if shape:
            offsets[0] = start
            shape[0] = stop - start
        if reuse:
            nbytes = math.prod(shape) * md.properties.dtype.itemsize
            self.reserve(nbytes)
            out = self._buffer[:nbytes].view(md.properties.dtype).view(shape)
        else:
            out = torch.empty(shape, dtype=md.properties.dtype)
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({name: out}, storage_reader=self._reader, planner=_RegionPlanner(name, md, offsets, out),
                     no_dist=True)
        return out


def check_tensors(reader: TorchDistReader, spec: LlamaSpec, where: str) -> dict[str, tuple[int, ...]]:
    """Every tensor the architecture needs is there with its shape, and nothing unknown is; returns the shapes."""
    stored = reader.tensors()
    expected = spec.expected_shapes()
    ignored = {n for n in stored if n.startswith(IGNORED_PREFIXES)}
    if spec.tied_embeddings and OUTPUT_LAYER in stored:
        ignored.add(OUTPUT_LAYER)  # a copy of the embedding some versions keep on the last stage
    unknown = sorted(set(stored) - set(expected) - ignored)
    if unknown:
        shown = ", ".join(f"{n} {list(stored[n].size)}" for n in unknown[:20])
        more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
        fail(f"{reader.iter_dir}: {len(unknown)} unknown tensor name(s) for a Llama model: {shown}{more}")
    missing = sorted(set(expected) - set(stored))
    if missing:
        hint = (" (the arguments say the embeddings are untied)" if missing == [OUTPUT_LAYER] else "")
        fail(f"{reader.iter_dir}: tensor(s) missing: {', '.join(missing)}{hint}")
    problems = []
    for name, shape in expected.items():
        got = tuple(stored[name].size)
        if got != shape:
            problems.append(f"{name} is {list(got)}, the arguments give {list(shape)}")
    if problems:
        fail(f"{reader.iter_dir}: tensor shapes do not match the saved arguments in {where} "
             f"(layers {spec.num_layers}, hidden {spec.hidden_size}, ffn {spec.ffn_hidden_size}, heads "
             f"{spec.num_attention_heads}, query groups {spec.num_query_groups}, head dim {spec.head_dim}, "
             f"padded vocab {spec.padded_vocab_size}): " + "; ".join(problems))
    return expected


# ---------------------------------------------------------------------------------------------
# The mapping: Megatron tensors -> Hugging Face tensors, in the order they are written
# ---------------------------------------------------------------------------------------------
def _layer_outputs(name: str, spec: LlamaSpec) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name with {i} for the layer, shape) produced from one layer of a stacked Megatron tensor."""
    H, F, d = spec.hidden_size, spec.ffn_hidden_size, spec.head_dim
    n, g = spec.num_attention_heads, spec.num_query_groups
    return {
        QKV: [("model.layers.{i}.self_attn.q_proj.weight", (n * d, H)),
              ("model.layers.{i}.self_attn.k_proj.weight", (g * d, H)),
              ("model.layers.{i}.self_attn.v_proj.weight", (g * d, H))],
        QKV_NORM: [("model.layers.{i}.input_layernorm.weight", (H,))],
        PROJ: [("model.layers.{i}.self_attn.o_proj.weight", (H, n * d))],
        FC1: [("model.layers.{i}.mlp.gate_proj.weight", (F, H)),
              ("model.layers.{i}.mlp.up_proj.weight", (F, H))],
        FC1_NORM: [("model.layers.{i}.post_attention_layernorm.weight", (H,))],
        FC2: [("model.layers.{i}.mlp.down_proj.weight", (H, F))],
    }[name]


def _split_layer(name: str, layer: torch.Tensor, spec: LlamaSpec) -> list[torch.Tensor]:
    """One layer's slice of a stacked Megatron tensor -> its Hugging Face tensors (see _layer_outputs)."""
    if name == QKV:
        per_group = layer.view(spec.num_query_groups, spec.heads_per_group + 2, spec.head_dim, spec.hidden_size)
        q = per_group[:, :spec.heads_per_group].reshape(-1, spec.hidden_size)
        k = per_group[:, spec.heads_per_group].reshape(-1, spec.hidden_size)
        v = per_group[:, spec.heads_per_group + 1].reshape(-1, spec.hidden_size)
        return [q, k, v]
    if name == FC1:
        return [layer[:spec.ffn_hidden_size], layer[spec.ffn_hidden_size:]]
    return [layer]


def hf_plan(spec: LlamaSpec, vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Every Hugging Face tensor (name, shape) in the order the converter produces them."""
    plan = [("model.embed_tokens.weight", (vocab_size, spec.hidden_size))]
    for name in LAYER_TENSORS:
        outputs = _layer_outputs(name, spec)
        for i in range(spec.num_layers):
            plan.extend((hf_name.format(i=i), shape) for hf_name, shape in outputs)
    plan.append(("model.norm.weight", (spec.hidden_size,)))
    if not spec.tied_embeddings:
        plan.append(("lm_head.weight", (vocab_size, spec.hidden_size)))
    return plan


def hf_expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The tensors a LlamaForCausalLM with this config.json has (name -> shape)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    spec = LlamaSpec(num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
                     ffn_hidden_size=config["intermediate_size"], num_attention_heads=heads,
                     num_query_groups=config.get("num_key_value_heads") or heads, head_dim=head_dim,
                     padded_vocab_size=config["vocab_size"], rope_theta=0.0, norm_epsilon=0.0,
                     tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                     max_position_embeddings=config.get("max_position_embeddings", 0))
    return dict(hf_plan(spec, config["vocab_size"]))


def iter_hf_tensors(reader: TorchDistReader, spec: LlamaSpec, vocab_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Hugging Face (name, tensor) pairs in hf_plan order; one stored chunk of one tensor in memory at a time.

    The tensors are views of the reader's reusable buffer: each is valid until the next one is asked for."""
    stored = reader.tensors()
    largest = max(math.prod(stored[EMBEDDING].size[1:]) * vocab_size * stored[EMBEDDING].properties.dtype.itemsize,
                  *(math.prod(stored[name].size[1:]) * (stop - start) * stored[name].properties.dtype.itemsize
                    for name in LAYER_TENSORS for start, stop in reader.row_segments(name)))
    reader.reserve(largest)
    yield "model.embed_tokens.weight", reader.read(EMBEDDING, (0, vocab_size), reuse=True)
    for name in LAYER_TENSORS:
        outputs = _layer_outputs(name, spec)
        for start, stop in reader.row_segments(name):
            stacked = reader.read(name, (start, stop), reuse=True)
            for offset in range(stop - start):
                tensors = _split_layer(name, stacked[offset], spec)
                for (hf_name, _), tensor in zip(outputs, tensors):
                    yield hf_name.format(i=start + offset), tensor
            del stacked
    yield "model.norm.weight", reader.read(FINAL_NORM)
    if not spec.tied_embeddings:
        yield "lm_head.weight", reader.read(OUTPUT_LAYER, (0, vocab_size), reuse=True)


# ---------------------------------------------------------------------------------------------
# config.json, generation_config.json, tokenizer files
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenizerInfo:
    folder: Path | None
    vocab_size: int | None
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None


def read_tokenizer(folder: str | os.PathLike) -> TokenizerInfo:
    """The true vocabulary size and special token ids of a Hugging Face tokenizer folder."""
    folder = Path(folder)
    if not folder.is_dir():
        fail(f"{folder}: tokenizer folder not found")
    try:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many kinds for a folder it cannot read
        fail(f"{folder}: cannot load a Hugging Face tokenizer from it: {exc}")
    return TokenizerInfo(folder, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                         tokenizer.pad_token_id)


def llama_config(spec: LlamaSpec, vocab_size: int, dtype: torch.dtype, tokenizer: TokenizerInfo) -> dict:
    """config.json of the converted model; readable by transformers 4.x (rope_theta) and 5.x (rope_parameters).
    Its architecture (pipeline.llama_arch) is what the soup compares; the check below keeps the two one."""
    dtype_name = CONFIG_DTYPE_NAMES[dtype]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.ffn_hidden_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "mlp_bias": False,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_query_groups,
        "pretraining_tp": 1,
        "rms_norm_eps": spec.norm_epsilon,
        "rope_scaling": None,
        "rope_theta": spec.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "tie_word_embeddings": spec.tied_embeddings,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def generation_config(tokenizer: TokenizerInfo) -> dict:
    config: dict[str, Any] = {"_from_model_config": True, "bos_token_id": tokenizer.bos_token_id,
                              "eos_token_id": tokenizer.eos_token_id}
    if tokenizer.pad_token_id is not None:
        config["pad_token_id"] = tokenizer.pad_token_id
    return config


# ---------------------------------------------------------------------------------------------
# The whole conversion
# ---------------------------------------------------------------------------------------------
@dataclass
class ConversionResult:
    output: Path
    iteration: int | None
    skipped: bool
    tensors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0


def _common_state_source(ckpt: Checkpoint) -> str:
    if common_state_layout(ckpt.iter_dir) == LAYOUT_LEGACY:
        return str(ckpt.iter_dir / COMMON_PT)
    return f"{ckpt.iter_dir} (common_state in the shards)"


def describe(spec: LlamaSpec, vocab_size: int) -> str:
    return (f"layers {spec.num_layers}, hidden {spec.hidden_size}, ffn {spec.ffn_hidden_size}, heads "
            f"{spec.num_attention_heads}, query groups {spec.num_query_groups}, head dim {spec.head_dim}, "
            f"vocab {vocab_size} (padded {spec.padded_vocab_size}), rope base {spec.rope_theta:g}, "
            f"norm eps {spec.norm_epsilon:g}, {'tied' if spec.tied_embeddings else 'untied'} embeddings")


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGTIB")
    unit = stripped[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        fail(f"shard size {text!r}: expected a positive size like 5GB, 500MB or 2GiB")
    return int(value * units[unit])


def convert_checkpoint(load: str | os.PathLike, output: str | os.PathLike, *, iteration: int | None = None,
                       vocab_size: int | None = None, tokenizer: str | os.PathLike | None = None,
                       tokenizer_model: str | os.PathLike | None = None,
                       dtype: str = "bf16", max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, force: bool = False,
                       show_progress: bool = True, log: Callable[[str], None] = print) -> ConversionResult:
    """Convert the Megatron torch_dist checkpoint at `load` into a Hugging Face Llama folder `output`.

    `load` is a checkpoints folder (its tracker, or `iteration`) or one `iter_NNNNNNN` folder. The
    output folder appears complete or not at all (written beside it, then renamed); an existing one
    is left alone unless `force`. A `tokenizer` folder is checked against the SentencePiece model the run
    was trained with (`tokenizer_model`, else the one its train_args.json or Megatron's copy in the
    checkpoint names) before the conversion starts, and the output's before it is renamed into place.
    """
    if dtype not in DTYPES:
        fail(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if vocab_size is not None and tokenizer is not None:
        fail("give either a vocabulary size or a tokenizer folder, not both")
    output = Path(output)
    ckpt = resolve_checkpoint(load, iteration)
    if ckpt.format != "torch_dist":
        fail(f"{ckpt.iter_dir}: a '{ckpt.format}' checkpoint; the native converter reads torch_dist checkpoints "
             f"(the Megatron converter, CONVERTER=megatron, handles the others)")
    check_complete(ckpt)
    state = load_common_state(ckpt.iter_dir)
    where = _common_state_source(ckpt)
    spec = spec_from_args(state.get("args"), where)
    reader = TorchDistReader(ckpt.iter_dir)
    if not spec.padded_vocab_size and EMBEDDING in reader.tensors():
        spec = LlamaSpec(**{**asdict(spec), "padded_vocab_size": int(reader.tensors()[EMBEDDING].size[0])})
    check_tensors(reader, spec, where)
    the_iteration = state.get("iteration", ckpt.iteration)

    sp_model, documents = None, []
    if tokenizer is not None:   # the folder as given first: a wrong one stops before any tensor is read
        run_dir = ckpt.root.parent if ckpt.root is not None else None
        sp_model = training_tokenizer(tokenizer_model, recorded_tokenizers(run_dir, ckpt.iter_dir),
                                      f"the checkpoint {ckpt.iter_dir}")
        documents = run_documents(run_dir) if run_dir is not None else []
        verify_hf_tokenizer(Path(tokenizer), sp_model)
        info = read_tokenizer(tokenizer)
    else:
        info = TokenizerInfo(None, None, DEFAULT_BOS_ID, DEFAULT_EOS_ID, None)
    vocab = vocab_size if vocab_size is not None else info.vocab_size
    if vocab is None:
        fail(f"{ckpt.iter_dir}: the checkpoint only knows the padded vocabulary ({spec.padded_vocab_size}); give "
             f"the true size with --vocab-size N or --tokenizer <HF tokenizer folder> "
             f"(--vocab-size {spec.padded_vocab_size} keeps the padding)")
    if not 0 < vocab <= spec.padded_vocab_size:
        source = f"the tokenizer in {tokenizer}" if tokenizer is not None else "--vocab-size"
        fail(f"{ckpt.iter_dir}: vocabulary size {vocab} from {source} must be between 1 and the padded "
             f"vocabulary {spec.padded_vocab_size} of the checkpoint")

    if output.exists() and not force:
        if not (output / "config.json").is_file():
            fail(f"{output}: exists but holds no config.json; remove it or pass --force")
        log(f"{output}: already converted, skipping (--force converts again)")
        return ConversionResult(output, the_iteration, skipped=True)

    dt = DTYPES[dtype]
    plan = hf_plan(spec, vocab)
    log(f"converting {ckpt.iter_dir} (iteration {the_iteration}): {describe(spec, vocab)} -> {output} ({dtype})")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    writer = ShardedSafetensorsWriter(tmp, plan, dt, max_shard_bytes)
    started = time.monotonic()
    stored = reader.tensors()
    bytes_read = sum(math.prod(stored[n].size) * torch.empty((), dtype=stored[n].properties.dtype).element_size()
                     for n in spec.expected_shapes())
    written = 0
    try:
        with progress(total=writer.total_bytes, desc="convert", unit="B", unit_scale=True,
                      enabled=show_progress) as bar:
            for name, tensor in iter_hf_tensors(reader, spec, vocab):
                count = writer.write(name, tensor)
                written += count
                bar.update(count)
        writer.finish()
        write_json(tmp / "config.json", llama_config(spec, vocab, dt, info))
        write_json(tmp / "generation_config.json", generation_config(info))
        if info.folder is not None:
            for source in tokenizer_files(info.folder):
                shutil.copyfile(source, tmp / source.name)
        verdict = verify_hf_tokenizer(tmp, sp_model, documents) if sp_model is not None else None
        if verdict is not None:
            log(f"{output}: tokenizer: {describe_verdict(verdict)}")
        seconds = time.monotonic() - started
        write_json(tmp / RECORD_FILE, provenance(
            converter="native (scripts/convert_to_hf.py)", source=str(ckpt.iter_dir.resolve()),
            iteration=the_iteration, architecture=asdict(spec), vocab_size=vocab, dtype=dtype,
            tokenizer=str(info.folder) if info.folder else None, tokenizer_check=verdict, shards=len(writer.shards),
            bytes_written=written, seconds=round(seconds, 3)))
        replace_dir(tmp, output)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {output}: {len(plan)} tensors, {len(writer.shards)} shard(s), {written / 1e9:.2f} GB "
        f"in {seconds:.1f}s")
    return ConversionResult(output, the_iteration, skipped=False, tensors=len(plan), bytes_read=bytes_read,
                            bytes_written=written, seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Checking a Hugging Face folder (ours or the Megatron saver's)
# ---------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    folder: Path
    shards: int
    tensors: int
    bytes: int
    vocab_size: int


def check_hf_folder(folder: str | os.PathLike, *, load_config: bool = True,
                    log: Callable[[str], None] = print) -> CheckResult:
    """config.json is a Llama config, every safetensors shard loads, and the tensors are the model's."""
    from safetensors import safe_open

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        fail(f"{config_path}: missing; not a converted model folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        fail(f"{config_path}:{exc.lineno}: invalid JSON: {exc.msg}")
    if config.get("model_type") != "llama":
        fail(f"{config_path}: model_type is {config.get('model_type')!r}, expected 'llama'")
    if load_config:
        try:
            from transformers import AutoConfig
            AutoConfig.from_pretrained(str(folder))
        except Exception as exc:
            fail(f"{config_path}: transformers cannot load it: {exc}")
    try:
        expected = hf_expected_shapes(config)
    except KeyError as exc:
        fail(f"{config_path}: missing key {exc}")
    weight_map, files = weight_files(folder, "model folder")
    seen: dict[str, str] = {}
    total = 0
    for filename in files:
        path = folder / filename
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    tensor = handle.get_tensor(name)
                    if name in seen:
                        fail(f"{path}: {name} is also in {seen[name]}")
                    seen[name] = filename
                    if weight_map is not None and weight_map.get(name) != filename:
                        fail(f"{path}: holds {name}, which {INDEX_FILE} places in {weight_map.get(name)}")
                    want = expected.get(name)
                    if want is not None and tuple(tensor.shape) != want:
                        fail(f"{path}: {name} has shape {list(tensor.shape)}, config.json gives {list(want)}")
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        fail(f"{path}: {name} holds NaN or infinite values")
                    total += tensor.numel() * tensor.element_size()
        except PipelineError:
            raise
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            fail(f"{path}: cannot be loaded: {exc}")
    missing = sorted(set(expected) - set(seen))
    unexpected = sorted(set(seen) - set(expected) - {"lm_head.weight"} if config.get("tie_word_embeddings")
                        else set(seen) - set(expected))
    if missing:
        fail(f"{folder}: tensors missing: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        fail(f"{folder}: tensors a LlamaForCausalLM does not have: {', '.join(unexpected[:10])}")
    if weight_map is not None and set(weight_map) != set(seen):
        fail(f"{folder / INDEX_FILE}: lists tensors the shards do not hold: {sorted(set(weight_map) - set(seen))[:10]}")
    log(f"{folder}: config and {len(files)} shard(s) load; {len(seen)} tensors, {total / 1e9:.2f} GB")
    return CheckResult(folder, len(files), len(seen), total, int(config["vocab_size"]))

