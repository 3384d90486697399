"""Staging a suite's datasets (make eval-data, where the network is) for the eval jobs, which run offline.

The harness reads a task's data with datasets.load_dataset(path, name) at the hub's main revision; offline
(HF_DATASETS_OFFLINE=1) datasets answers the same call from its own cache, "the latest cached version".
So staging is the harness building the suite's tasks once with the network on, both caches under
EXP_DIR/eval/data/ (hub/: the downloaded files, datasets/: what load_dataset prepared), and the eval jobs
set those caches and the hub offline: every job reads exactly what was staged, at the commit recorded in
EXP_DIR/eval/data/staged.json (per task: repo, commit, configs, cache folders).

A suite's `revision` (40-hex) cannot be passed to the harness (its task configs carry none), so it is a
guard: staging refuses when the hub's main is no longer that commit, and make eval refuses data staged at
another commit. With `revision: null` the commit main had at staging time is recorded. A gated dataset is
refused the way make download refuses a gated repository: where to accept its terms, which token is used.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import read_json, write_json
from pipeline.errors import fail
from pipeline.eval_suite import Suite, SuiteTask, check_task_names, include_task_names
from pipeline.hub import DEFAULT_ENDPOINT, endpoint_of, gated_steps
from pipeline.paths import EVAL_SUITES_DIR, eval_data_dir
from pipeline.provenance import now_iso

RECORD = "staged.json"
COMMIT_IN_PATH = re.compile(r"/([0-9a-f]{40})/")


@dataclass(frozen=True)
class HubRef:
    """What pipeline.hub's gated message needs to know of a repository."""
    repo_id: str
    repo_type: str = "dataset"


def cache_env(exp: Path, offline: bool) -> dict[str, str]:
    """The environment under which the harness finds (offline) or stages (online) a suite's data."""
    data = eval_data_dir(exp)
    env = {"HF_HUB_CACHE": str(data / "hub"), "HF_DATASETS_CACHE": str(data / "datasets")}
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    return env


def staged(exp: Path) -> dict:
    return (read_json(eval_data_dir(exp) / RECORD, bad="fail") or {}).get("tasks", {})


def stage_command(suite: Suite) -> str:
    value = suite.name if suite.path.parent == EVAL_SUITES_DIR else str(suite.path)
    return f"make eval-data EVAL_SUITE={value}"


def staging_problems(exp: Path, suite: Suite) -> list[str]:
    """One line per hub task of the suite whose data an offline job would not find, naming the staging command."""
    record = staged(exp)
    problems = []
    for task in suite.tasks:
        hub = task.hub
        if hub is None:
            continue
        entry = record.get(task.task)
        wanted = f"{hub.repo}" + (f"@{hub.revision[:12]}" if hub.revision else "")
        why = ""
        if entry is None:
            why = "not staged"
        elif entry.get("repo") != hub.repo:
            why = f"staged from {entry.get('repo')}, not {hub.repo}"
        elif hub.revision and entry.get("commit") != hub.revision:
            why = f"staged at commit {str(entry.get('commit'))[:12]}, the suite pins {hub.revision[:12]}"
        elif missing := [d for d in entry.get("cache_dirs", []) if not Path(d).is_dir()]:
            why = f"its staged copy is gone ({missing[0]})"
        if why:
            problems.append(f"task {task.task} reads dataset {wanted}: {why} under {eval_data_dir(exp)}; run "
                            f"`{stage_command(suite)}` where the network is")
    return problems


def _commit_of(dataset_dict) -> tuple[str | None, list[str]]:
    """(the commit datasets cached the data at, the cache folders) from a loaded DatasetDict's arrow files."""
    commits, folders = set(), set()
    for split in dataset_dict.values():
        for cache_file in getattr(split, "cache_files", []) or []:
            name = cache_file.get("filename", "")
            if match := COMMIT_IN_PATH.search(name):
                commits.add(match[1])
            folders.add(str(Path(name).parent))
    return (commits.pop() if len(commits) == 1 else None), sorted(folders)


def _is_gated(exc: BaseException, task: SuiteTask) -> bool:
    from huggingface_hub.errors import GatedRepoError
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).lower()
        if isinstance(seen, GatedRepoError) or "gated" in text or (task.hub.gated and ("401" in text or "403" in text)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hub_failure(task: SuiteTask, exc: BaseException, what: str, endpoint: str) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    message = f"task {task.task}: {what} {task.hub.repo} at {endpoint} failed: {type(exc).__name__}: {first}"
    if _is_gated(exc, task):
        message += f". {gated_steps(HubRef(task.hub.repo))}"
    return message


def resolve_main(task: SuiteTask, endpoint: str) -> str:
    from huggingface_hub import HfApi
    try:
        return HfApi(endpoint=endpoint).repo_info(task.hub.repo, repo_type="dataset", revision="main").sha
    except Exception as exc:  # noqa: BLE001  (any client or HTTP failure is reported the same way)
        fail(_hub_failure(task, exc, "asking the hub for", endpoint))


def stage(exp: Path, suite: Suite, endpoint: str | None = None) -> dict:
    """Stage every hub dataset of the suite; returns the staging record's entries of its tasks."""
    endpoint = endpoint_of(endpoint)
    # before datasets and huggingface_hub are imported: they read these when imported
    os.environ.update(cache_env(exp, offline=False))
    if endpoint != DEFAULT_ENDPOINT:
        os.environ["HF_ENDPOINT"] = endpoint
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.pop(variable, None)
    check_task_names(suite, exp / ".cache")
    hub_tasks = [t for t in suite.tasks if t.hub is not None]
    if not hub_tasks:
        print(f"eval-data: suite {suite.name} reads no hub dataset: nothing to stage")
        return {}
    from lm_eval.tasks import TaskManager
    # the harness's own ~15,000 task files are indexed only when a task is not an include folder's
    own = include_task_names(suite)
    manager = TaskManager(include_defaults=not all(t.task in own for t in hub_tasks),
                          include_path=[str(p) for p in suite.include_dirs])
    entries = {}
    for task in hub_tasks:
        main = resolve_main(task, endpoint)
        if task.hub.revision and main != task.hub.revision:
            fail(f"{suite.path}: task {task.task} pins {task.hub.repo} at {task.hub.revision}, but the hub's main is "
                 f"now {main}: the harness reads main, so the pinned data cannot be staged; check the change and "
                 "pin the new commit (or revision: null)")
        print(f"eval-data: {task.task}: {task.hub.repo}@{main[:12]} ...", flush=True)
        try:
            built = manager.load([task.task])["tasks"]
        except Exception as exc:  # noqa: BLE001  (the harness's and datasets' errors, reported in one line)
            fail(_hub_failure(task, exc, "the harness loading", endpoint))
        configs, folders, commits = set(), set(), set()
        for leaf in built.values():
            path = getattr(leaf.config, "dataset_path", None)
            if path != task.hub.repo:
                fail(f"{suite.path}: task {task.task}: the suite says it reads {task.hub.repo}, but the harness's "
                     f"task {leaf.config.task} reads {path}; correct the suite's dataset.repo")
            configs.add(str(getattr(leaf.config, "dataset_name", None)))
            commit, dirs = _commit_of(leaf.dataset)
            commits.add(commit)
            folders.update(dirs)
        commit = commits.pop() if len(commits) == 1 else None
        if commit != main:
            fail(f"task {task.task}: {task.hub.repo} was cached at {sorted(map(str, commits))}, not at main's "
                 f"{main} (the hub changed while staging?); run {stage_command(suite)} again")
        entries[task.task] = {"repo": task.hub.repo, "requested_revision": task.hub.revision or "main",
                              "commit": commit, "configs": sorted(configs), "leaf_tasks": len(built),
                              "cache_dirs": sorted(folders), "endpoint": endpoint, "staged_at": now_iso()}
        print(f"eval-data: {task.task}: {len(built)} task(s), configs {', '.join(sorted(configs))}: staged",
              flush=True)
    record_path = eval_data_dir(exp) / RECORD
    record = read_json(record_path, bad="fail") or {}
    record.setdefault("tasks", {}).update(entries)
    write_json(record_path, record)
    print(f"eval-data: {len(entries)} task(s) of suite {suite.name} staged under {eval_data_dir(exp)} "
          f"(record {record_path})", file=sys.stderr)
    return entries
