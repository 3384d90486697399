"""Evaluation suites (eval/<name>.yaml): which harness tasks a suite runs, with what few-shot count and
limit, which hub dataset (and revision) each reads, and the harness's task registry they are checked against.

A suite file:

    description: one line, shown by make eval-report
    device: gpu            # gpu: refused where no GPU can run it (a 7.7B model on generation tasks);
                           # any: fp32 on a CPU works too (tiny models, perplexity)
    include: [tasks]       # optional: folders of extra task YAMLs, relative to the suite file
    tasks:
      - task: gsm8k_cot    # a name of lm-evaluation-harness's registry (or of an include folder)
        num_fewshot: 8     # null: the task's own default
        limit: 200         # optional: the first N documents only
        metrics: ["exact_match,flexible-extract"]   # optional: results keys shown (default: the first)
        dataset: {repo: openai/gsm8k, revision: null, gated: false}
        note: free text (how it differs from the paper)

`dataset` is a hub dataset (staged by make eval-data), `EVAL_TEXT` (the JSONL file given as EVAL_TEXT=,
read by the project's local_ppl task) or `local` (the task reads local files named in its own YAML).
A `revision` of 40 hex digits pins the commit; null takes the hub's main at staging time, whose commit
make eval-data records (the harness's task configs pin none, and the harness always reads the main
revision, so a pin is checked at staging rather than passed on: see pipeline/eval_data.py).
Unknown keys, bad values and task names the installed harness does not know fail naming the file and key.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.atomic import read_json, write_json
from pipeline.config import Section, load_yaml
from pipeline.errors import fail
from pipeline.paths import EVAL_SUITES_DIR, EVAL_TASKS_DIR

DEVICES = ("gpu", "any")
EVAL_TEXT = "EVAL_TEXT"        # dataset: the local JSONL given as EVAL_TEXT=
LOCAL = "local"                # dataset: files the task's own YAML names
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
REVISION = re.compile(r"^[0-9a-f]{40}$")
SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")   # a harness name, passed on its command line


@dataclass(frozen=True)
class HubDataset:
    repo: str
    revision: str | None = None     # 40-hex commit, or None: main at staging time
    gated: bool = False


@dataclass(frozen=True)
class SuiteTask:
    task: str
    num_fewshot: int | None
    limit: int | None
    metrics: tuple[str, ...]
    dataset: HubDataset | str      # HubDataset, EVAL_TEXT or LOCAL
    note: str = ""

    @property
    def hub(self) -> HubDataset | None:
        return self.dataset if isinstance(self.dataset, HubDataset) else None


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    device: str
    include: tuple[Path, ...]
    tasks: tuple[SuiteTask, ...] = field(default_factory=tuple)

    @property
    def reads_text(self) -> bool:
        return any(t.dataset == EVAL_TEXT for t in self.tasks)

    @property
    def include_dirs(self) -> list[Path]:
        """Where the harness looks for task YAMLs besides its own: the project's tasks, then the suite's."""
        return [EVAL_TASKS_DIR, *self.include]

    def fingerprint(self) -> str:
        """What the suite asks of the harness, independent of comments and layout of the file."""
        tasks = [{**asdict(t), "dataset": asdict(t.dataset) if t.hub else t.dataset} for t in self.tasks]
        include = sorted(_tree_digest(p) for p in self.include_dirs)
        text = json.dumps({"tasks": tasks, "include": include}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "fingerprint": self.fingerprint()}


def _tree_digest(folder: Path) -> str:
    """The task YAMLs and helpers of an include folder, by content (they define what the tasks do)."""
    digest = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def suite_path(value: str) -> Path:
    """EVAL_SUITE: a name of eval/<name>.yaml, or a path to a suite file."""
    value = value.strip()
    if not value:
        known = ", ".join(sorted(p.stem for p in EVAL_SUITES_DIR.glob("*.yaml")))
        fail(f"EVAL_SUITE is not set: name a suite ({known}) or give a suite file's path")
    if value.endswith((".yaml", ".yml")) or os.sep in value:
        return Path(value).absolute()
    path = EVAL_SUITES_DIR / f"{value}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in EVAL_SUITES_DIR.glob("*.yaml")))
        fail(f"EVAL_SUITE={value!r}: no suite {path} (suites: {known}; or give a suite file's path)")
    return path


def _positive(section: Section, key: str, minimum: int) -> int | None:
    value = section.get(key, (int, type(None)), None)
    if value is not None and value < minimum:
        fail(f"{section.where(key)}: must be >= {minimum}, got {value}")
    return value


def _dataset(task: Section) -> HubDataset | str:
    value = task.data.get("dataset")
    if value in (EVAL_TEXT, LOCAL):
        return value
    if not isinstance(value, dict):
        fail(f"{task.where('dataset')}: expected {{repo: <org/name>, revision: <40-hex commit or null>}}, "
             f"{EVAL_TEXT} or {LOCAL}, got {value!r}")
    hub = task.section("dataset")
    hub.check_keys(required={"repo"}, optional={"revision", "gated"})
    repo = hub.get("repo", str)
    if not REPO_ID.match(repo):
        fail(f"{hub.where('repo')}: {repo!r} is not a hub dataset id like org/name")
    revision = hub.get("revision", (str, type(None)), None)
    if revision is not None and not REVISION.match(revision):
        fail(f"{hub.where('revision')}: {revision!r} is not a 40-hex commit (null takes main at staging time)")
    return HubDataset(repo, revision, hub.get("gated", bool, False))


def load_suite(value: str) -> Suite:
    """The suite EVAL_SUITE names, validated (task names are checked against the harness separately)."""
    path = suite_path(value)
    name = path.stem
    if not SUITE_NAME.match(name):
        fail(f"{path}: the file name must be a suite name of letters, digits and _.+- (it names result folders)")
    doc = Section(load_yaml(path), path)
    doc.check_keys(required={"tasks"}, optional={"description", "device", "include"})
    device = doc.get("device", str, "gpu")
    if device not in DEVICES:
        fail(f"{doc.where('device')}: {device!r}: expected one of {', '.join(DEVICES)}")
    include = []
    for index, folder in enumerate(doc.get("include", list, [])):
        where = f"{doc.where('include')}[{index}]"
        if not isinstance(folder, str) or not folder.strip():
            fail(f"{where}: expected a folder name, got {folder!r}")
        resolved = (path.parent / folder).resolve()
        if not resolved.is_dir():
            fail(f"{where}: {resolved} is not a folder")
        include.append(resolved)
    entries = doc.get("tasks", list)
    if not entries:
        fail(f"{doc.where('tasks')}: list at least one task")
    tasks, seen = [], set()
    for index, item in enumerate(entries):
        task = Section(item, path, f"tasks[{index}]")
        task.check_keys(required={"task", "dataset"}, optional={"num_fewshot", "limit", "metrics", "note"})
        name_ = task.get("task", str)
        if not TASK_NAME.match(name_):
            fail(f"{task.where('task')}: {name_!r} is not a harness task name")
        if name_ in seen:
            fail(f"{task.where('task')}: {name_} is listed twice")
        seen.add(name_)
        metrics = task.get("metrics", list, [])
        if not all(isinstance(m, str) and m.strip() for m in metrics):
            fail(f"{task.where('metrics')}: expected results keys like \"acc,none\", got {metrics!r}")
        tasks.append(SuiteTask(name_, _positive(task, "num_fewshot", 0), _positive(task, "limit", 1),
                               tuple(metrics), _dataset(task), task.get("note", str, "")))
    return Suite(name, path, doc.get("description", str, ""), device, tuple(include), tuple(tasks))


# ---------------------------------------------------------------------------------------------
# The harness's task registry
# ---------------------------------------------------------------------------------------------
def harness_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        fail("lm-eval (lm-evaluation-harness) is not installed in the pipeline's Python: run make setup")


def _default_task_names(cache_dir: Path) -> set[str]:
    """Every name of the installed harness's own registry. Indexing its ~15,000 YAML files takes seconds,
    so the names are kept per harness version and install under cache_dir."""
    import lm_eval
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    key = hashlib.sha256(f"{tasks_dir}:{tasks_dir.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    cache = cache_dir / f"lm_eval-{harness_version()}-tasks-{key}.json"
    cached = read_json(cache, bad="none")
    if cached and isinstance(cached.get("names"), list):
        return set(cached["names"])
    from lm_eval.tasks import TaskManager
    names = sorted(TaskManager().all_tasks)
    write_json(cache, {"harness": harness_version(), "tasks_dir": str(tasks_dir), "names": names})
    return set(names)


def include_task_names(suite: Suite) -> set[str]:
    """The names the suite's include folders (and the project's eval/tasks/) define."""
    from lm_eval.tasks import TaskManager
    return set(TaskManager(include_defaults=False, include_path=[str(p) for p in suite.include_dirs]).all_tasks)


def check_task_names(suite: Suite, cache_dir: Path) -> None:
    """Fail on the first task name that neither the harness nor an include folder defines, with the closest ones.
    The harness's own registry is read only when a name is not an include folder's."""
    names = include_task_names(suite)
    if all(task.task in names for task in suite.tasks):
        return
    names |= _default_task_names(cache_dir)
    for index, task in enumerate(suite.tasks):
        if task.task not in names:
            close = difflib.get_close_matches(task.task, sorted(names), n=5, cutoff=0.6)
            hint = f"closest: {', '.join(close)}" if close else "no similar name; `lm-eval ls tasks` lists them"
            fail(f"{suite.path}: tasks[{index}].task: {task.task!r} is not a task of lm-eval {harness_version()} "
                 f"({hint})")
