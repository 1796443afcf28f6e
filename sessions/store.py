"""The sessions folder: ``NAME.toml`` transcripts beside ``NAME.safetensors`` prompt caches
(and ``NAME.cache/``, the segments incremental saves append: ``sessions.cache_segments``).

``SessionStore`` lists, opens, saves, renames and deletes sessions. It never runs MLX (the
prompt cache side lives in ``sessions.cache`` and runs on the engine thread), so any thread
may use it. Its rules:

- names are checked (``sessions.names``) before they touch the file system;
- the folder is created private (0700) and every file is written 0600, atomically; an
  existing folder other users can write to is tightened to 0700 (a notice says so, see
  ``take_notices``) or, when it is not ours, refused; a file where the folder should be
  is a one-line ``SessionFolderUnusable`` from every method;
- lock files are never followed through a symbolic link nor truncated unless they are ours;
- opening only reads (tomllib), and never changes a file, even a damaged one;
- a session of a newer schema is refused and never overwritten;
- writing takes a per-session lock, held until ``release``/``close``: a second process
  (or a second store) that wants to write the same session is told it is in use.

The folder checks and the locks live in ``sessions.locks``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common.atomic import atomic_write

from .errors import (
    BadSession,
    SessionError,
    SessionExists,
    SessionInUse,
    SessionNotFound,
    SessionTooNew,
)
from .locks import SessionLocks, serialized
from .names import MAX_NAME, check_name, sanitize_name
from .transcript import Session, now, parse_session

TRANSCRIPT = ".toml"
CACHE = ".safetensors"
STALE = ".safetensors.stale"
SEGMENTS = ".cache"  # the folder of incremental cache segments (sessions/cache_segments.py)


@dataclass(frozen=True)
class SessionSummary:
    """One row of the sessions list. ``problem`` says why a session cannot be opened."""

    name: str
    title: str
    model: str
    adapter: str
    turns: int
    created: datetime | None
    updated: datetime | None
    toml_bytes: int
    cache_bytes: int
    problem: str | None = None

    @property
    def size_bytes(self) -> int:
        return self.toml_bytes + self.cache_bytes

    def matches(self, text: str) -> bool:
        """For the list's filter: ``text`` in the name, title, model or adapter."""
        needle = text.casefold().strip()
        return not needle or any(needle in field.casefold() for field in
                                 (self.name, self.title, self.model, self.adapter))


@dataclass(frozen=True)
class SavedTranscript:
    path: Path
    bytes: int
    saved_at: datetime
    set_aside: Path | None = None  # a damaged file found in the way, kept under this name


class SessionStore(SessionLocks):
    """The sessions in one folder. Use as a context manager to release its locks."""

    LOCKED = (TRANSCRIPT, CACHE)

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder)
        self._seen: dict[str, tuple[int, int, int]] = {}  # name -> stat of our last read/write

    # -- paths ---------------------------------------------------------------------------
    def transcript_path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}{TRANSCRIPT}"

    def cache_path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}{CACHE}"

    def stale_path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}{STALE}"

    def segments_path(self, name: str) -> Path:
        """``NAME.cache/``: the prompt cache's incremental segments and their manifest."""
        return self.folder / f"{check_name(name)}{SEGMENTS}"

    def exists(self, name: str) -> bool:
        return self.transcript_path(name).is_file()

    def is_session_file(self, path: str | Path) -> bool:
        """True for a file of this folder that the store owns or would write (a transcript,
        a cache, a set-aside copy, a lock or a temporary file), whether or not it exists:
        what an export must never overwrite. Links are followed."""
        p = Path(path).expanduser()
        try:
            folder = self.folder.resolve()
            target = p.resolve()
            # The name itself too: writing replaces the link, not its target.
            candidates = {target, p.absolute().parent.resolve() / p.name}
        except OSError:
            return False
        for c in candidates:
            if c.parent.name.endswith(SEGMENTS) and c.parent.parent == folder:
                return True  # inside a session's segment folder
            if c.parent != folder:
                continue
            name = c.name
            if name.startswith(".") or name.endswith((TRANSCRIPT, CACHE, STALE, SEGMENTS,
                                                      ".lock")) \
                    or ".toml.damaged-" in name or ".toml.edited-" in name:
                return True
        return False

    # -- reading -------------------------------------------------------------------------
    def open(self, name: str, *, lock: bool = False) -> Session:
        """Read session ``name``. With ``lock``, also take its write lock (for autosave).

        Raises ``SessionNotFound``, ``BadSession``, ``SessionTooNew`` or ``SessionInUse``;
        never changes a file.
        """
        path = self.transcript_path(name)
        self.check_folder()
        if lock:
            self.acquire(name)
        try:
            try:
                data = path.read_bytes()
                st = path.stat()
            except FileNotFoundError:
                raise SessionNotFound(f"no session named {name!r} in {self.folder}: "
                                      "`workbench sessions list` shows the saved ones") from None
            except OSError as exc:
                raise BadSession(f"session {name!r} cannot be read ({exc.strerror}): check "
                                 f"the permissions of {path}") from None
            session = parse_session(name, data)
        except BaseException:
            if lock:
                self.release(name)
            raise
        self._seen[name] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return session

    def unique_name(self, base: str = "chat") -> str:
        """``base`` made safe, with ``-2``, ``-3``... added if a session has that name."""
        base = sanitize_name(base, default="chat")
        self.check_folder()
        name, n = base, 1
        while self.exists(name) or self.cache_path(name).exists() \
                or os.path.lexists(self.segments_path(name)):
            n += 1
            name = f"{base[: MAX_NAME - len(str(n)) - 1]}-{n}"
        return name

    def new(self, name: str, **fields: object) -> Session:
        """A new, unsaved session (``fields`` as in ``Session``). Refuses a taken name."""
        if self.exists(name):
            raise SessionExists(f"a session named {name!r} exists already: open it, or pick "
                                "another name")
        return Session(name=check_name(name), **fields)  # type: ignore[arg-type]

    def open_or_new(self, name: str, *, lock: bool = True,
                    **fields: object) -> tuple[Session, bool]:
        """Open ``name``, or start it if it does not exist: ``(session, created)``."""
        try:
            return self.open(name, lock=lock), False
        except SessionNotFound:
            if lock:
                self.acquire(name)
            return Session(name=check_name(name), **fields), True  # type: ignore[arg-type]

    def list(self, filter_text: str = "") -> list[SessionSummary]:
        """Every session in the folder, most recently used first; unreadable ones included
        with their ``problem``. A file where the folder should be: ``SessionFolderUnusable``."""
        self.check_folder()
        if not self.folder.is_dir():
            return []
        rows = []
        for path in self.folder.glob(f"*{TRANSCRIPT}"):
            name = path.name[: -len(TRANSCRIPT)]
            try:
                check_name(name)
            except SessionError:  # not a file this store wrote
                continue
            row = self._summary(name, path)
            if row.matches(filter_text):
                rows.append(row)
        rows.sort(key=lambda r: (r.updated is not None, r.updated or now(), r.name),
                  reverse=True)
        return rows

    def summary(self, name: str) -> SessionSummary:
        path = self.transcript_path(name)
        self.check_folder()
        if not path.is_file():
            raise SessionNotFound(f"no session named {name!r} in {self.folder}: "
                                  "`workbench sessions list` shows the saved ones")
        return self._summary(name, path)

    def _summary(self, name: str, path: Path) -> SessionSummary:
        cache = self.cache_path(name)
        cache_bytes = cache.stat().st_size if cache.is_file() else 0
        segments = self.segments_path(name)
        if segments.is_dir() and not segments.is_symlink():
            from .cache_segments import SegmentFolder

            cache_bytes += SegmentFolder(segments).size_bytes()
        try:
            toml_bytes = path.stat().st_size
            s = parse_session(name, path.read_bytes())
        except (BadSession, SessionTooNew) as exc:
            return SessionSummary(name, "", "", "", 0, None, None, _size(path), cache_bytes,
                                  problem=str(exc))
        except OSError as exc:
            return SessionSummary(name, "", "", "", 0, None, None, 0, cache_bytes,
                                  problem=f"cannot be read ({exc.strerror})")
        return SessionSummary(name, s.title or s.default_title(), s.model, s.adapter, s.turns,
                              s.created, s.updated, toml_bytes, cache_bytes)

    # -- writing -------------------------------------------------------------------------
    @serialized
    def save(self, session: Session) -> SavedTranscript:
        """Write the transcript atomically (taking the session's lock if needed).

        Sets ``session.updated`` (and a title from the first message if it has none).
        Refuses to overwrite a newer-schema file; a damaged file in the way is kept aside
        as ``NAME.toml.damaged-TIME`` rather than lost.
        """
        name = check_name(session.name)
        self.acquire(name)
        path = self.transcript_path(name)
        set_aside = self._guard_existing(name, path)
        session.updated = now()
        if not session.title:
            session.title = session.default_title()
        data = session.to_toml().encode("utf-8")
        atomic_write(path, data)
        st = path.stat()
        self._seen[name] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return SavedTranscript(path, len(data), session.updated, set_aside)

    def _guard_existing(self, name: str, path: Path) -> Path | None:
        """A transcript that changed on disk since this store last read or wrote it (a hand
        edit, another program) is never written over: it is kept aside, as
        ``NAME.toml.edited-TIME`` (or ``.damaged-TIME`` when it cannot be read), with a
        notice. So is one this store never read (what was not read is not written over)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        seen = self._seen.get(name)
        if seen == (st.st_size, st.st_mtime_ns, st.st_ino):
            return None
        try:
            parse_session(name, path.read_bytes())
            kind = "edited"
        except SessionTooNew:
            raise
        except (BadSession, OSError):
            kind = "damaged"
        aside = self._free_aside(path, kind)
        os.replace(path, aside)
        self.notices.append(
            (f"session {name!r} was changed on disk since it was opened"
             if seen is not None else f"a session {name!r} this workbench did not open was "
             "on disk") + f": that version is kept as {aside.name}, and the session was "
            "saved as the workbench holds it"
            if kind == "edited" else
            f"session {name!r} on disk could not be read: it is kept as {aside.name}")
        return aside

    @staticmethod
    def _free_aside(path: Path, kind: str) -> Path:
        stamp = f"{path.name}.{kind}-{now():%Y%m%d-%H%M%S}"
        aside, n = path.with_name(stamp), 1
        while os.path.lexists(aside):
            n += 1
            aside = path.with_name(f"{stamp}-{n}")
        return aside

    @serialized
    def delete(self, name: str) -> builtins.list[Path]:
        """Remove the session's transcript and caches; returns what was removed."""
        path = self.transcript_path(name)
        self.check_folder()
        if not path.exists() and not self.cache_path(name).exists():
            raise SessionNotFound(f"no session named {name!r} in {self.folder}: "
                                  "`workbench sessions list` shows the saved ones")
        self.acquire(name)
        removed = []
        try:
            for p in (self.cache_path(name), self.stale_path(name), path):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
            if self._delete_segments(name):
                removed.append(self.segments_path(name))
            self._seen.pop(name, None)
        finally:
            self.release(name)
        return removed

    @serialized
    def rename(self, old: str, new: str) -> None:
        """Rename a session (transcript and caches). The title is left as it is."""
        check_name(new)
        self.check_folder()
        if not self.exists(old):
            raise SessionNotFound(f"no session named {old!r} in {self.folder}: "
                                  "`workbench sessions list` shows the saved ones")
        if old == new:
            return
        if self.exists(new):
            raise SessionExists(f"a session named {new!r} exists already: pick another name "
                                "or delete that one first")
        held = self.holds(old)
        self.acquire(old)
        try:
            self.acquire(new)
        except SessionInUse:
            if not held:
                self.release(old)
            raise
        # The caches first: a crash half-way leaves the transcript under its old name.
        self._rename_segments(old, new)
        for src, dst in ((self.cache_path(old), self.cache_path(new)),
                         (self.stale_path(old), self.stale_path(new)),
                         (self.transcript_path(old), self.transcript_path(new))):
            with contextlib.suppress(FileNotFoundError):
                os.replace(src, dst)
        seen = self._seen.pop(old, None)
        if seen is not None:
            self._seen[new] = seen
        self.release(old)
        if not held:
            self.release(new)

    def _delete_segments(self, name: str) -> bool:
        """Remove ``NAME.cache/`` if it is the workbench's (its own files only; a folder
        holding anything else stays). True when it went."""
        from .cache_segments import SegmentFolder, SegmentsUnusable

        folder = SegmentFolder(self.segments_path(name))
        if not folder.exists():
            return False
        try:
            folder.check()
            folder.cleanup(None)
            for own in (folder.manifest_path, folder.path / ".workbench-cache"):
                own.unlink(missing_ok=True)
            folder.path.rmdir()
        except (SegmentsUnusable, OSError):
            return False
        return True

    def _rename_segments(self, old: str, new: str) -> None:
        """Move ``OLD.cache/`` to ``NEW.cache/`` (when it is ours and the name is free)."""
        from .cache_segments import SegmentFolder, SegmentsUnusable, remember

        src, dst = SegmentFolder(self.segments_path(old)), self.segments_path(new)
        if not src.exists():
            return
        try:
            src.check()
        except SegmentsUnusable:
            return
        if os.path.lexists(dst) and not self._delete_segments(new):
            return
        remember(src, None, [])
        os.replace(src.path, dst)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
