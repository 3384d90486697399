"""Mixtures: a task's `mixture.yaml`, its files by source, and the weights of each size, exact.

A task (`tasks/<TASK>/mixture.yaml`) names its tokenized roots (datasets), maps file prefixes to
sources with globs, and defines named sizes of three kinds:

    ratio:     {source: multiplier}        each file's weight = ceil(tokens x ratio)   (LLM-jp)
    share:     {source: mix %} + total     per-source ratio derived so the mix hits `total`
                                           exactly, split over files by tokens           (OLMo 2)
    union:     [size, other-task:size]     the lists of other sizes, weights summed per file

All arithmetic is exact (fractions: a ratio written 0.0323 means 323/10000), so results do not
depend on float rounding and re-runs give byte-identical lists. `iterations` is the one definition
of the training iterations a number of tokens makes. The token counts the lists start from are
pipeline.counting's (`make count`); the report of a mix is pipeline.mixture_report's.
"""
from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from pipeline.config import Section, load_yaml
from pipeline.datalist import Entry, read_list, render_list
from pipeline.errors import fail
from pipeline.paths import TASKS_DIR

CONFIG_NAME = "mixture.yaml"
ALL_LIST_NAME = "train_data.all.sh"
SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
SIZE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOTAL = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([KMBT]?)\s*$", re.I)


# ---------------------------------------------------------------------------------------------
# The task config
# ---------------------------------------------------------------------------------------------
@dataclass
class Source:
    name: str
    patterns: list[str]
    max_repetitions: Fraction


@dataclass
class Size:
    name: str
    kind: str                                   # ratio | share | union
    ratios: dict[str, Fraction] = field(default_factory=dict)
    default_ratio: Fraction | None = None
    total: int = 0
    shares: dict[str, Fraction] = field(default_factory=dict)
    parts: list[tuple[str | None, str]] = field(default_factory=list)  # (task or None = this task, size)
    compare: str | None = None


@dataclass
class TaskConfig:
    task: str
    path: Path
    datasets: list[str]
    sources: dict[str, Source]
    sizes: dict[str, Size]

    def size(self, name: str) -> Size:
        if name not in self.sizes:
            fail(f"{self.path}: unknown size {name!r} for task {self.task} (known: {', '.join(self.sizes)})")
        return self.sizes[name]


def exact(value: object, where: str, what: str = "value") -> Fraction:
    """A YAML number as an exact fraction (0.0323 -> 323/10000); refuses bools, strings, NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{where}: {what} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{where}: {what} must be finite, got {value!r}")
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def parse_total(value: object, where: str) -> int:
    """A token total: an integer, or a string such as `50B`, `1.5T`, `10K`, `50_000_000_000`."""
    if isinstance(value, bool):
        fail(f"{where}: expected a token total such as 50B, got {value!r}")
    if isinstance(value, int):
        total = Fraction(value)
    elif isinstance(value, str) and (match := _TOTAL.match(value)):
        total = Fraction(match.group(1).replace("_", "")) * SUFFIXES[match.group(2).upper()]
    else:
        fail(f"{where}: expected a token total such as 50B or 50000000000, got {value!r}")
    if total.denominator != 1 or total <= 0:
        fail(f"{where}: the total must be a positive whole number of tokens, got {value!r}")
    return int(total)


def _source_map(section: Section, key: str, sources: dict[str, Source], what: str) -> dict[str, Fraction]:
    values = section.section(key)
    unknown = sorted(set(map(str, values.data)) - set(sources))
    if unknown:
        fail(f"{values.where()}: unknown source(s) {', '.join(unknown)} (sources of this task: "
             f"{', '.join(sources)})")
    result = {}
    for name, value in values.items():
        number = exact(value, values.where(str(name)), what)
        if number < 0:
            fail(f"{values.where(str(name))}: {what} must not be negative, got {value!r}")
        result[str(name)] = number
    return result


def _parse_size(name: str, section: Section, sources: dict[str, Source]) -> Size:
    kinds = [k for k in ("ratio", "share", "union") if k in section.data]
    if len(kinds) != 1:
        fail(f"{section.where()}: a size needs exactly one of ratio, share or union (got "
             f"{', '.join(kinds) or 'none'})")
    kind = kinds[0]
    if kind == "ratio":
        section.check_keys(required={"ratio"}, optional={"default_ratio", "compare"})
        size = Size(name, kind, ratios=_source_map(section, "ratio", sources, "ratio"))
        if "default_ratio" in section.data:
            size.default_ratio = exact(section.data["default_ratio"], section.where("default_ratio"), "ratio")
            if size.default_ratio < 0:
                fail(f"{section.where('default_ratio')}: ratio must not be negative")
        missing = [s for s in sources if s not in size.ratios]
        if missing and size.default_ratio is None:
            fail(f"{section.where('ratio')}: no ratio for source(s) {', '.join(missing)} "
                 f"(give them one, or a default_ratio)")
        size.compare = section.get("compare", str, None)
        return size
    if kind == "share":
        section.check_keys(required={"share", "total"})
        size = Size(name, kind, total=parse_total(section.data["total"], section.where("total")),
                    shares=_source_map(section, "share", sources, "share"))
        missing = [s for s in sources if s not in size.shares]
        if missing:
            fail(f"{section.where('share')}: no share for source(s) {', '.join(missing)} (write 0 to leave one out)")
        if sum(size.shares.values()) <= 0:
            fail(f"{section.where('share')}: the shares add up to 0")
        return size
    section.check_keys(required={"union"})
    parts = section.get("union", list)
    if not parts:
        fail(f"{section.where('union')}: an empty union")
    size = Size(name, kind)
    for part in parts:
        if not isinstance(part, (str, int)) or isinstance(part, bool):
            fail(f"{section.where('union')}: expected size names ('50B' or 'other-task:50B'), got {part!r}")
        task, sep, ref = str(part).rpartition(":")
        size.parts.append((task if sep else None, ref))
    return size


def load_task(task: str, tasks_dir: str | os.PathLike = TASKS_DIR) -> TaskConfig:
    tasks_dir = Path(tasks_dir)
    path = tasks_dir / task / CONFIG_NAME
    if not path.is_file():
        known = sorted(p.parent.name for p in tasks_dir.glob(f"*/{CONFIG_NAME}"))
        fail(f"TASK={task}: {path} not found (known tasks: {', '.join(known) or 'none'})")
    doc = Section(load_yaml(path), path)
    doc.check_keys(required={"datasets", "sources", "sizes"}, optional={"max_repetitions"})
    datasets = doc.get("datasets", list)
    if not datasets or not all(isinstance(d, str) and d and "/" not in d for d in datasets):
        fail(f"{doc.where('datasets')}: expected a list of dataset names, got {datasets!r}")
    default_max = exact(doc.data.get("max_repetitions", 4), doc.where("max_repetitions"), "max_repetitions")
    if default_max <= 0:
        fail(f"{doc.where('max_repetitions')}: must be positive")
    sources: dict[str, Source] = {}
    src_section = doc.section("sources")
    if not src_section.data:
        fail(f"{src_section.where()}: no sources")
    for name, value in src_section.items():
        name = str(name)
        where = src_section.where(name)
        max_rep = default_max
        if isinstance(value, dict):
            sub = src_section.section(name)
            sub.check_keys(required={"files"}, optional={"max_repetitions"})
            value = sub.get("files", list)
            if "max_repetitions" in sub.data:
                max_rep = exact(sub.data["max_repetitions"], sub.where("max_repetitions"), "max_repetitions")
                if max_rep <= 0:
                    fail(f"{sub.where('max_repetitions')}: must be positive")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
            fail(f"{where}: expected a list of file globs (or {{files: [...], max_repetitions: N}}), got {value!r}")
        sources[name] = Source(name, value, max_rep)
    sizes_section = doc.section("sizes")
    if not sizes_section.data:
        fail(f"{sizes_section.where()}: no sizes")
    for name in sizes_section.data:
        if not SIZE_NAME.match(str(name)):
            fail(f"{sizes_section.where(str(name))}: a size name is letters, digits, '.', '_' or '-'")
    sizes = {str(name): _parse_size(str(name), sizes_section.section(name), sources)
             for name in sizes_section.data}
    config = TaskConfig(task, path, datasets, sources, sizes)
    for size in sizes.values():
        if size.compare is not None and (size.compare not in sizes or sizes[size.compare].kind != "share"):
            shares = [n for n, s in sizes.items() if s.kind == "share"]
            fail(f"{sizes_section.where(size.name)}: compare: {size.compare!r} is not a share size of this task "
                 f"(share sizes: {', '.join(shares) or 'none'})")
        for task_ref, ref in size.parts:
            if task_ref is None and ref not in sizes:
                fail(f"{sizes_section.where(size.name)}: union names unknown size {ref!r} (known: {', '.join(sizes)})")
    return config


# ---------------------------------------------------------------------------------------------
# Files and sources
# ---------------------------------------------------------------------------------------------
def classify(config: TaskConfig, relative: dict[str, str]) -> dict[str, str]:
    """{prefix: source} for {prefix: path below its root}; every file one source, every source a file."""
    result: dict[str, str] = {}
    for prefix, rel in relative.items():
        hits = [s.name for s in config.sources.values() if any(fnmatch.fnmatchcase(rel, p) for p in s.patterns)]
        if len(hits) > 1:
            fail(f"{config.path}: {prefix} matches two sources: {' and '.join(hits)}")
        if not hits:
            fail(f"{config.path}: {prefix} matches no source (sources: {', '.join(config.sources)}); "
                 f"add a glob for it")
        result[prefix] = hits[0]
    used = set(result.values())
    for source in config.sources.values():
        if source.name not in used:
            fail(f"{config.path}: source {source.name} ({', '.join(source.patterns)}) matches no file")
    return result


@dataclass
class FileTokens:
    prefix: str            # relative to EXP_DIR, as in the lists
    source: str
    tokens: int
    documents: int = -1
    sequences: int = -1
    dtype: str = ""


def split_prefix(config: TaskConfig, prefix: str) -> tuple[str, str, str]:
    """(dataset, tokenizer name, path below the root) of `<dataset>-<tok>-tokenized/<rel>`."""
    for dataset in sorted(config.datasets, key=len, reverse=True):
        match = re.match(rf"^{re.escape(dataset)}-([^/]+)-tokenized/(.+)$", prefix)
        if match:
            return dataset, match.group(1), match.group(2)
    roots = ", ".join(f"{d}-<tokenizer>-tokenized/" for d in config.datasets)
    fail(f"{config.path}: {prefix} is under none of the task's tokenized roots ({roots})")


def files_from_list(config: TaskConfig, list_path: str | os.PathLike) -> list[FileTokens]:
    """The all-files list of a task, each file with its source; one tokenizer throughout."""
    list_path = Path(list_path)
    if not list_path.is_file():
        fail(f"{list_path}: all-files list of task {config.task} not found (run `make count TASK={config.task}`, "
             f"or name another with ALL_LIST=)")
    entries = read_list(list_path)
    if not entries:
        fail(f"{list_path}: the list is empty")
    relative, tokenizers = {}, {}
    for entry in entries:
        _, tokenizer, rel = split_prefix(config, entry.prefix)
        tokenizers.setdefault(tokenizer, entry.prefix)
        relative[entry.prefix] = rel
    if len(tokenizers) > 1:
        examples = "; ".join(f"{t}: {p}" for t, p in tokenizers.items())
        fail(f"{list_path}: files of more than one tokenizer in one list ({examples})")
    sources = classify(config, relative)
    return [FileTokens(e.prefix, sources[e.prefix], e.weight) for e in entries]


# ---------------------------------------------------------------------------------------------
# mix: weights per file for a size
# ---------------------------------------------------------------------------------------------
@dataclass
class SourceRow:
    task: str
    source: str
    files: int
    available: int                     # tokens in the all-list
    used: int = 0                      # sum of weights
    target_share: Fraction | None = None   # normalised target mix share (0..1), share sizes

    @property
    def repetitions(self) -> Fraction:
        return Fraction(self.used, self.available) if self.available else Fraction(0)


@dataclass
class Mixture:
    task: str
    size: str
    kind: str
    weights: dict[str, int]                        # prefix -> weight (0 kept here, dropped on output)
    rows: dict[tuple[str, str], SourceRow]         # (task, source) -> accounting
    lists: dict[str, Path]                         # task -> all-list used
    parts: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.weights.values())

    def entries(self) -> list[Entry]:
        return [Entry(w, p) for p, w in sorted(self.weights.items()) if w > 0]


def _source_rows(task: str, config: TaskConfig, files: list[FileTokens]) -> dict[tuple[str, str], SourceRow]:
    rows = {(task, s): SourceRow(task, s, 0, 0) for s in config.sources}
    for f in files:
        row = rows[(task, f.source)]
        row.files += 1
        row.available += f.tokens
    return rows


def ratio_weights(files: list[FileTokens], ratios: dict[str, Fraction]) -> dict[str, int]:
    return {f.prefix: math.ceil(f.tokens * ratios[f.source]) for f in files}


def share_weights(files: list[FileTokens], shares: dict[str, Fraction], total: int) -> dict[str, int]:
    """Integer weights hitting `total` exactly: each source gets total x share / sum(shares), split
    over its files in proportion to their tokens, rounded by largest remainder (ties: prefix order)."""
    norm = sum(shares.values())
    by_source: dict[str, int] = {}
    for f in files:
        by_source[f.source] = by_source.get(f.source, 0) + f.tokens
    exact_w = {}
    for f in files:
        available = by_source[f.source]
        exact_w[f.prefix] = ((Fraction(total) * shares[f.source] / norm * f.tokens / available) if available
                             else Fraction(0))
    weights = {p: math.floor(w) for p, w in exact_w.items()}
    short = total - sum(weights.values())
    order = sorted(exact_w, key=lambda p: (-(exact_w[p] - weights[p]), p))
    for prefix in order[:short]:
        weights[prefix] += 1
    return weights


def _check_repetitions(config: TaskConfig, rows: dict[tuple[str, str], SourceRow], size: str,
                       configs: dict[str, TaskConfig]) -> None:
    for (task, source), row in rows.items():
        limit = configs[task].sources[source].max_repetitions
        if row.used and row.available == 0:
            fail(f"{configs[task].path}: size {size}: source {source} has no tokens but is asked for {row.used:,}")
        if row.available and row.repetitions > limit:
            fail(f"{configs[task].path}: size {size}: source {source} would be repeated "
                 f"{float(row.repetitions):.3f} times ({row.used:,} of {row.available:,} tokens), more than its "
                 f"max_repetitions {float(limit):g}")


def all_lists(values: list[str], task: str, out_dir: Path) -> dict[str, Path]:
    """Each task's all-files list from the --all-list values: PATH (this task) or TASK=PATH; this task's
    defaults to <out_dir>/train_data.all.sh."""
    lists: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and "/" not in name:
            lists[name] = Path(path)
        else:
            if task in lists:
                fail(f"--all-list {value}: a second list for task {task}")
            lists[task] = Path(value)
    lists.setdefault(task, out_dir / ALL_LIST_NAME)
    return lists


def resolve(config: TaskConfig, size_name: str, all_lists: dict[str, Path],
            tasks_dir: str | os.PathLike = TASKS_DIR, _stack: tuple[str, ...] = (),
            _configs: dict[str, TaskConfig] | None = None) -> Mixture:
    """The mixture of one size. `all_lists[task]` is the all-files list of each task involved."""
    configs = _configs if _configs is not None else {config.task: config}
    key = f"{config.task}:{size_name}"
    if key in _stack:
        fail(f"{config.path}: size {size_name} includes itself ({' -> '.join(_stack + (key,))})")
    size = config.size(size_name)
    if config.task not in all_lists:
        all_lists[config.task] = Path(tasks_dir) / config.task / ALL_LIST_NAME
    if size.kind == "union":
        mix = Mixture(config.task, size_name, "union", {}, {}, {})
        for task_ref, ref in size.parts:
            task = task_ref or config.task
            if task not in configs:
                configs[task] = load_task(task, tasks_dir)
            part = resolve(configs[task], ref, all_lists, tasks_dir, _stack + (key,), configs)
            mix.parts.append(f"{task}:{ref}" if task != config.task else ref)
            mix.lists.update(part.lists)
            for prefix, weight in part.weights.items():
                mix.weights[prefix] = mix.weights.get(prefix, 0) + weight
            for rkey, row in part.rows.items():
                if rkey in mix.rows:
                    mix.rows[rkey].used += row.used
                else:
                    mix.rows[rkey] = SourceRow(row.task, row.source, row.files, row.available, row.used)
        _check_repetitions(config, mix.rows, size_name, configs)
        return mix
    list_path = Path(all_lists[config.task])
    files = files_from_list(config, list_path)
    rows = _source_rows(config.task, config, files)
    if size.kind == "ratio":
        ratios = {s: size.ratios.get(s, size.default_ratio) for s in config.sources}
        for source, ratio in ratios.items():
            limit = config.sources[source].max_repetitions
            if ratio > limit:
                fail(f"{config.path}: sizes.{size_name}.ratio.{source} = {float(ratio):g} is more than the "
                     f"source's max_repetitions {float(limit):g}")
        weights = ratio_weights(files, ratios)
        if size.compare:
            compare = config.sizes[size.compare]
            norm = sum(compare.shares.values())
            for source, share in compare.shares.items():
                rows[(config.task, source)].target_share = share / norm
    else:
        for source, share in size.shares.items():
            if share and rows[(config.task, source)].available == 0:
                fail(f"{config.path}: size {size_name}: source {source} has a share but no tokens in {list_path}")
        weights = share_weights(files, size.shares, size.total)
        norm = sum(size.shares.values())
        for source, share in size.shares.items():
            rows[(config.task, source)].target_share = share / norm
    for f in files:
        rows[(config.task, f.source)].used += weights[f.prefix]
    _check_repetitions(config, rows, size_name, configs)
    return Mixture(config.task, size_name, size.kind, weights, rows, {config.task: list_path})


# ---------------------------------------------------------------------------------------------
# Iterations and the list
# ---------------------------------------------------------------------------------------------
def iterations(total_tokens: int, seq_length: int, global_batch_size: int) -> int:
    """Training iterations that draw the mixture once: ceil(total / (seq_length x global_batch))."""
    if seq_length <= 0 or global_batch_size <= 0:
        fail(f"seq_length ({seq_length}) and global_batch_size ({global_batch_size}) must be positive")
    return -(-total_tokens // (seq_length * global_batch_size))


def list_iterations(list_path: str | os.PathLike, seq_length: int, global_batch_size: int) -> tuple[int, int]:
    """(total tokens, iterations) of a written mixture list: what the training step uses."""
    total = sum(e.weight for e in read_list(list_path))
    return total, iterations(total, seq_length, global_batch_size)


def render_mix_list(mix: Mixture) -> str:
    return render_list(mix.entries())
