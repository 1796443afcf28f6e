"""The session store's user-facing errors: one line each, saying what is wrong and what to do."""

from __future__ import annotations

from common.errors import WorkbenchError


class SessionError(WorkbenchError):
    kind = "session"


class BadSessionName(SessionError):
    kind = "session-name"


class SessionNotFound(SessionError):
    kind = "session-not-found"


class BadSession(SessionError):
    """The transcript cannot be read as a session; the file is left as it is."""

    kind = "session-damaged"


class SessionTooNew(SessionError):
    """Written by a newer workbench; refused and left untouched."""

    kind = "session-too-new"


class SessionInUse(SessionError):
    """Another process (or another store in this one) has the session open for writing."""

    kind = "session-in-use"


class SessionExists(SessionError):
    kind = "session-exists"


class SessionFolderUnusable(SessionError):
    """The sessions folder is a file, cannot be created, or is not private enough."""

    kind = "session-folder"


class UnsafeLock(SessionError):
    """A session's lock file is a symbolic link or another file the workbench did not make:
    it is left as it is and nothing is written."""

    kind = "session-lock"


class ExportRefused(SessionError):
    """An export would overwrite a file (without --force) or a session's own files."""

    kind = "export-refused"
