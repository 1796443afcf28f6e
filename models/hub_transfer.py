"""The byte transfer of a model download: resumable, checked, with progress and cancel.

``models.hub`` asks the Hub what to fetch; this module moves the bytes. Each file grows in
``blobs/<etag>.incomplete``, continues with an HTTP ``Range`` request after a cut or a
cancel, and becomes ``blobs/<etag>`` only when whole (and its checksum matches, when the
etag is a sha256); the snapshot links and the ref are written after every file is complete.
Progress arrives per 1 MiB with speed and time left. No MLX: any thread may run it.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import DownloadError, WorkbenchError
from common.formats import fmt_bytes

CHUNK_BYTES = 1 << 20  # progress and cancel checks per MiB
PROGRESS_INTERVAL_S = 0.1
SPEED_WINDOW_S = 3.0
RETRIES = 5  # a dropped connection is resumed this many times before giving up

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
class RemoteFile:
    """One file to fetch: where it is, its etag (the blob's name) and size, the headers."""

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


def network_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean the connection failed (not that the Hub said no)."""
    import httpx2

    return (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError,
            httpx2.RemoteProtocolError)


def download_files(repo_id: str, revision: str, commit: str, files: list[RemoteFile],
                   cache: Path, storage: Path, progress: ProgressCallback | None,
                   cancel: threading.Event | None) -> Path:
    """Fetch ``files`` into ``storage`` (the repo's cache folder), then write the snapshot
    folder and the ref; return the snapshot folder."""
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    blobs = storage / "blobs"
    locks = cache / ".locks" / storage.name
    blobs.mkdir(parents=True, exist_ok=True)
    locks.mkdir(parents=True, exist_ok=True)

    def on_disk(f: RemoteFile) -> int:
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


def _fetch_blob(f: RemoteFile, blob: Path, meter: _Meter) -> None:
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
            except network_errors():
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
