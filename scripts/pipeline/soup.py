"""Model soups with mergekit: configs from the seed runs, checks before any work, verified output.

The recipe's last step averages the midtraining runs of one model (OLMo 2 7B: 3 x 50B; 13B:
3 x 100B + 1 x 300B). This module

- finds each ingredient, a converted Hugging Face checkpoint
  `<run_dir>/checkpoints_hf/iter_NNNNNNN/`, from TASK/PARAM/SIZE/SEED (`SIZE:SEED[@ITER]` per item);
- renders the mergekit config (`linear`, weight 1.0 each, absolute paths, a comment block);
- checks a config before any work: absolute paths only, every ingredient present, one architecture
  and the same tensor shapes throughout, the same tokenizer files, which encode as the runs' training
  tokenizer (pipeline.tokenizer_check), a method mergekit knows;
- runs mergekit (lazy loading, sharded safetensors) and verifies the result: config and tokenizer
  match the ingredients (its tokenizer checked again as a user loads it), and for `linear` every tensor
  equals the weighted mean of the ingredients (bit-exact for float32 output, within the rounding of the
  output dtype otherwise).

Only safetensors headers are read for the checks (no tensor data, no torch import), and the tokenizer
check encodes a few dozen texts, so they are cheap enough to run before a job is submitted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.atomic import write_json, write_text
from pipeline.errors import fail
from pipeline.hf_folder import INDEX_FILE, TensorInfo, read_safetensors_header, weight_files
from pipeline.llama_arch import architecture_differences
from pipeline.progress import progress
from pipeline.provenance import provenance, sha256_file
from pipeline.tokenizer_check import converted_run_dir, models_training_tokenizer, run_documents, verify_hf_tokenizer

CHECKPOINTS_HF = "checkpoints_hf"
ITER_DIR = re.compile(r"^iter_(\d{7})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")
SIZE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SEED = re.compile(r"^\d+$")
DTYPES = ("bfloat16", "float16", "float32")
VERIFY_MODES = ("full", "sample")
PROVENANCE_FILE = "soup.json"
CONFIG_COPY = "mergekit_config.yml"
# Tokenizer files mergekit 0.1.5 copies byte for byte from the donor model (the base model, else an
# ingredient) when it has tokenizer_config.json and tokenizer.json or tokenizer.model; otherwise it
# loads the tokenizer and saves it again (then the files are new, only their presence is checked).
COPIED_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                          "added_tokens.json", "merges.txt", "chat_template.jinja", "chat_template.json")
# compared between ingredients (they must agree, whichever one mergekit takes the tokenizer from)
TOKENIZER_FILES = COPIED_TOKENIZER_FILES + ("vocab.json",)
LAYER = re.compile(r"\.layers\.(\d+)\.")


# ---------------------------------------------------------------------------------------------
# Ingredients from run directories
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IngredientSpec:
    size: str
    seed: str
    iteration: int | None = None

    def label(self) -> str:
        text = f"{self.size}:{self.seed}"
        return text if self.iteration is None else f"{text}@{self.iteration}"


def parse_iteration(text: str, where: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not re.fullmatch(r"\d+", text) or len(text.lstrip("0")) > 7:
        fail(f"{where}: {text!r} is not a checkpoint iteration (a whole number of at most 7 digits)")
    return int(text)


def parse_ingredients(seeds: str, default_size: str, iteration: int | None = None) -> list[IngredientSpec]:
    """SEEDS items `SEED`, `SIZE:SEED` or either with `@ITER`; SIZE defaults to `default_size`."""
    specs = []
    for item in seeds.split():
        body, at, iter_text = item.partition("@")
        size, colon, seed = body.rpartition(":")
        size = size if colon else default_size
        if not SEED.match(seed) or not SIZE.match(size or "") or ":" in size:
            fail(f"SEEDS item {item!r}: expected SEED, SIZE:SEED, or either with @ITER (like 42, 100B:2662, "
                 "300B:2662@12345)")
        spec = IngredientSpec(size, seed, parse_iteration(iter_text, f"SEEDS item {item!r}") if at else iteration)
        if spec in specs:
            fail(f"SEEDS: {item!r} is listed twice")
        specs.append(spec)
    if not specs:
        fail("SEEDS is empty: name the seed runs to average, e.g. SEEDS=\"42 666 42069\"")
    return specs


def iter_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def hf_checkpoints(run: Path) -> dict[int, Path]:
    """Converted checkpoints of a run: iteration -> folder (only folders with a config.json)."""
    folder = run / CHECKPOINTS_HF
    found = {}
    if folder.is_dir():
        for child in folder.iterdir():
            match = ITER_DIR.match(child.name)
            if match and (child / "config.json").is_file():
                found[int(match[1])] = child
    return found


def resolve_checkpoint(run: Path, iteration: int | None, allow_pending: bool = False) -> Path:
    """The converted checkpoint of `run` at `iteration`, or its latest one when None."""
    if allow_pending:
        if iteration is None:
            fail(f"{run}: the runs are still pending (DEPEND is set), so ITER= (or SEED@ITER) must name the "
                 "iteration to average; the latest one cannot be known yet")
        return run / CHECKPOINTS_HF / iter_dir_name(iteration)
    found = hf_checkpoints(run)
    if iteration is None:
        if not found:
            fail(f"{run / CHECKPOINTS_HF}: no converted checkpoint (iter_NNNNNNN/ with config.json); "
                 "run `make convert` for this run first")
        return found[max(found)]
    if iteration not in found:
        have = ", ".join(str(i) for i in sorted(found)) or "none"
        fail(f"{run / CHECKPOINTS_HF / iter_dir_name(iteration)}: converted checkpoint not found "
             f"(iterations present: {have})")
    return found[iteration]


def default_name(task: str, param: str, specs: list[IngredientSpec]) -> str:
    """TASK_PARAM_SIZES, sizes sorted and joined by '+' (the Makefile computes the same default)."""
    return f"{task}_{param}_{'+'.join(sorted({s.size for s in specs}))}"


def check_name(name: str) -> str:
    if not NAME.match(name):
        fail(f"SOUP_NAME={name!r}: use letters, digits and _.+- (it names merge/<SOUP_NAME>.yaml, "
             f"soups/<SOUP_NAME>/ "
             "and the PBS job)")
    return name


def _yaml_scalar(text: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./+@=-]+", text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def render_config(*, task: str, param: str, specs: list[IngredientSpec], paths: list[Path], output: Path,
                  dtype: str = "bfloat16") -> str:
    """The mergekit config of a plain soup, laid out like the earlier hand-written ones."""
    if dtype not in DTYPES:
        fail(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    sizes = " + ".join(f"{sum(1 for s in specs if s.size == size)} x {size}"
                       for size in dict.fromkeys(s.size for s in specs))
    lines = [
        "# Model soup written by `make soup-config` (scripts/soup_config.py); run it with",
        "#   make soup SOUP_CONFIG=<this file>",
        "# Other mergekit methods (model_stock, task_arithmetic, ties, ...) pass through when edited in.",
        "",
        "# Merge base configuration:",
        f"#   task: {task}",
        f"#   model: {param}",
        f"#   train data: {sizes}",
        f"#   seeds: {' '.join(s.seed for s in specs)}",
        "#   ingredients:",
    ]
    for spec, path in zip(specs, paths):
        lines.append(f"#     {spec.size} seed {spec.seed}: {path.name}")
    lines += ["", "# Output path:", f"# {output}", "", "", "merge_method: linear", "models:"]
    for path in paths:
        lines += [f"  - model: {_yaml_scalar(str(path))}", "    parameters:", "      weight: 1.0"]
    lines.append(f"dtype: {dtype}")
    return "\n".join(lines) + "\n"


def write_config(path: Path, text: str) -> bool:
    """Write the config atomically; False when the same text is already there; fail if it differs."""
    if path.is_file():
        if path.read_text(encoding="utf-8") == text:
            return False
        fail(f"{path}: exists with different contents (edited by hand, or other checkpoints); remove it "
             "or choose another SOUP_NAME=")
    write_text(path, text)
    return True


def write_soup_config(exp: Path, *, task: str, param: str, size: str, seeds: str, iteration: int | None, name: str,
                      config_dir: Path, dtype: str, allow_pending: bool) -> tuple[Path, list[Path]]:
    """make soup-config: <config_dir>/<name>.yaml averaging the runs SEEDS names; (config, ingredient paths).

    The ingredients are checked now (present, one architecture, same shapes and tokenizer) unless
    allow_pending says jobs this soup depends on are still producing them."""
    from pipeline.paths import run_dir, soup_dir
    specs = parse_ingredients(seeds, size, iteration)
    name = check_name(name or default_name(task, param, specs))
    paths = [resolve_checkpoint(run_dir(exp, task, param, s.size, s.seed), s.iteration, allow_pending=allow_pending)
             for s in specs]
    if not allow_pending:
        check_compatible([load_checkpoint(p) for p in paths])
    text = render_config(task=task, param=param, specs=specs, paths=paths, output=soup_dir(exp, name), dtype=dtype)
    target = config_dir.resolve() / f"{name}.yaml"
    written = write_config(target, text)
    print(f"soup-config: {target} {'written' if written else 'up to date'} "
          f"({len(paths)} ingredients: {', '.join(s.label() for s in specs)})")
    return target, paths


# ---------------------------------------------------------------------------------------------
# Checkpoints: config.json and safetensors headers, no tensor data
# ---------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    weight_files: dict[str, int] = field(default_factory=dict)  # file name -> size

    def fingerprint(self) -> dict:
        return {"path": str(self.path), "config_sha256": sha256_file(self.path / "config.json"),
                "weight_files": self.weight_files}


def load_checkpoint(path: Path, role: str = "ingredient") -> Checkpoint:
    """config.json and the tensor table of a Hugging Face checkpoint folder; fails naming the path."""
    if not path.is_dir():
        fail(f"{path}: {role} not found")
    config_file = path / "config.json"
    if not config_file.is_file():
        fail(f"{path}: {role} has no config.json (not a converted Hugging Face checkpoint)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        fail(f"{config_file}: invalid JSON: {exc}")
    weight_map, files = weight_files(path, role)
    tensors: dict[str, TensorInfo] = {}
    sizes = {}
    for name in files:
        file = path / name
        sizes[name] = file.stat().st_size
        for tensor, info in read_safetensors_header(file).items():
            if weight_map is None or weight_map.get(tensor) == name:
                tensors[tensor] = info
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            fail(f"{path / INDEX_FILE}: tensor {missing[0]} is not in {weight_map[missing[0]]}")
    return Checkpoint(path, config, tensors, sizes)


def tokenizer_digests(path: Path) -> dict[str, str]:
    return {name: sha256_file(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}


def check_compatible(checkpoints: list[Checkpoint]) -> None:
    """One architecture, the same tensor names and shapes, the same tokenizer: else name the odd one."""
    first = checkpoints[0]
    first_tok = tokenizer_digests(first.path)
    for other in checkpoints[1:]:
        diffs = architecture_differences(first.config, other.config)
        if diffs:
            fail(f"{other.path}: architecture differs from {first.path} in config.json ({'; '.join(diffs[:4])})")
        missing = sorted(set(first.tensors) - set(other.tensors))
        extra = sorted(set(other.tensors) - set(first.tensors))
        if missing or extra:
            what = f"lacks {missing[0]}" if missing else f"has an extra tensor {extra[0]}"
            fail(f"{other.path}: tensors differ from {first.path}: it {what}")
        for name, info in first.tensors.items():
            if other.tensors[name].shape != info.shape:
                fail(f"{other.path}: tensor {name} has shape {list(other.tensors[name].shape)}, "
                     f"{first.path} has {list(info.shape)}")
        tok = tokenizer_digests(other.path)
        if tok != first_tok:
            names = sorted(n for n in set(tok) | set(first_tok) if tok.get(n) != first_tok.get(n))
            fail(f"{other.path}: tokenizer files differ from {first.path} ({', '.join(names)})")


# ---------------------------------------------------------------------------------------------
# A mergekit config, checked before any work
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    key: str      # model or base_model
    text: str     # as written
    path: Path
    line: int


@dataclass
class MergePlan:
    config: Path
    text: str
    data: dict
    refs: list[ModelRef]

    @property
    def method(self) -> str:
        return str(self.data.get("merge_method"))

    def model_paths(self) -> list[Path]:
        """Every referenced checkpoint once, in order of appearance."""
        return list(dict.fromkeys(ref.path for ref in self.refs))

    def donor(self) -> Path:
        """Where mergekit takes config.json and the tokenizer from: the base model, else an ingredient."""
        base = [r.path for r in self.refs if r.key == "base_model"]
        return base[0] if base else self.refs[0].path

    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _model_refs(node: yaml.Node, config: Path) -> Iterator[ModelRef]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name in ("model", "base_model") and isinstance(value, yaml.ScalarNode):
                yield _model_ref(name, value.value, value.start_mark.line + 1, config)
            elif name in ("model", "base_model") and isinstance(value, yaml.MappingNode):
                inner = {k.value: v for k, v in value.value if isinstance(k, yaml.ScalarNode)}
                path_node = inner.get("path") or inner.get("model")
                if isinstance(path_node, yaml.MappingNode):  # {model: {path: ...}, lora: ...}
                    path_node = {k.value: v for k, v in path_node.value}.get("path")
                if not isinstance(path_node, yaml.ScalarNode):
                    fail(f"{config}:{value.start_mark.line + 1}: {name}: expected a path")
                yield _model_ref(name, path_node.value, path_node.start_mark.line + 1, config)
            else:
                yield from _model_refs(value, config)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _model_refs(item, config)


def _model_ref(key: str, text: str, line: int, config: Path) -> ModelRef:
    path_text = text.split("+", 1)[0]
    if "+" in text:
        fail(f"{config}:{line}: {key}: {text!r}: LoRA adapters (PATH+LORA) are not supported in soups")
    if "@" in path_text and not os.path.exists(path_text):
        fail(f"{config}:{line}: {key}: {text!r}: a revision (@REV) means a hub model; soups take local "
             "checkpoints only")
    if not os.path.isabs(path_text):
        fail(f"{config}:{line}: {key}: {text!r} is a relative path; mergekit would look it up on the "
             "Hugging Face hub. Write the absolute path (make soup-config resolves them)")
    return ModelRef(key, text, Path(os.path.normpath(path_text)), line)


def load_merge_config(config: Path) -> MergePlan:
    """Parse and check a mergekit config without mergekit: mapping, paths absolute, a method."""
    if not config.is_file():
        fail(f"{config}: merge config not found (write one with `make soup-config`, or give SOUP_CONFIG=)")
    text = config.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{config}:{mark.line + 1}" if mark is not None else str(config)
        fail(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}")
    if not isinstance(data, dict):
        fail(f"{config}: a mergekit config must be a mapping (merge_method, models, dtype, ...)")
    if not isinstance(data.get("merge_method"), str):
        fail(f"{config}: merge_method: missing (linear, model_stock, task_arithmetic, ties, ...)")
    refs = list(_model_refs(node, config))
    if not refs:
        fail(f"{config}: no models: list the ingredients under models: (each with model: /absolute/path)")
    for key in ("dtype", "out_dtype"):
        if key in data and data[key] not in DTYPES:
            fail(f"{config}: {key}: {data[key]!r} (expected one of {', '.join(DTYPES)})")
    return MergePlan(config, text, data, refs)


def check_with_mergekit(plan: MergePlan) -> None:
    """mergekit's own validation, and what the method needs (a base model, enough inputs)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge_methods import BasePolicy, get

    try:
        MergeConfiguration.model_validate(plan.data)
    except Exception as exc:  # pydantic's ValidationError, or RuntimeError from mergekit's validators
        fail(f"{plan.config}: not a valid mergekit config: {exc}")
    try:
        method = get(plan.method)
    except Exception as exc:
        fail(f"{plan.config}: merge_method: {exc}")
    spec = getattr(method, "spec", None)
    contract = getattr(spec, "contract", None)
    has_base = any(r.key == "base_model" for r in plan.refs)
    if contract is not None:
        if contract.base == BasePolicy.REQUIRED and not has_base:
            fail(f"{plan.config}: merge_method {plan.method} needs a base_model: (for example the start "
                 "checkpoint of the midtraining runs)")
        if contract.base == BasePolicy.FORBIDDEN and has_base:
            fail(f"{plan.config}: merge_method {plan.method} takes no base_model")
        count = len(plan.model_paths())
        if count < contract.min_inputs:
            fail(f"{plan.config}: merge_method {plan.method} needs at least {contract.min_inputs} models "
                 f"(the base included), the config names {count}")


def check_plan(plan: MergePlan, with_mergekit: bool = True, tokenizer_model: str | None = None) -> list[Checkpoint]:
    """Everything that can fail before the merge: every ingredient, their compatibility, their tokenizer
    against the runs' training tokenizer (TOKENIZER_MODEL or what the runs record), the config (mergekit's own
    validation last: importing it takes seconds)."""
    checkpoints = []
    for path in plan.model_paths():
        ref = next(r for r in plan.refs if r.path == path)
        if not path.exists():
            fail(f"{path}: ingredient not found ({plan.config}:{ref.line})")
        checkpoints.append(load_checkpoint(path))
    check_compatible(checkpoints)
    model, documents = training_tokenizer_of(checkpoints, tokenizer_model)
    for checkpoint in checkpoints:
        verify_hf_tokenizer(checkpoint.path, model, documents)
    if with_mergekit:
        check_with_mergekit(plan)
    return checkpoints


def training_tokenizer_of(checkpoints: list[Checkpoint], tokenizer_model: str | None) -> tuple[Path, list[str]]:
    """(the SentencePiece model the ingredients were trained with, documents of their first run's data)."""
    model = models_training_tokenizer([c.path for c in checkpoints], tokenizer_model)
    run = converted_run_dir(checkpoints[0].path)
    return model, run_documents(run) if run is not None else []


# ---------------------------------------------------------------------------------------------
# Running mergekit
# ---------------------------------------------------------------------------------------------
def parse_shard_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMbB]?)", text.strip())
    if not match or int(match[1]) == 0:
        fail(f"SHARD_SIZE={text!r}: expected a number of parameters per shard like 5B, 500M, 100K")
    return int(match[1]) * {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}[match[2].lower()]


def run_mergekit(plan: MergePlan, out: Path, *, cuda: bool = False, shard_size: int = 5 * 10**9) -> None:
    """mergekit's Python API: lazy loading, sharded safetensors, the donor's tokenizer copied."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = MergeConfiguration.model_validate(plan.data)
    # The model card is left out: mergekit lists the models in set order, so it is not reproducible.
    options = MergeOptions(lazy_unpickle=True, cuda=cuda, out_shard_size=shard_size, copy_tokenizer=True,
                           write_model_card=False, safe_serialization=True,
                           quiet=not os.isatty(2))
    try:
        run_merge(config, str(out), options, config_source=plan.text)
    except Exception as exc:
        traceback.print_exc()
        fail(f"{plan.config}: mergekit failed: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# Verification of a merged model
# ---------------------------------------------------------------------------------------------
@dataclass
class LinearRecipe:
    """What `linear` computes: sum(w_i * x_i) (/ sum(w_i) when normalized), per tensor."""
    weights: list[float]
    normalize: bool


def linear_recipe(plan: MergePlan) -> tuple[LinearRecipe | None, str]:
    """The weights of a plain linear soup, or None and why the values cannot be recomputed."""
    data = plan.data
    if plan.method != "linear":
        return None, f"merge_method {plan.method}: values are mergekit's to define; structure checked"
    if "models" not in data or any(k in data for k in ("slices", "modules")):
        return None, "slices/modules config: structure checked"
    if any(r.key == "base_model" for r in plan.refs):
        return None, "linear with a base_model: structure checked"
    shared = data.get("parameters") or {}
    normalize = shared.get("normalize", True)
    weights = []
    for entry in data["models"]:
        params = entry.get("parameters") or {}
        if "normalize" in params:
            return None, "per-model normalize: structure checked"
        weight = params.get("weight", shared.get("weight"))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return None, "weights that vary by tensor or layer: structure checked"
        weights.append(float(weight))
    if not isinstance(normalize, bool):
        return None, "normalize that varies by tensor: structure checked"
    if normalize and sum(weights) == 0:
        fail(f"{plan.config}: the weights sum to 0; a normalized linear merge divides by their sum")
    return LinearRecipe(weights, normalize), ""


def sample_names(names: list[str]) -> list[str]:
    """SOUP_VERIFY=sample: the non-layer tensors plus every tensor of the first, middle and last layer."""
    layers = sorted({int(m[1]) for n in names if (m := LAYER.search(n))})
    keep = {layers[0], layers[len(layers) // 2], layers[-1]} if layers else set()
    return [n for n in names if not (m := LAYER.search(n)) or int(m[1]) in keep]


class _Reader:
    """Tensors of a checkpoint by name, shards opened (memory-mapped) once."""

    def __init__(self, ckpt: Checkpoint, stack: contextlib.ExitStack) -> None:
        from safetensors import safe_open
        self.ckpt, self.stack, self.safe_open, self.handles = ckpt, stack, safe_open, {}

    def get(self, name: str):
        file = self.ckpt.tensors[name].file
        if file not in self.handles:
            self.handles[file] = self.stack.enter_context(self.safe_open(str(self.ckpt.path / file), "pt"))
        return self.handles[file].get_tensor(name)


def _expected_exact(inputs, recipe: LinearRecipe, merge_dtype, out_dtype):
    """mergekit's linear arithmetic, step for step: inputs cast to the merge dtype, float32 sums in
    config order, division by the weight sum, cast back; bit-identical when done the same way."""
    import torch

    acc_dtype = torch.float64 if merge_dtype == torch.float64 else torch.float32
    weights = torch.tensor(recipe.weights, dtype=acc_dtype)
    result = torch.zeros(inputs[0].shape, dtype=acc_dtype)
    for tensor, weight in zip(inputs, weights.unbind(0)):
        result.addcmul_(tensor.to(merge_dtype), weight)
    if recipe.normalize:
        result.div_(weights.sum())
    return result.to(merge_dtype).to(out_dtype)


def _rounding_check(out, inputs, recipe: LinearRecipe, merge_dtype, out_dtype):
    """|out - exact mean| within what rounding to the merge and output dtypes allows; returns
    (ok, max abs error, bound there); the exact mean is taken in float64 (float32 next to 16-bit
    output). NaN or infinity anywhere fails."""
    import torch

    weights = recipe.weights
    total = sum(weights) if recipe.normalize else 1.0
    # float32 is exact enough next to 16-bit rounding (2^-24 against 2^-8 or 2^-11) and much faster
    wide = torch.float64 if out_dtype in (torch.float32, torch.float64) else torch.float32
    exact = magnitude = None
    for tensor, weight in zip(inputs, weights):
        t = tensor.to(wide, copy=True)
        if exact is None:
            exact = t.mul(weight / total)
            magnitude = t.abs_().mul_(abs(weight / total))
        else:
            exact.add_(t, alpha=weight / total)
            magnitude.add_(t.abs_(), alpha=abs(weight / total))

    def unit(dtype) -> float:  # unit roundoff of round-to-nearest
        return torch.finfo(dtype).eps / 2

    u_in = unit(merge_dtype) if merge_dtype != torch.float64 else 0.0
    u_out = max(unit(merge_dtype), unit(out_dtype))
    n = len(inputs) + 2
    pre = magnitude.mul_(u_in + n * 2.0 ** -23)        # inputs rounded, float32 accumulation
    bound = exact.abs().add_(pre).mul_(2 * u_out + u_out ** 2).add_(pre).add_(torch.finfo(out_dtype).tiny)
    error = out.to(wide, copy=True).sub_(exact).abs_()
    within = torch.le(error, bound)                    # False where error is NaN
    if bool(within.all()):
        where = int(torch.argmax(error))
        return True, float(error.view(-1)[where]), float(bound.view(-1)[where])
    where = int(torch.argmax(torch.nan_to_num(error - bound, nan=float("inf"))))
    return False, float(error.view(-1)[where]), float(bound.view(-1)[where])


def verify_soup(out: Path, plan: MergePlan, ingredients: list[Checkpoint], mode: str = "full",
                quiet: bool = False) -> dict:
    """Check a merged model against its ingredients; returns a summary, fails naming what is wrong."""
    import torch

    if mode not in VERIFY_MODES:
        fail(f"SOUP_VERIFY={mode!r}: expected one of {', '.join(VERIFY_MODES)}")
    merged = load_checkpoint(out, role="merged model")
    by_path = {c.path: c for c in ingredients}
    donor = by_path[plan.donor()]
    summary: dict[str, Any] = {"mode": mode, "method": plan.method}

    # config.json: the ingredients' architecture, the requested dtype
    diffs = architecture_differences(donor.config, merged.config)
    if diffs:
        fail(f"{out / 'config.json'}: differs from the ingredients' architecture ({'; '.join(diffs[:4])})")
    merge_dtype_name = plan.data.get("dtype")
    out_dtype_name = plan.data.get("out_dtype") or merge_dtype_name
    if out_dtype_name:
        written = merged.config.get("dtype", merged.config.get("torch_dtype"))
        if written != out_dtype_name:
            fail(f"{out / 'config.json'}: dtype {written!r}, the config asks for {out_dtype_name}")

    # tokenizer: the donor's files, byte for byte (mergekit only logs a failed copy)
    want = {k: v for k, v in tokenizer_digests(donor.path).items() if k in COPIED_TOKENIZER_FILES}
    have = tokenizer_digests(out)
    copied = "tokenizer_config.json" in want and ("tokenizer.json" in want or "tokenizer.model" in want)
    if copied:
        for name, digest in want.items():
            if name not in have:
                fail(f"{out / name}: tokenizer file missing from the merged model (present in {donor.path})")
            if have[name] != digest:
                fail(f"{out / name}: differs from {donor.path / name}")
    elif "tokenizer_config.json" not in have or not {"tokenizer.json", "tokenizer.model"} & set(have):
        fail(f"{out}: the merged model has no usable tokenizer (tokenizer_config.json with tokenizer.json or "
             f"tokenizer.model); {donor.path} has {', '.join(sorted(want)) or 'none'}")
    summary["tokenizer_files"] = sorted(have)

    # tensor names and shapes
    missing = sorted(set(donor.tensors) - set(merged.tensors))
    extra = sorted(set(merged.tensors) - set(donor.tensors))
    if missing or extra:
        fail(f"{out}: merged tensors differ from the ingredients: "
             + (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"))
    for name, info in donor.tensors.items():
        if merged.tensors[name].shape != info.shape:
            fail(f"{out / merged.tensors[name].file}: tensor {name} has shape {list(merged.tensors[name].shape)}, "
                 f"the ingredients {list(info.shape)}")
        if out_dtype_name and merged.tensors[name].dtype != out_dtype_name and info.dtype.startswith(("float", "bfloat")):
            fail(f"{out / merged.tensors[name].file}: tensor {name} is {merged.tensors[name].dtype}, "
                 f"the config asks for {out_dtype_name}")

    names = sorted(donor.tensors)
    chosen = sample_names(names) if mode == "sample" else names
    recipe, why = linear_recipe(plan)
    model_order = [r.path for r in plan.refs if r.key == "model"]
    summary.update({"tensors": len(names), "tensors_checked": len(chosen), "shards": len(merged.weight_files)})
    exact_checked = bounded_checked = 0
    worst = (0.0, 0.0, "")
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        out_reader = _Reader(merged, stack)
        readers = {c.path: _Reader(c, stack) for c in ingredients}
        with progress(total=len(chosen), desc="verify", unit="tensor", enabled=not quiet) as bar:
            for name in chosen:
                value = out_reader.get(name)
                where = f"{out / merged.tensors[name].file}: tensor {name}"
                if recipe is None and value.is_floating_point() and not bool(torch.isfinite(value.float()).all()):
                    fail(f"{where}: has NaN or infinite values")
                if recipe is not None and value.is_floating_point():
                    inputs = [readers[p].get(name) for p in model_order]
                    merge_dtype = getattr(torch, merge_dtype_name) if merge_dtype_name else inputs[0].dtype
                    out_dtype = value.dtype
                    if out_dtype == torch.float32:
                        expected = _expected_exact(inputs, recipe, merge_dtype, out_dtype)
                        if not torch.equal(value, expected):
                            diff = float((value.double() - expected.double()).abs().max())
                            fail(f"{where}: differs from the weighted mean of the ingredients by up to {diff:g} "
                                 "(float32 output must match exactly)")
                        exact_checked += 1
                    ok, error, bound = _rounding_check(value, inputs, recipe, merge_dtype, out_dtype)
                    if not ok and not math.isfinite(error):
                        fail(f"{where}: has NaN or infinite values (or the ingredients have)")
                    if not ok:
                        fail(f"{where}: differs from the weighted mean of the ingredients by {error:g} where "
                             f"{str(out_dtype).removeprefix('torch.')} rounding allows {bound:g}")
                    if error > worst[0]:
                        worst = (error, bound, name)
                    bounded_checked += 1
                bar.update(1)
    summary.update({
        "values": ("weighted mean" if recipe else f"not recomputed ({why})"),
        "weights": recipe.weights if recipe else None,
        "exact_float32_tensors": exact_checked,
        "rounding_checked_tensors": bounded_checked,
        "max_abs_error": worst[0], "max_abs_error_tensor": worst[2],
        "seconds": round(time.monotonic() - start, 3),
    })
    return summary


# ---------------------------------------------------------------------------------------------
# The whole step: check, merge into a temporary folder, verify, rename into place
# ---------------------------------------------------------------------------------------------
def ingredient_record(checkpoints: list[Checkpoint]) -> list[dict]:
    return [c.fingerprint() for c in checkpoints]


def soup_is_current(out: Path, plan: MergePlan, checkpoints: list[Checkpoint]) -> bool:
    """True when `out` holds a finished soup of this very config and these ingredients."""
    record_file = out / PROVENANCE_FILE
    if not out.exists():
        return False
    if not record_file.is_file():
        fail(f"{out}: exists but has no {PROVENANCE_FILE} (not made by `make soup`); move it away")
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        fail(f"{record_file}: invalid JSON: {exc}")
    if record.get("config_sha256") == plan.sha256() and record.get("ingredients") == ingredient_record(checkpoints):
        return True
    fail(f"{out}: a soup from a different config or different ingredient checkpoints is already there "
         f"(see {record_file}); remove it to merge again, or use another config name")


def make_soup(plan: MergePlan, out: Path, *, verify: str = "full", cuda: bool = False,
              shard_size: int = 5 * 10**9, quiet: bool = False, tokenizer_model: str | None = None) -> dict | None:
    """Merge and verify into `out`; None when it is already there and current."""
    checkpoints = check_plan(plan, with_mergekit=False, tokenizer_model=tokenizer_model)
    if soup_is_current(out, plan, checkpoints):
        return None
    check_with_mergekit(plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp.*"):
        if stale.is_dir():
            shutil.rmtree(stale)
    tmp = out.parent / f".{out.name}.tmp.{os.getpid()}"
    started = time.monotonic()
    print(f"soup: merging {len(checkpoints)} models with mergekit ({plan.method}) into {out}", flush=True)
    run_mergekit(plan, tmp, cuda=cuda, shard_size=shard_size)
    merge_s = time.monotonic() - started
    print(f"soup: merged in {merge_s:.1f}s; verifying ({verify})", flush=True)
    try:
        summary = verify_soup(tmp, plan, checkpoints, verify, quiet=quiet)
        tokenizer_check = verify_hf_tokenizer(tmp, *training_tokenizer_of(checkpoints, tokenizer_model))
    except BaseException:
        print(f"soup: the unverified merge is left in {tmp} for inspection (removed by the next run)")
        raise
    write_text(tmp / CONFIG_COPY, plan.text)
    import mergekit
    record = provenance(
        config=str(plan.config), config_sha256=plan.sha256(), name=out.name, output=str(out),
        method=plan.method, dtype=plan.data.get("dtype"), ingredients=ingredient_record(checkpoints),
        mergekit_version=getattr(mergekit, "__version__", None) or _dist_version("mergekit"),
        options={"cuda": cuda, "out_shard_size": shard_size, "lazy_unpickle": True, "copy_tokenizer": True},
        merge_seconds=round(merge_s, 3), verification=summary, tokenizer_check=tokenizer_check)
    write_json(tmp / PROVENANCE_FILE, record)
    os.rename(tmp, out)
    return record


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None
