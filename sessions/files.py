"""Crash-safe file writing shared by the session store and the config.

Everything the workbench keeps on disk goes through here: a temporary file in the same
folder, flushed and fsynced, then renamed over the old one, so a crash at any moment leaves
either the previous version or the new one, never half of each. Sessions also need a
private folder and a per-session lock so that two processes never write the same session.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:  # POSIX only; MLX runs on macOS and Linux
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write through a temporary file in the same folder, fsync, rename: never half-written."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data), mode)


def atomic_write_with(path: Path, write: Callable[[Path], object], mode: int = 0o600,
                      suffix: str = ".tmp") -> None:
    """Like ``atomic_write``, for writers that want a file name (``write(tmp_path)``).

    ``suffix`` is the temporary file's ending (some writers, such as MLX's safetensors
    saver, insist on their own extension).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_files(folder: Path, name: str) -> Iterator[Path]:
    """Temporary files an interrupted ``atomic_write`` of ``folder/name`` may have left."""
    yield from folder.glob(f".{glob_escape(name)}.*tmp*")


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def private_dir(folder: Path) -> Path:
    """Create ``folder`` (and parents) if needed; a folder made here is private (0700)."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
    return folder


class LockBusy(Exception):
    """Another process (or another open of the same lock) holds the lock."""


class FileLock:
    """An exclusive, non-blocking lock on ``path``, released by ``release`` or by death.

    ``flock`` locks belong to the open file, so a crashed holder never leaves a stale
    lock behind. The lock file is removed on release; a holder checks after locking that
    the file it locked is still the one at ``path`` (another process may have just removed
    it), and retries if not.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        for _attempt in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                raise LockBusy(holder) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)
        raise LockBusy("")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
