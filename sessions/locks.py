"""The sessions folder's own checks and its per-session write locks, apart from the sessions.

``SessionStore`` builds on ``SessionLocks``: before anything is written the folder is checked
(a file in its way is a one-line ``SessionFolderUnusable``) and made private, and a session
is written only under its lock (``.NAME.lock``), so that a second process or a second store
is told the session is in use. No MLX: any thread may use it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast

from common.atomic import temp_files

from .errors import SessionFolderUnusable, SessionInUse, UnsafeLock
from .files import FileLock, LockBusy, LockRefused, UnsafeFolder, private_dir
from .names import check_name

_Method = TypeVar("_Method", bound=Callable[..., Any])


def serialized(method: _Method) -> _Method:
    """Run the method under the store's mutex (the UI lists while the engine thread saves)."""

    @functools.wraps(method)
    def wrapper(self: SessionLocks, *args: Any, **kwargs: Any) -> Any:
        with self._mutex:
            return method(self, *args, **kwargs)

    return cast(_Method, wrapper)


class SessionLocks:
    """The write locks of the sessions in one folder. Use as a context manager to release
    them."""

    # Suffixes of a session's files that its lock guards: the temporary files a killed
    # writer left of them are removed when the lock is taken.
    LOCKED: ClassVar[tuple[str, ...]] = ()

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self._locks: dict[str, FileLock] = {}
        self._mutex = threading.RLock()
        self.notices: list[str] = []  # one-line notices about the folder, not yet shown

    def take_notices(self) -> list[str]:
        """Notices gathered since the last call (e.g. the folder was made private)."""
        notices, self.notices = self.notices, []
        return notices

    def check_folder(self) -> None:
        """Raise ``SessionFolderUnusable`` when a file (or anything but a folder) is where
        the sessions folder should be, or a file is in its path."""
        folder = self.folder
        for part in (folder, *folder.parents):
            if part.exists():
                if not part.is_dir():
                    what = (f"the sessions folder {folder} is a file" if part == folder
                            else f"the sessions folder {folder} is inside {part}, a file")
                    raise SessionFolderUnusable(
                        f"{what}, not a folder: move the file away, or give another folder "
                        "with --sessions-dir (or sessions_dir in the config)")
                return

    def _private_folder(self) -> None:
        self.check_folder()
        try:
            notice = private_dir(self.folder)
        except UnsafeFolder as exc:
            raise SessionFolderUnusable(str(exc)) from None
        if notice:
            self.notices.append(notice)

    @serialized
    def acquire(self, name: str) -> None:
        """Take the write lock of ``name`` (a no-op if this store holds it already)."""
        check_name(name)
        lock = self._locks.get(name)
        if lock is not None and lock.held:
            return
        self._private_folder()
        lock = FileLock(self.folder / f".{name}.lock")
        try:
            lock.acquire()
        except LockRefused as refused:
            raise UnsafeLock(f"session {name!r} is not opened for writing: {refused}") from None
        except LockBusy as busy:
            pid = str(busy.args[0]) if busy.args else ""
            where = ("elsewhere in this workbench" if pid == str(os.getpid())
                     else f"in another workbench (process {pid})" if pid
                     else "in another workbench")
            raise SessionInUse(f"session {name!r} is open {where}: close it there first, or "
                               "save this conversation under another name") from None
        self._locks[name] = lock
        for stem in (f"{name}{suffix}" for suffix in self.LOCKED):  # left by a killed writer
            for tmp in temp_files(self.folder, stem):
                tmp.unlink(missing_ok=True)

    def holds(self, name: str) -> bool:
        lock = self._locks.get(name)
        return lock is not None and lock.held

    @serialized
    def release(self, name: str) -> None:
        lock = self._locks.pop(name, None)
        if lock is not None:
            lock.release()

    def close(self) -> None:
        for name in list(self._locks):
            self.release(name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
