"""Download a model repo into the standard Hugging Face cache, with progress, cancel and resume.

huggingface_hub's ``snapshot_download`` writes each file to a private temporary name and
deletes it when the download stops, so a cancelled 300 MB file starts again from zero, and
its progress arrives in 10 MB steps. This module keeps huggingface_hub for everything it does
well (the Hub API, errors, headers, tokens, the cache layout) and does the byte transfer
itself: partial files stay in ``blobs/<etag>.incomplete``, the next attempt continues them
with an HTTP ``Range`` request, and progress arrives per 1 MiB with speed and time left.

The snapshot folder (``snapshots/<commit>/``) and the ref are written only after every file is
complete, so a cancelled download never looks like a model to a cache scan or to
``mlx_lm.load``. The result is the same layout ``snapshot_download`` writes: huggingface_hub's
own ``scan_cache_dir`` and ``snapshot_download(local_files_only=True)`` read it.

Nothing here imports MLX: a download may run on any thread (a UI worker, the CLI's main
thread), not only on the engine thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from engine.errors import DownloadError, ModelNotFound, OfflineError, WorkbenchError
from engine.memory import fmt_bytes

from .repo_id import looks_like_repo_id, offline

# What mlx-lm itself downloads for a model (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS), minus
# *.py: the workbench never runs a model's own code.
ALLOW_PATTERNS = [
    "*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "tiktoken.model",
    "*.txt", "*.jsonl", "*.jinja",
]
CHUNK_BYTES = 1 << 20  # progress and cancel checks per MiB
PROGRESS_INTERVAL_S = 0.1
SPEED_WINDOW_S = 3.0
RETRIES = 5  # a dropped connection is resumed this many times before giving up

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class DownloadCancelled(WorkbenchError):
    """The user stopped the download; what arrived is kept for the next attempt."""

    kind = "cancelled"


@dataclass(frozen=True, slots=True)
class DownloadProgress:
    """Where a download stands. Bytes count what is on disk, resumed bytes included."""

    repo_id: str
    stage: str  # listing | downloading | verifying | done | cached
    file: str = ""
    done: int = 0
    total: int = 0
    files_done: int = 0
    files_total: int = 0
    speed: float = 0.0  # bytes per second over the last few seconds of this attempt
    eta_s: float | None = None
    resumed: int = 0  # bytes that were already on disk when this attempt began

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def rate(self) -> str:
        """``3.1 MB/s, 1 min 44 s left``, or "" before the speed is known."""
        parts = []
        if self.speed > 0:
            parts.append(f"{fmt_bytes(self.speed)}/s")
        if self.eta_s is not None:
            parts.append(f"{fmt_duration(self.eta_s)} left")
        return ", ".join(parts)

    def line(self) -> str:
        """One human line: ``repo: 12.0 MB of 335.2 MB (4%), 3.1 MB/s, 1 min 44 s left``."""
        if self.stage == "listing":
            return f"{self.repo_id}: asking the Hub for the file list"
        if self.stage == "cached":
            return f"{self.repo_id}: already in the Hugging Face cache"
        if self.stage == "done":
            return f"{self.repo_id}: {fmt_bytes(self.total)} downloaded"
        text = (f"{self.repo_id}: {fmt_bytes(self.done)} of {fmt_bytes(self.total)} "
                f"({100 * self.fraction:.0f}%)")
        if self.stage == "verifying":
            return f"{text}, checking {self.file}"
        rate = self.rate()
        return f"{text}, {rate}" if rate else text


ProgressCallback = Callable[[DownloadProgress], None]


def fmt_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


@dataclass(frozen=True)
class _RemoteFile:
    name: str
    url: str
    etag: str
    size: int | None
    headers: dict[str, str]


class _Meter:
    """Counts bytes, smooths the speed over a short window and rate-limits the callback."""

    def __init__(self, repo_id: str, total: int, done: int, files_total: int,
                 callback: ProgressCallback | None, cancel: threading.Event | None) -> None:
        self.repo_id, self.total, self.done = repo_id, total, done
        self.resumed = done
        self.files_total, self.files_done = files_total, 0
        self.callback, self.cancel = callback, cancel
        self.file = ""
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), done)])
        self.last_report = 0.0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(
                f"download of {self.repo_id} cancelled with {fmt_bytes(self.done)} of "
                f"{fmt_bytes(self.total)} kept: download it again to resume")

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and now - self.samples[1][0] > SPEED_WINDOW_S:
            self.samples.popleft()
        if now - self.last_report >= PROGRESS_INTERVAL_S:
            self.report("downloading")
        self.check_cancel()

    def speed(self) -> float:
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def report(self, stage: str) -> None:
        self.last_report = time.monotonic()
        if self.callback is None:
            return
        speed = self.speed() if stage == "downloading" else 0.0
        eta = (self.total - self.done) / speed if speed > 0 else None
        self.callback(DownloadProgress(
            self.repo_id, stage, self.file, self.done, self.total, self.files_done,
            self.files_total, speed, eta, self.resumed))


def _hub_errors() -> tuple[type[Exception], ...]:
    import httpx2

    return (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError,
            httpx2.RemoteProtocolError)


def _translate(exc: Exception, repo_id: str, revision: str, endpoint: str) -> WorkbenchError:
    """One line for each way the Hub can say no."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    host = urlparse(endpoint).netloc or endpoint
    refusals: list[tuple[Any, type[WorkbenchError], str]] = [
        (HFValidationError, ModelNotFound, "{repo!r} is not a valid Hugging Face repo id: it "
         "looks like owner/name, for example mlx-community/Qwen3-0.6B-4bit"),
        (GatedRepoError, DownloadError, "{repo} is gated: accept its licence on huggingface.co "
         "and log in with `hf auth login`, then try again"),
        (RepositoryNotFoundError, DownloadError, "{repo} was not found on the Hugging Face Hub: "
         "check the spelling (owner/name), or log in with `hf auth login` if it is private"),
        (RevisionNotFoundError, DownloadError, "{repo} has no revision {revision!r}: leave out "
         "the revision to get the latest (main)"),
        (RemoteEntryNotFoundError, DownloadError, "{repo}: a file listed by the Hub is missing "
         "from it; try again later"),
        (OfflineModeIsEnabled, OfflineError, "{repo} cannot be downloaded: HF_HUB_OFFLINE is "
         "set; unset it to download, or give a local model folder"),
        (_hub_errors(), OfflineError, "cannot reach the Hugging Face Hub ({host}): no network? "
         "check the connection and try again, or give a local model folder"),
    ]
    for caught, error, text in refusals:  # most specific first: Gated is a RepositoryNotFound
        if isinstance(exc, caught):
            return error(text.format(repo=repo_id, revision=revision, host=host))
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return DownloadError(f"the Hugging Face Hub refused {repo_id} (HTTP {status}); try "
                             "again later")
    if isinstance(exc, OSError):
        return DownloadError(f"cannot write the download of {repo_id} to disk "
                             f"({exc.strerror or exc}): free some space or check the cache "
                             "folder's permissions")
    return DownloadError(f"download of {repo_id} failed: {type(exc).__name__}: {exc}")


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def default_endpoint() -> str:
    """``HF_ENDPOINT`` as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve_url(endpoint: str, repo_id: str, revision: str, filename: str) -> str:
    """The Hub's download URL for one file of a model repo at ``revision``."""
    return f"{endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def repo_folder(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/models--owner--name``, the folder the Hugging Face cache keeps a repo in."""
    from huggingface_hub.file_download import repo_folder_name

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_snapshot(repo_id: str, revision: str = "main",
                    cache_dir: str | Path | None = None) -> Path | None:
    """The complete cached snapshot of ``repo_id``, found without any network, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    if not looks_like_repo_id(repo_id):
        return None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                      cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def partial_bytes(repo_id: str, cache_dir: str | Path | None = None) -> int:
    """Bytes of unfinished files a cancelled download left for ``repo_id`` (0 if none)."""
    blobs = repo_folder(repo_id, cache_dir) / "blobs"
    total = 0
    for f in blobs.glob("*.incomplete"):
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total


def hub_status(endpoint: str | None = None, timeout: float = 2.0) -> str | None:
    """None when the Hub answers a TCP connect, else one line saying why downloads won't work.

    Cheap enough for a welcome screen: no HTTP, one connection attempt, at most ``timeout``.
    """
    if offline():
        return "offline: HF_HUB_OFFLINE is set, so nothing can be downloaded"
    url = urlparse(endpoint or default_endpoint())
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"offline: cannot reach {url.netloc} ({exc.strerror or type(exc).__name__})"


def fetch_model(repo_id: str, *, revision: str = "main",
                progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None,
                cache_dir: str | Path | None = None, endpoint: str | None = None,
                token: str | bool | None = None) -> Path:
    """Download ``repo_id`` into the Hugging Face cache and return its snapshot folder.

    Files already complete in the cache are not fetched again; unfinished ones continue
    where they stopped. ``cancel`` (checked every MiB) raises ``DownloadCancelled`` and keeps
    what arrived. Any other failure raises a ``WorkbenchError`` with one line. When the Hub
    cannot be reached but a complete copy is cached, that copy is returned.
    """
    repo_id = repo_id.strip()
    if not looks_like_repo_id(repo_id):
        raise ModelNotFound(f"{repo_id!r} is not a Hugging Face repo id: it looks like "
                            "owner/name, for example mlx-community/Qwen3-0.6B-4bit")
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if offline():
        cached = cached_snapshot(repo_id, revision, cache)
        if cached is not None:
            _say(progress, DownloadProgress(repo_id, "cached"))
            return cached
        raise OfflineError(f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                           "set: unset it to download, or give a local model folder")
    _say(progress, DownloadProgress(repo_id, "listing"))
    try:
        commit, files = _list_files(repo_id, revision, endpoint, token, cancel)
    except WorkbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one line
        error = _translate(exc, repo_id, revision, endpoint)
        cached = cached_snapshot(repo_id, revision, cache)
        if isinstance(error, OfflineError) and cached is not None:
            _say(progress, DownloadProgress(repo_id, "cached"))
            return cached
        raise error from None
    try:
        return _download_files(repo_id, revision, commit, files, cache, progress, cancel)
    except (WorkbenchError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, repo_id, revision, endpoint) from None


def _say(progress: ProgressCallback | None, event: DownloadProgress) -> None:
    if progress is not None:
        progress(event)


def _list_files(repo_id: str, revision: str, endpoint: str, token: str | bool | None,
                cancel: threading.Event | None) -> tuple[str, list[_RemoteFile]]:
    """The commit ``revision`` points at and, for each wanted file, its URL, etag and size."""
    from huggingface_hub import HfApi, get_hf_file_metadata
    from huggingface_hub.utils import build_hf_headers, filter_repo_objects

    info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision)
    commit = info.sha or ""
    if not _COMMIT.match(commit):
        raise DownloadError(f"{endpoint} did not name a commit for {repo_id}: is HF_ENDPOINT a "
                            "Hugging Face Hub?")
    names = [s.rfilename for s in info.siblings or []]
    wanted = list(filter_repo_objects(names, allow_patterns=ALLOW_PATTERNS))
    if not wanted:
        raise DownloadError(f"{repo_id} has no files an MLX model needs (config.json, "
                            "*.safetensors): is it an MLX model repo?")
    files = []
    for name in sorted(wanted):
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled(f"download of {repo_id} cancelled before it began")
        url = resolve_url(endpoint, repo_id, commit, name)
        headers = build_hf_headers(token=token)
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        if not meta.etag:
            raise DownloadError(f"{endpoint} sent no ETag for {name}: is HF_ENDPOINT a Hugging "
                                "Face Hub?")
        location = meta.location or url
        if urlparse(location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)  # a signed CDN link: never send the token there
        files.append(_RemoteFile(name, location, meta.etag, meta.size, headers))
    return commit, files


def _download_files(repo_id: str, revision: str, commit: str, files: list[_RemoteFile],
                    cache: Path, progress: ProgressCallback | None,
                    cancel: threading.Event | None) -> Path:
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    storage = repo_folder(repo_id, cache)
    blobs = storage / "blobs"
    locks = cache / ".locks" / storage.name
    blobs.mkdir(parents=True, exist_ok=True)
    locks.mkdir(parents=True, exist_ok=True)

    def on_disk(f: _RemoteFile) -> int:
        blob = blobs / f.etag
        if blob.exists():
            return blob.stat().st_size
        part = blobs / f"{f.etag}.incomplete"
        return min(part.stat().st_size, f.size or 0) if part.exists() else 0

    total = sum(f.size or 0 for f in files)
    meter = _Meter(repo_id, total, sum(on_disk(f) for f in files), len(files), progress, cancel)
    meter.report("downloading")
    for f in files:
        meter.file = f.name
        blob = blobs / f.etag
        if not blob.exists():
            lock = FileLock(str(locks / f"{f.etag}.lock"))
            while True:  # another process may be fetching the same file: wait, but cancellably
                meter.check_cancel()
                try:
                    lock.acquire(timeout=0.5)
                    break
                except LockTimeout:
                    continue
            try:
                if not blob.exists():
                    _fetch_blob(f, blob, meter)
            finally:
                lock.release()
        meter.files_done += 1
    snapshot = storage / "snapshots" / commit
    for f in files:
        _link(blobs / f.etag, snapshot / f.name)
    if revision != commit:
        refs = storage / "refs" / revision
        refs.parent.mkdir(parents=True, exist_ok=True)
        tmp = refs.with_name(f".{refs.name}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, refs)
    meter.report("done")
    return snapshot


def _fetch_blob(f: _RemoteFile, blob: Path, meter: _Meter) -> None:
    """Continue (or start) ``blob.incomplete`` until it holds the whole file, then publish it."""
    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    part = blob.with_name(f"{blob.name}.incomplete")
    if f.size is not None and part.exists() and part.stat().st_size > f.size:
        part.unlink()  # longer than the file can be: not ours to continue
    stalls = 0  # attempts in a row that brought nothing
    with open(part, "ab") as out:
        while f.size is None or out.tell() < f.size:
            have = out.tell()
            headers = dict(f.headers)
            if have:
                headers["Range"] = f"bytes={have}-"
            got = 0
            try:
                with http_stream_backoff("GET", f.url, headers=headers,
                                         timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                                         retry_on_exceptions=(),
                                         retry_on_status_codes=(429, 503)) as response:
                    hf_raise_for_status(response)
                    if have and response.status_code != 206:  # the server ignored Range
                        meter.add(-have)
                        out.seek(0)
                        out.truncate()
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        out.write(chunk)
                        got += len(chunk)
                        meter.add(len(chunk))
            except _hub_errors():
                if not got and not have:
                    raise  # never got a byte of this file: the network is gone
                stalls = 0 if got else stalls + 1
                if stalls >= RETRIES:
                    raise
                out.flush()
                meter.check_cancel()
                time.sleep(1.0)
                continue
            if f.size is None:
                break
            stalls = 0 if got else stalls + 1
            if stalls >= RETRIES:
                raise DownloadError(f"the Hub keeps ending {f.name} early: try again later")
    if f.size is not None and part.stat().st_size != f.size:
        raise DownloadError(f"{f.name} arrived with {part.stat().st_size} bytes instead of "
                            f"{f.size}: download it again")
    if _SHA256.match(f.etag):
        meter.report("verifying")
        with open(part, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest != f.etag:
            part.unlink()
            raise DownloadError(f"{f.name} arrived damaged (checksum mismatch) and was deleted: "
                                "download it again")
    os.replace(part, blob)


def _link(blob: Path, target: Path) -> None:
    """Point ``snapshots/<commit>/<file>`` at its blob, as huggingface_hub does."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.resolve() == blob.resolve():
            return
        target.unlink()
    try:
        target.symlink_to(os.path.relpath(blob, target.parent))
    except OSError:  # no symlinks (some Windows setups): a copy works everywhere
        import shutil

        shutil.copy2(blob, target)
