"""Dataset descriptions (tasks/datasets/<name>.yaml): which files a dataset has, how they are grouped.

A description names the hub repository (pinned revision; `gated: true` when its terms must be
accepted on the website), the files that belong to each source (path patterns relative to the raw
tree, which mirrors the hub repository), the files to leave out, how the merged outputs are grouped
and named, and what is known to exist (`expect`: per source, every value a placeholder must take and
a minimum file count; every source needs at least one file), which download and extract check.
Everything is validated on load; unknown keys, bad patterns and bad templates fail naming the file
and the key.

Pattern syntax (used in `files`, `exclude` and INCLUDE):
    *        any characters inside one path component
    **       any characters across components (`a/**/b` also matches `a/b`)
    ?        one character inside a component;  [abc], [0-9], [!x] character classes
    {name}   one whole path component, captured as `name` for the output template

Output templates use the captured names; a source with `group_size: N` and one numeric placeholder
puts the files of N consecutive values into one output and offers `{first}` and `{last}`, the
first and last value present in the group (with no placeholder, N consecutive files in sorted
order form a group, and `{first}`/`{last}` are their positions, 0000, 0001, ...):

    dclm:
      files: data/dclm/{dir}/*
      group_size: 10
      output: dclm/dclm-{first}-{last}.jsonl     # dclm/dclm-0000-0009.jsonl ... dclm-0240-0246.jsonl
"""
from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.config import Section, load_yaml
from pipeline.errors import fail
from pipeline.paths import DATASETS_DIR

REVISION = re.compile(r"^[0-9a-f]{40}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
GROUP_FIELDS = ("first", "last")
# raw file suffix -> how extract reads it
COMPRESSIONS = {".zst": "zstd", ".gz": "gzip"}
TEXT_SUFFIXES = (".jsonl", ".json")


class Pattern:
    """A compiled path pattern (see the module doc); `match` returns the captured names or None."""

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        if not text or text.startswith("/") or "\\" in text:
            fail(f"{where}: pattern {text!r} must be a non-empty relative path with '/' separators")
        self.names: list[str] = []
        self.regex = re.compile(self._translate(text, where) + r"\Z")

    def _translate(self, text: str, where: str) -> str:
        out, i, n = [], 0, len(text)
        while i < n:
            c = text[i]
            if text.startswith("/**/", i):
                out.append("/(?:.*/)?")
                i += 4
            elif text.startswith("**", i):
                out.append(".*")
                i += 2
            elif c == "*":
                out.append("[^/]*")
                i += 1
            elif c == "?":
                out.append("[^/]")
                i += 1
            elif c == "[":
                end = text.find("]", i + 2)
                if end < 0:
                    fail(f"{where}: pattern {text!r}: unclosed '['")
                body = text[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                if "/" in body:
                    fail(f"{where}: pattern {text!r}: a character class cannot hold '/'")
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
            elif c == "{":
                match = PLACEHOLDER.match(text, i)
                if not match:
                    fail(f"{where}: pattern {text!r}: '{{' must start a placeholder like {{name}}")
                name = match.group(1)
                if name in self.names:
                    fail(f"{where}: pattern {text!r}: placeholder {{{name}}} used twice")
                if name in GROUP_FIELDS:
                    fail(f"{where}: pattern {text!r}: {{{name}}} is reserved for group outputs")
                before = text[i - 1] if i else "/"
                after = text[match.end()] if match.end() < n else "/"
                if before != "/" or after != "/":
                    fail(f"{where}: pattern {text!r}: {{{name}}} must be a whole path component")
                self.names.append(name)
                out.append(f"(?P<{name}>[^/]+)")
                i = match.end()
            else:
                out.append(re.escape(c))
                i += 1
        return "".join(out)

    def match(self, path: str) -> dict[str, str] | None:
        found = self.regex.match(path)
        return found.groupdict() if found else None

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def parse_patterns(text: str, where: str) -> list[Pattern]:
    """INCLUDE-style lists: patterns separated by commas or whitespace."""
    return [Pattern(p, where) for p in re.split(r"[\s,]+", text.strip()) if p]


@dataclass
class Source:
    name: str
    patterns: list[Pattern]
    output: str
    exclude: list[Pattern] = field(default_factory=list)
    group_size: int | None = None
    group_key: str | None = None

    def match(self, path: str) -> dict[str, str] | None:
        for pattern in self.patterns:
            captured = pattern.match(path)
            if captured is not None:
                return None if any(p.match(path) is not None for p in self.exclude) else captured
        return None


@dataclass
class ParquetOptions:
    text_column: str = "text"
    keep_columns: list[str] = field(default_factory=list)


@dataclass
class Expectation:
    """What a source is known to hold: at least `min_files` files, and files for every listed value
    of each placeholder (every numbered dclm folder, every math subset)."""
    values: dict[str, list[str]] = field(default_factory=dict)
    min_files: int = 1


@dataclass
class Dataset:
    name: str
    path: Path
    repo_id: str
    revision: str
    repo_type: str
    sources: dict[str, Source]
    exclude: list[Pattern]
    parquet: ParquetOptions
    description: str = ""
    gated: bool = False
    expect: dict[str, Expectation] = field(default_factory=dict)

    @property
    def revision_pinned(self) -> bool:
        return bool(REVISION.match(self.revision))

    def source_of(self, path: str) -> tuple[Source, dict[str, str]] | None:
        """The source a raw file belongs to (None: excluded or described by no source).

        A file matched by two sources is a mistake in the description and fails.
        """
        if any(p.match(path) is not None for p in self.exclude):
            return None
        found = [(s, c) for s in self.sources.values() if (c := s.match(path)) is not None]
        if len(found) > 1:
            fail(f"{self.path}: {path} is matched by sources {', '.join(s.name for s, _ in found)}; "
                 "make their patterns disjoint")
        return found[0] if found else None

    def missing(self, paths) -> list[str]:
        """What the description says the dataset holds but `paths` lack, one line per gap (empty when
        complete): a revision pinned in the middle of an upload, or a raw tree copied in part."""
        captured: dict[str, list[dict[str, str]]] = {name: [] for name in self.sources}
        for path in paths:
            found = self.source_of(path)
            if found is not None:
                captured[found[0].name].append(found[1])
        problems = []
        for name, source in self.sources.items():
            expected = self.expect.get(name, Expectation())
            have = captured[name]
            if len(have) < expected.min_files:
                problems.append(f"{name}: {len(have)} file(s) matching {', '.join(p.text for p in source.patterns)}, "
                                f"at least {expected.min_files} expected")
            for key, values in expected.values.items():
                present = {c[key] for c in have}
                gaps = [v for v in values if v not in present]
                if gaps:
                    problems.append(f"{name}: no files for {{{key}}} = {shorten(gaps)} ({len(gaps)} of {len(values)} "
                                    f"expected values missing)")
        return problems

    def select(self, paths, include: list[Pattern] | None = None) -> list[str]:
        """The described (not excluded) paths, narrowed by INCLUDE patterns; sorted."""
        chosen = []
        for path in paths:
            if include and not any(p.match(path) is not None for p in include):
                continue
            if self.source_of(path) is not None:
                chosen.append(path)
        return sorted(chosen)


def _template_fields(template: str, where: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        fail(f"{where}: bad template {template!r}: {exc}")
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or conversion:
            fail(f"{where}: template {template!r}: {{{name}}} must be a plain placeholder name")
        names.append(name)
        del spec
    return names


def _load_source(name: str, section: Section) -> Source:
    section.check_keys(required={"files", "output"}, optional={"exclude", "group_size"})
    files = section.get("files", (str, list))
    files = [files] if isinstance(files, str) else files
    if not files or not all(isinstance(f, str) for f in files):
        fail(f"{section.where('files')}: expected a pattern or a non-empty list of patterns")
    patterns = [Pattern(f, section.where("files")) for f in files]
    names = set(patterns[0].names)
    for pattern in patterns[1:]:
        if set(pattern.names) != names:
            fail(f"{section.where('files')}: every pattern of a source must capture the same placeholders "
                 f"({pattern.text!r} differs from {patterns[0].text!r})")
    exclude = section.get("exclude", list, [])
    if not all(isinstance(e, str) for e in exclude):
        fail(f"{section.where('exclude')}: expected a list of patterns")
    output = section.get("output", str)
    where_out = section.where("output")
    if not output.endswith(".jsonl") or output.startswith("/") or ".." in PurePosixPath(output).parts:
        fail(f"{where_out}: {output!r} must be a relative path ending in .jsonl")
    fields = _template_fields(output, where_out)
    group_size = section.get("group_size", int, None)
    group_key = None
    allowed = set(names)
    if group_size is not None:
        if group_size < 1:
            fail(f"{section.where('group_size')}: must be >= 1, got {group_size}")
        if len(names) > 1:
            fail(f"{section.where('group_size')}: grouping needs one placeholder in files (the numbered "
                 f"folder) or none (group files by position), found {sorted(names)}")
        group_key = next(iter(names)) if names else None
        allowed = set(GROUP_FIELDS)
        if not set(GROUP_FIELDS) & set(fields):
            fail(f"{where_out}: a grouped output must use {{first}} and/or {{last}} so that groups differ")
    unknown = sorted(set(fields) - allowed)
    if unknown:
        fail(f"{where_out}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} "
             f"(available: {', '.join(sorted(allowed)) or 'none'})")
    return Source(name=name, patterns=patterns, output=output,
                  exclude=[Pattern(e, section.where("exclude")) for e in exclude],
                  group_size=group_size, group_key=group_key)


def shorten(values: list[str], shown: int = 8) -> str:
    """'0201-0246' for a run of consecutive zero-padded numbers, else the first few values."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1].isdigit() and values[j].isdigit() \
                and len(values[j + 1]) == len(values[j]) and int(values[j + 1]) == int(values[j]) + 1:
            j += 1
        parts.append(values[i] if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(parts[:shown]) + (f", ... ({len(parts) - shown} more)" if len(parts) > shown else "")


def _expected_values(text, where: str) -> list[str]:
    """A list of values, or 'FIRST-LAST' for every zero-padded number between (0000-0246)."""
    if isinstance(text, list):
        if not text or not all(isinstance(v, str) and v for v in text):
            fail(f"{where}: expected a non-empty list of quoted strings (YAML reads 0000 as the number 0)")
        return list(text)
    if isinstance(text, str):
        match = re.fullmatch(r"(\d+)-(\d+)", text)
        if match and len(match[1]) == len(match[2]) and int(match[1]) <= int(match[2]):
            return [f"{n:0{len(match[1])}d}" for n in range(int(match[1]), int(match[2]) + 1)]
    fail(f"{where}: expected a list of values or a range like '0000-0246' (equal widths), got {text!r}")


def _load_expect(doc: Section, sources: dict[str, Source]) -> dict[str, Expectation]:
    section = doc.section("expect", {})
    unknown = sorted(set(section.data) - set(sources))
    if unknown:
        fail(f"{section.where()}: {', '.join(map(str, unknown))} is not a source (sources: {', '.join(sources)})")
    expect = {}
    for name in section.data:
        entry = section.section(name)
        placeholders = set(sources[name].patterns[0].names)
        entry.check_keys(optional={"files", *placeholders})
        files = entry.get("files", int, 1)
        if files < 1:
            fail(f"{entry.where('files')}: must be >= 1, got {files}")
        values = {key: _expected_values(entry.data[key], entry.where(key)) for key in entry.data if key != "files"}
        expect[name] = Expectation(values=values, min_files=files)
    return expect


def load_dataset(name_or_path: str | os.PathLike) -> Dataset:
    """Load tasks/datasets/<name>.yaml (or a path to a description file) and validate it."""
    text = str(name_or_path)
    path = Path(text) if (text.endswith((".yaml", ".yml")) or os.sep in text) else DATASETS_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in DATASETS_DIR.glob("*.yaml")) if DATASETS_DIR.is_dir() else []
        fail(f"{path}: no description for dataset {text!r} (known: {', '.join(known) or 'none'})")
    doc = Section(load_yaml(path), path)
    doc.check_keys(required={"name", "hub", "sources"}, optional={"description", "exclude", "parquet", "expect"})
    name = doc.get("name", str)
    if not NAME.match(name):
        fail(f"{doc.where('name')}: {name!r} is not a valid dataset name (letters, digits, _.-)")
    if name != path.stem:
        fail(f"{doc.where('name')}: {name!r} must match the file name {path.stem!r}")
    hub = doc.section("hub")
    hub.check_keys(required={"repo_id", "revision"}, optional={"repo_type", "gated"})
    repo_id = hub.get("repo_id", str)
    if not REPO_ID.match(repo_id):
        fail(f"{hub.where('repo_id')}: {repo_id!r} is not an owner/name repository id")
    revision = hub.get("revision", str)
    if not revision.strip():
        fail(f"{hub.where('revision')}: must not be empty")
    repo_type = hub.get("repo_type", str, "dataset")
    if repo_type not in ("dataset", "model"):
        fail(f"{hub.where('repo_type')}: must be dataset or model, got {repo_type!r}")
    exclude = doc.get("exclude", list, [])
    if not all(isinstance(e, str) for e in exclude):
        fail(f"{doc.where('exclude')}: expected a list of patterns")
    parquet_doc = doc.section("parquet", {})
    parquet_doc.check_keys(optional={"text_column", "keep_columns"})
    keep = parquet_doc.get("keep_columns", list, [])
    if not all(isinstance(k, str) for k in keep):
        fail(f"{parquet_doc.where('keep_columns')}: expected a list of column names")
    parquet = ParquetOptions(text_column=parquet_doc.get("text_column", str, "text"), keep_columns=keep)
    sources_doc = doc.section("sources")
    if not sources_doc.data:
        fail(f"{doc.where('sources')}: at least one source is needed")
    sources = {}
    for source_name in sources_doc.data:
        if not isinstance(source_name, str) or not NAME.match(source_name):
            fail(f"{doc.where('sources')}: {source_name!r} is not a valid source name")
        sources[source_name] = _load_source(source_name, sources_doc.section(source_name))
    return Dataset(name=name, path=path, repo_id=repo_id, revision=revision, repo_type=repo_type,
                   sources=sources, exclude=[Pattern(e, doc.where("exclude")) for e in exclude],
                   parquet=parquet, description=doc.get("description", str, ""),
                   gated=hub.get("gated", bool, False), expect=_load_expect(doc, sources))


# ---------------------------------------------------------------------------------------------
# Raw tree -> extracted tree -> merged groups
# ---------------------------------------------------------------------------------------------

def raw_kind(path: str) -> tuple[str | None, str]:
    """(compression or None, format) of a raw file from its name; format is 'jsonl' or 'parquet'."""
    suffix = PurePosixPath(path).suffix
    compression = COMPRESSIONS.get(suffix)
    inner = path[: -len(suffix)] if compression else path
    if inner.endswith(".parquet") and compression is None:
        return None, "parquet"
    if inner.endswith(TEXT_SUFFIXES):
        return compression, "jsonl"
    fail(f"{path}: unknown file type (expected .jsonl/.json, optionally .gz or .zst, or .parquet)")


def extracted_name(path: str) -> str:
    """Name of a raw file in the extracted tree: compression suffix dropped, .json/.parquet -> .jsonl.

    data/dclm/0000/dclm-0000.json.zst -> data/dclm/0000/dclm-0000.jsonl;
    data/math/gsm8k/main/train/0.jsonl.zst -> .../0.jsonl; train-00001.parquet -> train-00001.jsonl.
    """
    compression, _ = raw_kind(path)
    inner = path[: -len(PurePosixPath(path).suffix)] if compression else path
    for suffix in (".parquet", ".jsonl", ".json"):
        if inner.endswith(suffix):
            return inner[: -len(suffix)] + ".jsonl"
    raise AssertionError(path)


def scan_tree(root: Path) -> list[str]:
    """Relative paths (with '/') of the files below `root`, hidden files and folders skipped, sorted.

    Symlinked folders are followed (the usual way to keep part of the data on another disk). A link
    back to a folder already read (a loop, or the same data under two names), a link to nothing and
    anything that is neither file nor folder fail naming the path: files are never silently left out
    or read twice.
    """
    found: list[str] = []
    seen: dict[tuple[int, int], str] = {}

    def walk(folder: Path, rel: str) -> None:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            fail(f"{folder}: a symbolic link to {os.path.realpath(folder)}, which this tree already holds as "
                 f"{root / seen[info.st_dev, info.st_ino]} (a loop, or the same files twice); remove the link")
        seen[info.st_dev, info.st_ino] = rel or "."
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        for entry in ordered:
            if entry.name.startswith("."):
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir():          # follows symbolic links
                walk(Path(entry.path), path)
            elif entry.is_file():
                found.append(path)
            elif entry.is_symlink():
                fail(f"{entry.path}: a symbolic link to {os.readlink(entry.path)}, which does not exist")
            else:
                fail(f"{entry.path}: neither a file nor a folder")

    walk(root, "")
    return sorted(found)


def check_extracted_names(paths: list[str], where: Path) -> dict[str, str]:
    """raw path -> extracted path; two raw files that would extract to one name fail."""
    mapping: dict[str, str] = {}
    seen: dict[str, str] = {}
    for path in paths:
        out = extracted_name(path)
        if out in seen:
            fail(f"{where}: {seen[out]} and {path} would both extract to {out}")
        seen[out] = path
        mapping[path] = out
    return mapping


@dataclass
class Group:
    output: str                     # relative to the merged folder
    source: str
    inputs: list[str] = field(default_factory=list)   # raw paths, sorted


def group_files(dataset: Dataset, raw_paths: list[str]) -> list[Group]:
    """Merge groups of the described raw paths, in output order; inputs sorted inside each group."""
    groups: dict[str, Group] = {}
    buckets: dict[tuple[str, int], list[tuple[str, str]]] = {}
    positions: dict[str, int] = {}
    for path in sorted(raw_paths):
        found = dataset.source_of(path)
        if found is None:
            continue
        source, captured = found
        if source.group_size is None:
            output = source.output.format(**captured)
            groups.setdefault(output, Group(output, source.name)).inputs.append(path)
            continue
        if source.group_key is None:   # by position among the source's files, numbered from 0000
            position = positions.setdefault(source.name, 0)
            positions[source.name] = position + 1
            buckets.setdefault((source.name, position // source.group_size), []).append((f"{position:04d}", path))
            continue
        value = captured[source.group_key]
        if not value.isdigit():
            fail(f"{dataset.path}: sources.{source.name}: {path}: {{{source.group_key}}} = {value!r} is not a "
                 f"number, so it cannot be grouped by {source.group_size}")
        buckets.setdefault((source.name, int(value) // source.group_size), []).append((value, path))
    for (source_name, _), members in buckets.items():
        source = dataset.sources[source_name]
        values = sorted({v for v, _ in members}, key=lambda v: (int(v), v))
        output = source.output.format(first=values[0], last=values[-1])
        group = groups.setdefault(output, Group(output, source_name))
        if group.source != source_name:
            fail(f"{dataset.path}: sources {group.source} and {source_name} both write {output}")
        group.inputs.extend(p for _, p in members)
    for group in groups.values():
        if len({dataset.source_of(p)[0].name for p in group.inputs}) > 1:
            fail(f"{dataset.path}: several sources write {group.output}")
        group.inputs.sort()
    return [groups[k] for k in sorted(groups)]
