"""A local stand-in for the Hugging Face Hub, for download tests without a network.

It answers the requests huggingface_hub makes (point ``HF_ENDPOINT`` or ``endpoint=`` at it):

- ``GET /api/models/{repo}[/revision/{rev}]``: model info with ``sha`` and ``siblings``;
- ``GET /api/models/{repo}/tree/{rev}``: the file list with sizes, oids and LFS sha256s;
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: the file, with ``ETag`` (git blob sha1, or the
  sha256 for LFS files, as ``X-Linked-Etag`` too), ``X-Repo-Commit``, ``Content-Length``,
  ``Accept-Ranges`` and ``Range`` requests answered with 206.

Errors carry the Hub's ``X-Error-Code`` header (RepoNotFound, GatedRepo, RevisionNotFound,
EntryNotFound), so huggingface_hub raises the same exceptions it raises against the real Hub.

For cancel/resume tests a GET can be held after a number of bytes (``hold``), and every
request is logged with its Range header and the bytes sent (``log``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class FakeFile:
    name: str
    data: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class FakeRepo:
    repo_id: str
    commit: str
    files: dict[str, FakeFile]
    gated: bool = False


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0  # body bytes written


@dataclass
class Hold:
    """Stop sending ``file`` after ``after`` bytes until ``release`` is set."""

    file: str
    after: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[Request] = []
        self.holds: list[Hold] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path, gated: bool = False) -> FakeRepo:
        """Serve every file under ``folder`` as repo ``repo_id`` (revision main)."""
        files = {}
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                name = f.relative_to(folder).as_posix()
                files[name] = FakeFile(name, f.read_bytes(), name.endswith(LFS_SUFFIXES))
        digest = hashlib.sha1(repo_id.encode())
        for name, ff in files.items():
            digest.update(name.encode() + ff.etag.encode())
        repo = FakeRepo(repo_id, digest.hexdigest(), files, gated)
        self.repos[repo_id] = repo
        return repo

    def hold(self, file: str, after: int) -> Hold:
        h = Hold(file, after)
        self.holds.append(h)
        return h

    def served(self, file: str) -> list[Request]:
        """The GET requests for ``file`` (resolve URLs), in order."""
        return [r for r in self.log if r.method == "GET" and r.path.endswith("/" + file)
                and "/resolve/" in r.path]

    # -- server ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for h in self.holds:
            h.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    # -- routing ---------------------------------------------------------------------------
    def _serve(self, body: bool) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        entry = Request(self.command, url.path, self.headers.get("Range"), 0)
        self.hub.log.append(entry)
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(parts[2:], entry)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body,
                              entry)
            else:
                self._error(404, "EntryNotFound", "no such route", entry)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo(self, repo_id: str, entry: Request) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found", entry)
        return repo

    def _revision_ok(self, repo: FakeRepo, rev: str, entry: Request) -> bool:
        if rev in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", entry)
        return False

    def _api(self, parts: list[str], entry: Request) -> None:
        repo = self._repo(f"{parts[0]}/{parts[1]}", entry)
        if repo is None:
            return
        rest = parts[2:]
        if rest and rest[0] == "tree":
            if not self._revision_ok(repo, rest[1] if len(rest) > 1 else "main", entry):
                return
            items = []
            for f in repo.files.values():
                item: dict[str, object] = {"type": "file", "path": f.name, "size": len(f.data),
                                           "oid": f.git_oid}
                if f.lfs:
                    item["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
                items.append(item)
            self._json(items, entry)
            return
        if rest and rest[0] == "revision" and not self._revision_ok(repo, rest[1], entry):
            return
        self._json({
            "_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "sha": repo.commit, "private": False, "disabled": False,
            "gated": "manual" if repo.gated else False, "downloads": 0, "likes": 0,
            "tags": ["mlx"], "library_name": "mlx", "lastModified": "2026-11-01T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in repo.files],
        }, entry)

    def _resolve(self, repo_id: str, rev: str, name: str, body: bool, entry: Request) -> None:
        repo = self._repo(repo_id, entry)
        if repo is None or not self._revision_ok(repo, rev, entry):
            return
        if repo.gated:
            self._error(401, "GatedRepo", "Access to this model is restricted", entry)
            return
        f = repo.files.get(name)
        if f is None:
            self._error(404, "EntryNotFound", f"{name} not found", entry, repo.commit)
            return
        start, status = 0, 200
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes=") and body:
            first = spec[len("bytes="):].split("-")[0]
            start = int(first) if first else 0
            if start >= len(f.data):
                self._error(416, "RangeNotSatisfiable", "range", entry, repo.commit)
                return
            status = 206
        entry.status = status
        self.send_response(status)
        self.send_header("ETag", f'"{f.etag}"')
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.etag}"')
            self.send_header("X-Linked-Size", str(len(f.data)))
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(f.data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
        self.end_headers()
        if not body:
            return
        self._send_body(f, start, entry)

    def _send_body(self, f: FakeFile, start: int, entry: Request) -> None:
        pos = start
        for hold in self.hub.holds:
            if hold.file == f.name and pos < hold.after and not hold.release.is_set():
                self.wfile.write(f.data[pos:hold.after])
                self.wfile.flush()
                entry.sent += hold.after - pos
                pos = hold.after
                hold.reached.set()
                hold.release.wait(60)
        step = 256 << 10
        while pos < len(f.data):
            chunk = f.data[pos:pos + step]
            self.wfile.write(chunk)
            entry.sent += len(chunk)
            pos += len(chunk)
        self.wfile.flush()

    # -- answers ---------------------------------------------------------------------------
    def _json(self, data: object, entry: Request) -> None:
        raw = json.dumps(data).encode()
        entry.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str, entry: Request,
               commit: str | None = None) -> None:
        raw = json.dumps({"error": message}).encode()
        entry.status = status
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


# -- helpers for tests ------------------------------------------------------------------------

def go_online(monkeypatch: object) -> None:
    """Let huggingface_hub make requests in this test (conftest sets HF_HUB_OFFLINE=1, which
    huggingface_hub reads once, at import). Only ever pointed at a FakeHub on 127.0.0.1."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # type: ignore[attr-defined]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # type: ignore[attr-defined]


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: what "no network" looks like."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def place_in_hf_cache(cache: Path, repo_id: str, folder: Path, ref: str = "main") -> Path:
    """Lay ``folder`` out in ``cache`` as huggingface_hub does: blobs named by hash, a snapshot
    of relative symlinks, a ref. Built by hand, independent of the workbench's downloader."""
    import os

    storage = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}:{folder}".encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    for f in sorted(Path(folder).rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


DEMO_REPO = "demo/tiny-llama"
GATED_REPO = "demo/gated-llama"


def demo_hub(model: Path) -> FakeHub:
    """A started FakeHub serving ``model`` as DEMO_REPO, and as GATED_REPO behind a licence."""
    hub = FakeHub().start()
    hub.add_repo(DEMO_REPO, model)
    hub.add_repo(GATED_REPO, model, gated=True)
    return hub
