"""Resuming a session from its saved prompt cache (engine thread), or from its transcript.

Why a module of its own: a resume has its own checks and fallbacks, apart from saving.
``resume`` loads ``NAME.safetensors`` (the *base*) through ``cache_file.load_checked_digest``,
which checks it against the loaded model and the transcript before trusting it, then the
segments of ``NAME.cache/`` its manifest names (``sessions.cache_segments``), and stops at
the first that fails its checks: the tokens after it are read again from the transcript,
with a one-line notice. The cache is given back with ``EngineCore.restore``. Any mismatch
(missing, truncated, corrupt, another model, adapter or schema) sets the file aside as
``NAME.safetensors.stale`` with a one-line notice, and the transcript is prefilled again, so
the conversation is never lost. ``submit_resume`` hands a resume to ``Engine.with_cache``.

The saves a resume makes afterwards are ``sessions.cache``'s (``save_cache``,
``save_incremental``); ``sessions.cache`` re-exports the names defined here.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.events import Notice
from engine.prompt_cache import common_prefix
from models.fingerprint import model_fingerprint

from .cache import Emit, render_history, require_model, save_cache, save_incremental
from .cache_file import CacheUnusable, load_checked_digest
from .cache_segments import (
    Manifest,
    SegmentFolder,
    SegmentsUnusable,
    cuttable,
    layer_kinds,
    load_chain,
)
from .store import SessionStore
from .transcript import Session

if TYPE_CHECKING:  # the engine's core and streams are only named here, never imported
    from engine import EngineAPI, EventStream
    from engine.protocol import CacheCore


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


def resume(core: CacheCore, store: SessionStore, session: Session, emit: Emit | None = None,
           cancel: threading.Event | None = None) -> ResumeReport:
    """Make the engine ready to continue ``session`` (engine thread; the model and adapter
    the session should run with must be loaded already).

    Loads ``NAME.safetensors`` if it passes every check, then the segments of
    ``NAME.cache/`` that extend it (up to the first that fails: the tokens after it are
    prefilled again now, with a notice), so the next turn prefills only the new message.
    Otherwise sets the file aside, emits a ``Notice`` and prefills the
    transcript again now (cancellable; progress as ``PrefillProgress`` events), then saves a
    fresh cache. The engine's previous caches are dropped either way.
    """
    emit = emit or (lambda _event: None)
    cancel = cancel or threading.Event()
    require_model(core)
    start = time.perf_counter()
    core.reset_cache()
    messages = session.chat_messages()
    if not any(m["role"] == "user" for m in messages):
        return ResumeReport(False, 0, 0, 0, reason="the conversation is empty")
    history = render_history(core, messages)
    path = store.cache_path(session.name)
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    try:
        cache, tokens, digest = load_checked_digest(core, path)
        cache, tokens, problem = _extend_with_segments(core, store, session.name, cache,
                                                       tokens, digest)
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
    if problem is not None and common < len(history):
        notice = (f"session {session.name!r}: the saved prompt cache {problem}: resuming "
                  f"from its first {common} tokens and re-reading the other "
                  f"{len(history) - common} from the transcript")
        emit(Notice(notice))
        core.restore(cache, tokens[:common])
        done, cancelled = core.prefill(history, emit, cancel)
        if not cancelled:  # the saved chain is whole again
            with contextlib.suppress(OSError, CacheUnusable):
                save_incremental(core, store, session, valid_upto=common)
        return ResumeReport(True, common, done, len(history), reason=problem, notice=notice,
                            cancelled=cancelled, seconds=time.perf_counter() - start)
    if common < len(tokens):
        notice = (f"session {session.name!r}: the saved prompt cache agrees with the "
                  f"transcript for {common} of its {len(tokens)} tokens (the transcript, or how "
                  "the model's template renders it, changed since the save): the other "
                  f"{len(history) - common} will be read with the next message")
        emit(Notice(notice))
    core.restore(cache, tokens[:common])
    return ResumeReport(True, common, 0, len(history), notice=notice,
                        seconds=time.perf_counter() - start)


def _extend_with_segments(core: CacheCore, store: SessionStore, name: str, cache: list[Any],
                          tokens: list[int], digest: str
                          ) -> tuple[list[Any], list[int], str | None]:
    """The whole file's cache followed by the segments its manifest names (those that pass
    their checks, in order); and why the chain stopped early, if it did. A manifest made
    for another base (the whole file was written after it) is left out silently: the whole
    file is the newer save. Reads only."""
    assert core.info is not None
    if not cuttable(cache):
        return cache, tokens, None
    folder = SegmentFolder(store.segments_path(name))
    manifest: Manifest | None = None
    problem: str | None = None
    if folder.exists():
        try:
            manifest = folder.read_manifest()
        except SegmentsUnusable as why:
            problem = str(why)
    if manifest is not None:
        classes, quant = layer_kinds(cache)
        if (manifest.fingerprint, manifest.adapter, manifest.classes, manifest.quant,
                manifest.base_digest) != (model_fingerprint(core.info.path),
                                          core.adapter_identity(), classes, quant, digest):
            manifest = None
        elif manifest.base_tokens > len(tokens):
            manifest, problem = None, "has a segment manifest that does not fit its base"
    chain = load_chain(folder, manifest, cache, tokens)
    return chain.cache, chain.tokens, chain.problem or problem


def _rebuild(core: CacheCore, store: SessionStore, session: Session, history: list[int],
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
    """``engine.with_cache`` a resume of ``session``. Ends in ``Result(ResumeReport)``."""
    snapshot = copy.deepcopy(session)
    return engine.with_cache(lambda core, emit, cancel: resume(core, store, snapshot, emit,
                                                               cancel))

