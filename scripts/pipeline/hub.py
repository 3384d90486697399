"""The download step: list a dataset on the hub, fetch the described files, check them, record them.

Fetching is huggingface_hub.snapshot_download itself (local_dir mode: complete files are skipped
on a re-run using its metadata in <raw>/.cache/huggingface/, partial files live under temporary
names and never appear under their final name). Afterwards every selected file is checked
against the hub listing: its size always, its hash (LFS sha256, or the git blob sha1 for small
files) with VERIFY=1. A manifest and the stage sentinel are written only when all files pass.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.config import load_yaml
from pipeline.datasets import Dataset, Pattern, parse_patterns
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


def _hub_error(dataset: Dataset, endpoint: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"{dataset.path}: hub request for {dataset.repo_id}@{dataset.revision} at {endpoint} failed: "
            f"{type(exc).__name__}: {text}")


def list_remote(dataset: Dataset, endpoint: str) -> tuple[str, dict[str, RemoteFile]]:
    """(commit sha, files) of the dataset's repository at its revision."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint)
    try:
        sha = dataset.revision
        if not dataset.revision_pinned:
            sha = api.repo_info(dataset.repo_id, repo_type=dataset.repo_type, revision=dataset.revision).sha
        files = {}
        for entry in api.list_repo_tree(dataset.repo_id, repo_type=dataset.repo_type, revision=sha, recursive=True):
            if isinstance(entry, RepoFile):
                files[entry.path] = RemoteFile(entry.path, entry.size, entry.blob_id,
                                               entry.lfs.sha256 if entry.lfs is not None else None)
    except Exception as exc:  # noqa: BLE001  (any client or HTTP failure is reported the same way)
        fail(_hub_error(dataset, endpoint, exc))
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


def _sentinel_still_valid(sentinel: Path, manifest: Path, raw: Path, wanted: dict, hashes: bool) -> bool:
    if not (sentinel.is_file() and manifest.is_file()):
        return False
    done = load_yaml(sentinel)
    if not isinstance(done, dict) or any(done.get(k) != v for k, v in wanted.items()):
        return False
    if hashes and not done.get("verified_hashes"):
        return False
    for entry in load_yaml(manifest).get("files", []):
        local = raw / entry["path"]
        if not local.is_file() or local.stat().st_size != entry["size"]:
            return False
    return True


def run_download(exp: Path, dataset: Dataset, include: str = "", hashes: bool = False, workers: int = 8,
                 endpoint: str | None = None) -> dict:
    """Download (or complete) the dataset's raw tree; returns the sentinel's content."""
    endpoint = endpoint_of(endpoint)
    raw = raw_dir(exp, dataset.name)
    state = state_dir(exp, dataset.name, "download")
    sentinel, manifest_path = state / "done.json", state / "manifest.json"
    include_patterns: list[Pattern] = parse_patterns(include, "INCLUDE") if include.strip() else []
    wanted = {"repo_id": dataset.repo_id, "requested_revision": dataset.revision, "include": include.strip(),
              "description_sha256": sha256_file(dataset.path)}
    if _sentinel_still_valid(sentinel, manifest_path, raw, wanted, hashes):
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
            **provenance()}
    write_json(sentinel, done)
    elapsed = time.monotonic() - started
    print(f"download: done in {elapsed:.0f}s: {len(files)} files, {human(total)} checked against the hub "
          f"({'sizes and hashes' if hashes else 'sizes; VERIFY=1 also checks hashes'}); manifest {manifest_path}")
    return done
