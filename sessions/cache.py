"""Prompt-cache files: save the engine's KV cache beside a transcript, and resume from it.

A resumed session should answer its next message as fast as if the process had never
stopped. ``save_cache`` takes the engine's active cache through its public snapshot
(``EngineCore.snapshot``), cut to the tokens that match the transcript, and writes it as a
standard mlx-lm prompt cache (``cache_file.write_cache``: with the model's fingerprint, the
adapter identity, the token ids, a checksum of the tensor data and a schema version).
``resume`` checks all of those against the loaded model and the transcript before it trusts
the file (``cache_file.load_checked``) and gives it back with ``EngineCore.restore``. Any
mismatch (missing, truncated, corrupt, another model, adapter or schema) sets the file
aside as ``NAME.safetensors.stale`` with a one-line notice, and the transcript is prefilled
again, so the conversation is never lost.

The functions that touch MLX take the ``EngineCore`` and run on the engine thread: give
them to ``Engine.submit`` (``submit_resume`` and ``submit_autosave`` do that for you).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import NoModel
from engine.events import Notice
from engine.prompt_cache import common_prefix
from models.repo_id import looks_like_repo_id

from .cache_file import CacheUnusable, load_checked, write_cache
from .errors import SessionError
from .fingerprint import model_fingerprint
from .store import SavedTranscript, SessionStore
from .transcript import Session

if TYPE_CHECKING:  # the engine's core and streams are only named here, never imported
    from engine import EngineAPI, EngineCore, EventStream

Emit = Callable[[Any], None]


@dataclass(frozen=True)
class CacheSaved:
    """What ``save_cache`` wrote (``path`` None and ``skipped`` set when it wrote nothing)."""

    path: Path | None
    tokens: int
    bytes: int
    seconds: float
    skipped: str | None = None


@dataclass(frozen=True)
class SaveReport:
    """One autosave: the transcript (always) and the prompt cache (when there is one)."""

    transcript: SavedTranscript
    cache: CacheSaved
    title: str
    model_fingerprint: str


@dataclass(frozen=True)
class ResumeReport:
    """How a session was resumed.

    ``reused``: the saved cache was loaded; ``cached_tokens`` of it matched the transcript.
    Otherwise ``reason`` says why not, the file (if any) was moved to ``set_aside``, and
    ``prefilled_tokens`` of the transcript were evaluated again (fewer if ``cancelled``).
    ``notice`` is the one line to show the user (None when all went as hoped).
    """

    reused: bool
    cached_tokens: int
    prefilled_tokens: int
    history_tokens: int
    reason: str = ""
    notice: str | None = None
    set_aside: Path | None = None
    cancelled: bool = False
    seconds: float = 0.0


# -- engine-thread helpers -----------------------------------------------------------------
def _require_model(core: EngineCore) -> None:
    if core.loaded is None:
        raise NoModel("no model is loaded: load the session's model first, then resume it")


def render_history(core: EngineCore, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the conversation so far, as the next turn's prompt will begin."""
    return core.render(messages, add_generation_prompt=False)


def model_ref(core: EngineCore) -> str:
    """The ``--model`` string ``mlx_lm generate --prompt-cache-file`` will be given."""
    assert core.info is not None
    name = core.info.name
    if looks_like_repo_id(name) and not Path(name).exists():
        return name
    return core.info.path


# -- the engine-thread jobs ----------------------------------------------------------------
def save_cache(core: EngineCore, store: SessionStore, session: Session) -> CacheSaved:
    """Write the active prompt cache as ``NAME.safetensors`` (engine thread).

    Only the tokens that agree with the transcript are kept (the next turn could not reuse
    the others). Writes nothing, and says why in ``skipped``, when nothing matches.
    """
    _require_model(core)
    assert core.info is not None
    start = time.perf_counter()
    snap = core.snapshot(valid=render_history(core, session.chat_messages()))
    if snap is None:
        skipped = ("nothing is cached yet" if not core.cached_tokens()
                   else "the engine's cache holds another conversation")
        return CacheSaved(None, 0, 0, 0.0, skipped=skipped)
    keep = len(snap.tokens)
    path = store.cache_path(session.name)
    store.acquire(session.name)
    write_cache(core, path, snap.cache, list(snap.tokens), model_ref(core))
    return CacheSaved(path, keep, path.stat().st_size, time.perf_counter() - start)


def autosave(core: EngineCore, store: SessionStore, session: Session) -> SaveReport:
    """Save the transcript, then the prompt cache (engine thread). Give it a snapshot of the
    session (``submit_autosave`` does): it sets ``updated``, ``title`` and the model's
    fingerprint on the object it is given.

    A transcript that cannot be written raises ``SessionError``; a cache that cannot be
    written is reported in ``report.cache.skipped`` (the transcript is what matters).
    """
    if core.info is not None:
        session.model_fingerprint = model_fingerprint(core.info.path)
        session.model = session.model or model_ref(core)
    try:
        saved = store.save(session)
    except OSError as exc:
        raise SessionError(f"session {session.name!r} could not be saved ({exc.strerror}): "
                           f"check that {store.folder} is writable and has free space") from None
    try:
        cache = save_cache(core, store, session) if core.info is not None else CacheSaved(
            None, 0, 0, 0.0, skipped="no model is loaded")
    except OSError as exc:
        cache = CacheSaved(None, 0, 0, 0.0,
                           skipped=f"the prompt cache could not be written ({exc.strerror})")
    return SaveReport(saved, cache, session.title, session.model_fingerprint)


def resume(core: EngineCore, store: SessionStore, session: Session, emit: Emit | None = None,
           cancel: threading.Event | None = None) -> ResumeReport:
    """Make the engine ready to continue ``session`` (engine thread; the model and adapter
    the session should run with must be loaded already).

    Loads ``NAME.safetensors`` if it passes every check, so the next turn prefills only the
    new message. Otherwise sets the file aside, emits a ``Notice`` and prefills the
    transcript again now (cancellable; progress as ``PrefillProgress`` events), then saves a
    fresh cache. The engine's previous caches are dropped either way.
    """
    emit = emit or (lambda _event: None)
    cancel = cancel or threading.Event()
    _require_model(core)
    start = time.perf_counter()
    core.reset_cache()
    messages = session.chat_messages()
    if not any(m["role"] == "user" for m in messages):
        return ResumeReport(False, 0, 0, 0, reason="the conversation is empty")
    history = render_history(core, messages)
    path = store.cache_path(session.name)
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    try:
        cache, tokens = load_checked(core, path)
        common = common_prefix(tokens, history)
        if common == 0:
            raise CacheUnusable("belongs to another conversation")
        if common < len(tokens) and not can_trim_prompt_cache(cache):
            raise CacheUnusable(
                f"agrees with the transcript for {common} of its {len(tokens)} tokens and "
                "cannot be cut back to them (its sliding-window layers keep only the latest "
                "tokens)")
    except CacheUnusable as why:
        return _rebuild(core, store, session, history, str(why), emit, cancel, start)

    notice = None
    if common < len(tokens):
        trim_prompt_cache(cache, len(tokens) - common)
        notice = (f"session {session.name!r}: the saved prompt cache agrees with the "
                  f"transcript for {common} of its {len(tokens)} tokens (the transcript, or how "
                  "the model's template renders it, changed since the save): the other "
                  f"{len(history) - common} will be read with the next message")
        emit(Notice(notice))
    core.restore(cache, tokens[:common])
    return ResumeReport(True, common, 0, len(history), notice=notice,
                        seconds=time.perf_counter() - start)


def _rebuild(core: EngineCore, store: SessionStore, session: Session, history: list[int],
             reason: str, emit: Emit, cancel: threading.Event, start: float) -> ResumeReport:
    path = store.cache_path(session.name)
    aside: Path | None = None
    if path.exists():
        store.acquire(session.name)
        aside = store.stale_path(session.name)
        os.replace(path, aside)
    where = f"; it was set aside as {aside.name}" if aside else ""
    notice = (f"session {session.name!r}: the saved prompt cache {reason}{where}; re-reading "
              f"the conversation ({len(history)} tokens)")
    emit(Notice(notice))
    done, cancelled = core.prefill(history, emit, cancel)
    if not cancelled:
        with contextlib.suppress(OSError):
            save_cache(core, store, session)
    return ResumeReport(False, 0, done, len(history), reason=reason, notice=notice,
                        set_aside=aside, cancelled=cancelled,
                        seconds=time.perf_counter() - start)


# -- for the UI: submit the jobs to the engine ---------------------------------------------
def submit_resume(engine: EngineAPI, store: SessionStore, session: Session
                  ) -> EventStream[ResumeReport]:
    """``engine.submit`` a resume of ``session``. Ends in ``Result(ResumeReport)``."""
    snapshot = copy.deepcopy(session)
    return engine.submit(lambda core, emit, cancel: resume(core, store, snapshot, emit, cancel))


def submit_autosave(engine: EngineAPI, store: SessionStore, session: Session
                    ) -> EventStream[SaveReport]:
    """``engine.submit`` an autosave of a snapshot of ``session``. Ends in
    ``Result(SaveReport)`` (or ``Error`` if the transcript could not be written)."""
    snapshot = copy.deepcopy(session)
    return engine.submit(lambda core, _emit, _cancel: autosave(core, store, snapshot))
