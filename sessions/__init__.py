"""The session store: TOML transcripts plus safetensors prompt caches (no UI imports).

A session is ``NAME.toml`` (the transcript: the truth) and ``NAME.safetensors`` (the
model's prompt cache: only saves time) in the sessions folder. ``SessionStore`` handles the
files from any thread; ``sessions.cache`` holds the jobs that run on the engine thread
(``save_cache``, ``autosave``, and ``submit_autosave`` which hands them to ``Engine.submit``;
``resume`` and ``submit_resume`` are in ``sessions.cache_resume``). Importing this package
imports neither MLX nor any UI.

Names are imported when first used, so importing one light module of the package (say
``sessions.files``) does not load the others.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import (
        CacheSaved,
        SaveReport,
        autosave,
        close_cache,
        save_cache,
        save_incremental,
        submit_autosave,
        submit_close,
    )
    from .cache_file import CacheUnusable, read_cache_header
    from .cache_resume import ResumeReport, resume, submit_resume
    from .errors import (
        BadSession,
        BadSessionName,
        SessionError,
        SessionExists,
        SessionInUse,
        SessionNotFound,
        SessionTooNew,
    )
    from .export import export_data, export_json, export_markdown
    from .names import check_name, sanitize_name
    from .store import SavedTranscript, SessionStore, SessionSummary
    from .transcript import SCHEMA_VERSION, Session, SessionMessage, parse_session

_PUBLIC = {
    "BadSession": "errors",
    "BadSessionName": "errors",
    "CacheSaved": "cache",
    "CacheUnusable": "cache_file",
    "ResumeReport": "cache_resume",
    "SCHEMA_VERSION": "transcript",
    "SaveReport": "cache",
    "SavedTranscript": "store",
    "Session": "transcript",
    "SessionError": "errors",
    "SessionExists": "errors",
    "SessionInUse": "errors",
    "SessionMessage": "transcript",
    "SessionNotFound": "errors",
    "SessionStore": "store",
    "SessionSummary": "store",
    "SessionTooNew": "errors",
    "autosave": "cache",
    "close_cache": "cache",
    "check_name": "names",
    "export_data": "export",
    "export_json": "export",
    "export_markdown": "export",
    "parse_session": "transcript",
    "read_cache_header": "cache_file",
    "resume": "cache_resume",
    "sanitize_name": "names",
    "save_cache": "cache",
    "save_incremental": "cache",
    "submit_autosave": "cache",
    "submit_close": "cache",
    "submit_resume": "cache_resume",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'sessions' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "SCHEMA_VERSION",
    "BadSession",
    "BadSessionName",
    "CacheSaved",
    "CacheUnusable",
    "ResumeReport",
    "SaveReport",
    "SavedTranscript",
    "Session",
    "SessionError",
    "SessionExists",
    "SessionInUse",
    "SessionMessage",
    "SessionNotFound",
    "SessionStore",
    "SessionSummary",
    "SessionTooNew",
    "autosave",
    "check_name",
    "close_cache",
    "export_data",
    "export_json",
    "export_markdown",
    "parse_session",
    "read_cache_header",
    "resume",
    "sanitize_name",
    "save_cache",
    "save_incremental",
    "submit_autosave",
    "submit_close",
    "submit_resume",
]
