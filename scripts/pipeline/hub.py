"""The download step: list a dataset on the hub, fetch the described files, check them, record them.

Fetching is huggingface_hub.snapshot_download itself (local_dir mode: complete files are skipped
on a re-run using its metadata in <raw>/.cache/huggingface/, partial files live under temporary
names and never appear under their final name). Afterwards every selected file is checked
against the hub listing: its size always, its hash (LFS sha256, or the git blob sha1 for small
files) with VERIFY_HASHES=1. A manifest and the stage sentinel are written only when all files pass.
Before anything is fetched, the listing is checked against what the description's `expect` says
exists (a revision pinned mid-upload lists less); compare_revisions reports what the newest revision
has and the pinned one lacks. A gated repository's refusal says how to get access.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.config import load_yaml
from pipeline.datasets import REVISION, Dataset, Pattern, parse_patterns, scan_tree
from pipeline.errors import fail
from pipeline.paths import raw_dir, state_dir
from pipeline.progress import progress
from pipeline.provenance import provenance, sha256_file
from pipeline.units import human

DEFAULT_ENDPOINT = "https://huggingface.co"
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str            # git object id (sha1 of "blob <size>\0" + content)
    sha256: str | None      # LFS files: sha256 of the content


def endpoint_of(value: str | None = None) -> str:
    return (value or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def glob_escape(path: str) -> str:
    """An fnmatch pattern matching exactly `path` (snapshot_download's allow_patterns are fnmatch)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def gated_steps(dataset: Dataset) -> str:
    """What to do about a gated repository (its terms are accepted on the website, per account)."""
    kind = "datasets/" if dataset.repo_type == "dataset" else ""
    return (f"{dataset.repo_id} is gated: open {DEFAULT_ENDPOINT}/{kind}{dataset.repo_id} logged in with the account "
            "whose token the download uses, accept its terms, make sure that token is the one in use (`hf auth "
            "login`, or HF_TOKEN in the environment), then re-run")


def _hub_error(dataset: Dataset, endpoint: str, exc: Exception, revision: str | None = None) -> str:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    message = (f"{dataset.path}: hub request for {dataset.repo_id}@{revision or dataset.revision} at {endpoint} "
               f"failed: {type(exc).__name__}: {text}")
    status = getattr(getattr(exc, "response", None), "status_code", None) if isinstance(exc, HfHubHTTPError) else None
    if isinstance(exc, GatedRepoError) or (dataset.gated and status in (401, 403)):
        message += f". {gated_steps(dataset)}"
    return message


def list_remote(dataset: Dataset, endpoint: str, revision: str | None = None) -> tuple[str, dict[str, RemoteFile]]:
    """(commit sha, files) of the dataset's repository at `revision` (default: the pinned one)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint)
    revision = revision or dataset.revision
    try:
        sha = revision
        if not REVISION.match(revision):
            sha = api.repo_info(dataset.repo_id, repo_type=dataset.repo_type, revision=revision).sha
        files = {}
        for entry in api.list_repo_tree(dataset.repo_id, repo_type=dataset.repo_type, revision=sha, recursive=True):
            if isinstance(entry, RepoFile):
                files[entry.path] = RemoteFile(entry.path, entry.size, entry.blob_id,
                                               entry.lfs.sha256 if entry.lfs is not None else None)
    except Exception as exc:  # noqa: BLE001  (any client or HTTP failure is reported the same way)
        fail(_hub_error(dataset, endpoint, exc, revision))
    return sha, files


def git_blob_sha1(path: Path, size: int) -> str:
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def check_files(raw: Path, files: list[RemoteFile], hashes: bool) -> list[str]:
    """Problems found comparing the local files with the hub listing (empty when all match)."""
    problems = []
    total = sum(f.size for f in files) if hashes else len(files)
    with progress(total=total, desc="verify" + (" (hashing)" if hashes else ""), unit="B" if hashes else "file",
                  unit_scale=hashes) as bar:
        for remote in files:
            local = raw / remote.path
            if not local.is_file():
                problems.append(f"{local}: missing (the hub lists {remote.size} bytes)")
            elif (size := local.stat().st_size) != remote.size:
                problems.append(f"{local}: size mismatch: {size} bytes here, {remote.size} on the hub")
            elif hashes:
                if remote.sha256:
                    actual, expected, kind = sha256_file(local), remote.sha256, "sha256"
                else:
                    actual, expected, kind = git_blob_sha1(local, remote.size), remote.blob_id, "git blob sha1"
                if actual != expected:
                    problems.append(f"{local}: {kind} mismatch: {actual} here, {expected} on the hub")
            bar.update(remote.size if hashes else 1)
    return problems


def forget_download(raw: Path, path: str) -> None:
    """Drop huggingface_hub's record of a file, so that the next run fetches it again."""
    metadata = raw / ".cache" / "huggingface" / "download" / f"{path}.metadata"
    metadata.unlink(missing_ok=True)


def _sentinel_still_valid(sentinel: Path, manifest: Path, raw: Path, wanted: dict, hashes: bool,
                          allow_partial: bool) -> bool:
    if not (sentinel.is_file() and manifest.is_file()):
        return False
    done = load_yaml(sentinel)
    if not isinstance(done, dict) or any(done.get(k) != v for k, v in wanted.items()):
        return False
    if (hashes and not done.get("verified_hashes")) or (done.get("missing") and not allow_partial):
        return False
    for entry in load_yaml(manifest).get("files", []):
        local = raw / entry["path"]
        if not local.is_file() or local.stat().st_size != entry["size"]:
            return False
    return True


def incomplete(dataset: Dataset, where: str, problems: list[str], allow_partial: bool) -> None:
    """Refuse (or, with allow_partial, warn about) a listing or tree that lacks what `expect` says exists."""
    shown = "\n  ".join(problems)
    if allow_partial:
        print(f"warning: {where} lacks part of {dataset.name} (ALLOW_PARTIAL=1, going on):\n  {shown}",
              file=sys.stderr)
        return
    fail(f"{where} lacks part of {dataset.name} (its description {dataset.path}, `expect`, says more exists):\n  "
         f"{shown}\nA revision pinned while the upload was still going on lists less: `make check-revision "
         f"DATASET={dataset.name}` compares it with the newest one. ALLOW_PARTIAL=1 goes on with what is there.")


def check_raw_tree(exp: Path, dataset: Dataset, allow_partial: bool = False) -> None:
    """Before extract: the raw tree holds everything `expect` names, unless the download was narrowed."""
    done = load_yaml(state_dir(exp, dataset.name, "download") / "done.json") \
        if (state_dir(exp, dataset.name, "download") / "done.json").is_file() else None
    if isinstance(done, dict) and done.get("include"):
        print(f"extract: the download was narrowed (INCLUDE={done['include']}): completeness not checked")
        return
    raw = raw_dir(exp, dataset.name)
    problems = dataset.missing(dataset.select(scan_tree(raw)))
    if problems:
        incomplete(dataset, str(raw), problems, allow_partial)


def compare_revisions(dataset: Dataset, endpoint: str | None = None, newest: str = "main") -> int:
    """Print what the newest revision holds and the pinned one lacks; returns the number of problems."""
    endpoint = endpoint_of(endpoint)
    pinned_sha, pinned = list_remote(dataset, endpoint)
    newest_sha, latest = list_remote(dataset, endpoint, newest)
    at_pin, at_newest = set(dataset.select(pinned)), set(dataset.select(latest))
    lacking = sorted(at_newest - at_pin)
    changed = sorted(p for p in at_pin & at_newest if pinned[p].blob_id != latest[p].blob_id)
    gone = sorted(at_pin - at_newest)
    print(f"{dataset.repo_id} ({endpoint}), described files (tasks/datasets/{dataset.name}.yaml):")
    print(f"  pinned  {pinned_sha}: {len(at_pin)} files, {human(sum(pinned[p].size for p in at_pin))}")
    print(f"  {newest:<7} {newest_sha}: {len(at_newest)} files, {human(sum(latest[p].size for p in at_newest))}")
    for title, paths in (("missing at the pin", lacking), ("changed since the pin", changed),
                         ("removed since the pin", gone)):
        if paths:
            per_source: dict[str, int] = {}
            for path in paths:
                source = dataset.source_of(path)[0].name
                per_source[source] = per_source.get(source, 0) + 1
            shown = "\n    ".join(paths[:20]) + (f"\n    ... {len(paths) - 20} more" if len(paths) > 20 else "")
            counts = ", ".join(f"{name} {count}" for name, count in sorted(per_source.items()))
            print(f"  {len(paths)} {title} ({counts}):\n    {shown}")
    problems = 0
    for label, paths in (("pinned", at_pin), (newest, at_newest)):
        gaps = dataset.missing(paths)
        shown = "complete" if not gaps else f"{len(gaps)} gap(s)\n    " + "\n    ".join(gaps)
        print(f"  expect at {label}: {shown}")
        problems += len(gaps) if label == "pinned" else 0
    problems += len(lacking)
    if problems:
        print(f"check-revision: the pinned revision lacks files: pin {newest_sha} (or a later complete revision) in "
              f"{dataset.path} once it is complete", file=sys.stderr)
    else:
        print("check-revision: the pinned revision has every described file of the newest one")
    return problems


def run_download(exp: Path, dataset: Dataset, include: str = "", hashes: bool = False, workers: int = 8,
                 endpoint: str | None = None, allow_partial: bool = False) -> dict:
    """Download (or complete) the dataset's raw tree; returns the sentinel's content."""
    endpoint = endpoint_of(endpoint)
    raw = raw_dir(exp, dataset.name)
    state = state_dir(exp, dataset.name, "download")
    sentinel, manifest_path = state / "done.json", state / "manifest.json"
    include_patterns: list[Pattern] = parse_patterns(include, "INCLUDE") if include.strip() else []
    wanted = {"repo_id": dataset.repo_id, "requested_revision": dataset.revision, "include": include.strip(),
              "description_sha256": sha256_file(dataset.path)}
    if _sentinel_still_valid(sentinel, manifest_path, raw, wanted, hashes, allow_partial):
        done = load_yaml(sentinel)
        print(f"download: {dataset.name} already complete ({done['files']} files, {human(done['bytes'])}, "
              f"{dataset.repo_id}@{done['revision'][:12]}); nothing to fetch")
        return done
    started = time.monotonic()
    sha, remote = list_remote(dataset, endpoint)
    selected = dataset.select(remote, include_patterns)
    if not selected:
        narrowing = f" and INCLUDE={include!r}" if include_patterns else ""
        fail(f"{dataset.path}: none of the {len(remote)} files of {dataset.repo_id}@{sha[:12]} match the "
             f"sources{narrowing}")
    # the listing decides what a download can be: check it before fetching terabytes of a partial snapshot
    missing = [] if include_patterns else dataset.missing(dataset.select(remote))
    if missing:
        incomplete(dataset, f"{dataset.repo_id}@{sha[:12]} (the hub listing)", missing, allow_partial)
    elif include_patterns:
        print(f"download: INCLUDE narrows the download: completeness against {dataset.path} not checked")
    files = [remote[p] for p in selected]
    total = sum(f.size for f in files)
    print(f"download: {len(files)} files, {human(total)} from {dataset.repo_id}@{sha[:12]} ({endpoint}) "
          f"into {raw}, {workers} parallel transfers")
    from huggingface_hub import snapshot_download

    raw.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(dataset.repo_id, repo_type=dataset.repo_type, revision=sha, local_dir=raw,
                          allow_patterns=[glob_escape(p) for p in selected], max_workers=workers,
                          endpoint=endpoint)
    except Exception as exc:  # noqa: BLE001
        fail(_hub_error(dataset, endpoint, exc) + "; complete files are kept, re-run to resume")
    problems = check_files(raw, files, hashes)
    if problems:
        for path in selected:
            if any(str(raw / path) + ":" in p for p in problems):
                forget_download(raw, path)
        shown = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
        fail(f"download: {len(problems)} of {len(files)} files do not match the hub listing of "
             f"{dataset.repo_id}@{sha[:12]}:\n  {shown}\nre-run make download to fetch them again")
    write_json(manifest_path, {"repo_id": dataset.repo_id, "revision": sha, "endpoint": endpoint,
                               "files": [asdict(f) for f in files]})
    done = {**wanted, "dataset": dataset.name, "revision": sha, "endpoint": endpoint, "files": len(files),
            "bytes": total, "verified_sizes": True, "verified_hashes": hashes, "raw_dir": str(raw),
            "missing": missing, **provenance()}
    write_json(sentinel, done)
    elapsed = time.monotonic() - started
    print(f"download: done in {elapsed:.0f}s: {len(files)} files, {human(total)} checked against the hub "
          f"({'sizes and hashes' if hashes else 'sizes; VERIFY_HASHES=1 also checks hashes'}); "
          f"manifest {manifest_path}")
    return done
