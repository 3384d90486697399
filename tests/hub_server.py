"""A local HTTP server speaking the Hugging Face hub endpoints that snapshot_download 2.x uses.

Loopback only, started by the tests. It serves one dataset repository at one commit:

    GET  /api/datasets/{repo}/revision/{rev}              repo info with the commit `sha`
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]         listing, cursor pagination (Link: rel="next")
    HEAD /datasets/{repo}/resolve/{rev}/{path}            X-Repo-Commit, ETag, Content-Length
    GET  /datasets/{repo}/resolve/{rev}/{path}            the bytes (Range supported)

Other commits can be added (`commits`, with `main` pointing at the newest), and `gated` refuses every
request as the hub does for a gated repository whose terms the token's account has not accepted.
Files flagged as LFS behave as on the real hub: /resolve answers 302 to a "CDN" on another host
name (localhost instead of 127.0.0.1) with X-Linked-Etag (the sha256) and X-Linked-Size, and the
CDN serves the bytes. Faults for the tests: `truncate` (the next GET of a path sends half of the
body and drops the connection, later GETs of it fail with 500 until cleared) and `listed_size`
(the listing reports another size than the bytes served). Every request is recorded.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes
    lfs: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    @property
    def blob_id(self) -> str:
        """git object id of what git stores: the content, or the LFS pointer for LFS files."""
        body = self.pointer() if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile] = field(default_factory=dict)
    commit: str = COMMIT
    page_size: int = 7
    gated: bool = False            # every request refused as for a gated repo whose terms are not accepted
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)   # other commits -> their files
    main: str | None = None        # the commit `main` points to (default: `commit`)

    def sha_of(self, rev: str) -> str:
        return (self.main or self.commit) if rev == "main" else rev

    def files_at(self, rev: str) -> dict[str, HubFile] | None:
        sha = self.sha_of(rev)
        return self.files if sha == self.commit else self.commits.get(sha)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HubServer"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, data, headers: dict | None = None) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message})

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        self.server.record(self.command, unquote(self.path), self.headers.get("Range"),
                           self.headers.get("Authorization"))
        repo = self.server.repo
        prefix = f"/api/datasets/{repo.repo_id}/"
        if repo.gated and path.startswith((prefix, f"/datasets/{repo.repo_id}/")):
            return self._error(403, "GatedRepo", f"Access to dataset {repo.repo_id} is restricted and you are not in "
                                                 "the authorized list.")
        if path.startswith(prefix + "revision/"):
            return self._revision(path[len(prefix + "revision/"):])
        if path.startswith(prefix + "tree/"):
            return self._tree(path[len(prefix + "tree/"):], query)
        if path.startswith(f"/datasets/{repo.repo_id}/resolve/"):
            return self._resolve(path[len(f"/datasets/{repo.repo_id}/resolve/"):], head)
        if path.startswith("/cdn/"):
            return self._cdn(path[len("/cdn/"):], head)
        self._error(404, "RepoNotFound", f"no route {path}")

    def _known_revision(self, rev: str) -> bool:
        return self.server.repo.files_at(rev) is not None

    def _revision(self, rev: str) -> None:
        if not self._known_revision(rev):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        repo = self.server.repo
        self._json({"id": repo.repo_id, "sha": repo.sha_of(rev), "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files_at(rev))]})

    def _tree(self, rest: str, query: dict) -> None:
        rev, _, sub = rest.partition("/")
        if not self._known_revision(rev):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        recursive = query.get("recursive", ["false"])[0] in ("true", "True", "1")
        entries = self.server.listing(sub.strip("/"), recursive, self.server.repo.files_at(rev))
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.server.repo.page_size]
        headers = {}
        if start + len(page) < len(entries):
            params = f"recursive={str(recursive).lower()}&expand=false&cursor={start + len(page)}"
            headers["Link"] = f'<{self.server.url}/api/datasets/{self.server.repo.repo_id}/tree/{rev}' \
                              f'{"/" + quote(sub) if sub else ""}?{params}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, rest: str, head: bool) -> None:
        rev, _, name = rest.partition("/")
        repo = self.server.repo
        if not self._known_revision(rev):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        hub_file = repo.files_at(rev).get(name)
        if hub_file is None:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha_of(rev)}, head)
        common = {"X-Repo-Commit": repo.sha_of(rev), "Accept-Ranges": "bytes"}
        if hub_file.lfs:
            location = f"http://localhost:{self.server.server_port}/cdn/{hub_file.sha256}"
            return self._send(302, b"", {**common, "Location": location, "ETag": f'"{hub_file.blob_id}"',
                                         "X-Linked-Etag": f'"{hub_file.sha256}"',
                                         "X-Linked-Size": str(len(hub_file.data))}, head)
        self._body(name, hub_file, {**common, "ETag": f'"{hub_file.blob_id}"'}, head)

    def _cdn(self, sha256: str, head: bool) -> None:
        for name, hub_file in self.server.repo.files.items():
            if hub_file.lfs and hub_file.sha256 == sha256:
                return self._body(name, hub_file, {"ETag": f'"{sha256}"'}, head)
        self._send(404, b"not found")

    def _body(self, name: str, hub_file: HubFile, headers: dict, head: bool) -> None:
        data, status = hub_file.data, 200
        range_header = self.headers.get("Range")
        if range_header and not head:
            match = re.match(r"bytes=(\d+)-(\d*)$", range_header)
            if match:
                first = int(match.group(1))
                last = int(match.group(2)) if match.group(2) else len(data) - 1
                headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
                data, status = data[first:last + 1], 206
        if not head:
            fault = self.server.take_fault(name)
            if fault == "truncate":
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault == "down":
                return self._error(500, "InternalError", "storage unavailable")
        self._send(status, data, {**headers, "Content-Length": str(len(data))}, head)


class HubServer(ThreadingHTTPServer):
    """`with HubServer(repo) as hub:` serves `repo` at hub.url until the block ends."""

    daemon_threads = True

    def __init__(self, repo: HubRepo) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repo = repo
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self.faults: dict[str, str] = {}
        self.listed_size: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def record(self, method: str, path: str, range_header: str | None, auth: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header, auth))

    def take_fault(self, name: str) -> str | None:
        with self._lock:
            fault = self.faults.get(name)
            if fault == "truncate":
                self.faults[name] = "down"   # the transfer broke; the file stays unavailable
            return fault

    def file_gets(self) -> list[str]:
        """Paths whose bytes were requested (GET on /resolve of a non-LFS file, or on the CDN)."""
        names = {f.sha256: n for n, f in self.repo.files.items() if f.lfs}
        got = []
        for method, full, _, _ in self.requests:
            path = full.split("?", 1)[0]
            if method != "GET":
                continue
            if path.startswith("/cdn/"):
                got.append(names.get(path[len("/cdn/"):], path))
            elif "/resolve/" in path:
                name = path.split("/resolve/", 1)[1].partition("/")[2]
                if name in self.repo.files and not self.repo.files[name].lfs:
                    got.append(name)
        return got

    def listing(self, sub: str, recursive: bool, files: dict[str, HubFile] | None = None) -> list[dict]:
        files = self.repo.files if files is None else files
        entries, folders = [], set()
        for name in sorted(files):
            if sub and not name.startswith(sub + "/"):
                continue
            rest = name[len(sub) + 1:] if sub else name
            parts = rest.split("/")
            if not recursive and len(parts) > 1:
                folders.add((sub + "/" if sub else "") + parts[0])
                continue
            for depth in range(1, len(parts)):
                folders.add((sub + "/" if sub else "") + "/".join(parts[:depth]))
            hub_file = files[name]
            entry = {"type": "file", "oid": hub_file.blob_id, "path": name,
                     "size": self.listed_size.get(name, len(hub_file.data))}
            if hub_file.lfs:
                entry["lfs"] = {"oid": hub_file.sha256, "size": len(hub_file.data),
                                "pointerSize": len(hub_file.pointer())}
            entries.append(entry)
        dirs = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f} for f in folders]
        return sorted(dirs + entries, key=lambda e: e["path"])

    def __enter__(self) -> "HubServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def repo_from_tree(repo_id: str, root, lfs_suffixes=(".zst", ".gz", ".parquet")) -> HubRepo:
    """A HubRepo holding every file below `root` (compressed files stored as LFS, as on the hub)."""
    from pathlib import Path

    root = Path(root)
    repo = HubRepo(repo_id)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            rel = path.relative_to(root).as_posix()
            repo.files[rel] = HubFile(path.read_bytes(), lfs=rel.endswith(tuple(lfs_suffixes)))
    return repo
