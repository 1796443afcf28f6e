"""Crash-safe file writing shared by the session store and the config.

Everything the workbench keeps on disk goes through here: a temporary file in the same
folder, flushed and fsynced, then renamed over the old one, so a crash at any moment leaves
either the previous version or the new one, never half of each. Sessions also need a
private folder and a per-session lock so that two processes never write the same session.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

try:  # POSIX only; MLX runs on macOS and Linux
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class UnsafeFolder(Exception):
    """A folder the workbench will not keep private files in; ``str()`` is one line."""


def private_dir(folder: Path) -> str | None:
    """Create ``folder`` (and parents) if needed; a folder made here is private (0700).

    An existing folder that other users may write to (group- or world-writable) lets them
    plant links where the workbench writes: one of ours is tightened to 0700 and the notice
    returned (None when nothing was changed); one owned by someone else raises
    ``UnsafeFolder``, as does a file in the folder's place.
    """
    if folder.exists() and not folder.is_dir():
        raise UnsafeFolder(f"{folder} is a file, not a folder: move it away, or give another "
                           "sessions folder")
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnsafeFolder(f"{folder} cannot be created ({exc.strerror or exc}): give "
                               "another sessions folder") from None
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
        return None
    st = folder.stat()
    if not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise UnsafeFolder(f"{folder} can be written by other users and is not yours: "
                           "sessions are private; give a folder of your own")
    was = stat.S_IMODE(st.st_mode)
    try:
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise UnsafeFolder(f"{folder} can be written by other users and cannot be made "
                           f"private ({exc.strerror or exc}): give another folder") from None
    return (f"the sessions folder {folder} could be written by other users ({was:o}): it is "
            "now private (700)")


class LockBusy(Exception):
    """Another process (or another open of the same lock) holds the lock."""


class LockRefused(Exception):
    """The lock file is something the workbench did not make (a symbolic link, another
    kind of file, someone else's, a hard link): it is left as it is. ``str()`` is one line."""


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
        """Take the lock, or raise ``LockBusy`` (held elsewhere) or ``LockRefused``.

        The lock file is opened without following a symbolic link (``O_NOFOLLOW``), without
        blocking on a FIFO, and only written (truncated to our PID) once it is known to be a
        regular file of ours with a single name, that we hold the lock on."""
        if self._fd is not None:
            return
        flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        for _attempt in range(5):
            try:
                fd = os.open(self.path, flags, 0o600)
            except OSError as exc:
                if os.path.islink(self.path):
                    raise LockRefused(f"the lock file {self.path} is a symbolic link, not one "
                                      "the workbench made: remove it (it may point at "
                                      "another file) and try again") from None
                raise LockRefused(f"the lock file {self.path} cannot be opened "
                                  f"({exc.strerror or exc})") from None
            try:
                if not self._check_ours(fd):  # removed by its last holder meanwhile: again
                    os.close(fd)
                    continue
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except LockRefused:
                os.close(fd)
                raise
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                raise LockBusy(holder) from None
            try:
                st = os.stat(self.path, follow_symlinks=False)
                same = (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (st.st_ino, st.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)
        raise LockBusy("")

    def _check_ours(self, fd: int) -> bool:
        """False when the file was unlinked since it was opened; ``LockRefused`` when it is
        not a lock file the workbench could have made."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockRefused(f"the lock file {self.path} is not a regular file: remove it and "
                              "try again")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise LockRefused(f"the lock file {self.path} belongs to another user: it was "
                              "left as it is; remove it or use a folder of your own")
        if st.st_nlink == 0:
            return False
        if st.st_nlink != 1:
            raise LockRefused(f"the lock file {self.path} has other names (a hard link to "
                              "another file?): it was left as it is; remove it and try again")
        return True

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
