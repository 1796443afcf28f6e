"""Prompt-cache files: save the engine's KV cache beside a transcript, and resume from it.

A resumed session should answer its next message as fast as if the process had never
stopped. ``save_cache`` takes the engine's active cache through its public snapshot
(``EngineCore.snapshot``), cut to the tokens that match the transcript, and writes it as a
standard mlx-lm prompt cache (``cache_file.write_cache``: with the model's fingerprint, the
adapter identity, the token ids, a checksum of the tensor data and a schema version).

Why this module: it is the saving side of the engine-thread jobs (``save_cache``,
``save_incremental``, ``autosave``, ``close_cache`` and the ``submit_*`` that hand them to
``Engine.with_cache``). Resuming lives in ``sessions.cache_resume``, which builds on this module.

An autosave does not rewrite that whole file after every turn: ``save_incremental``
appends only the tokens the turn added, as a segment in ``NAME.cache/`` after the whole
file (the *base*), committed by an atomic manifest (``sessions.cache_segments`` says why and
how). The whole file is written again on the first save, on an explicit save and when the
session is closed (``autosave(..., whole=True)``, ``submit_close``), and when the layers
cannot be cut into token ranges (sliding windows). A resume loads the base, then the
segments its manifest names (``sessions.cache_resume`` says what it checks).

The functions that touch MLX take the core as ``engine.protocol.CacheCore`` (only what a
save or a resume needs of it: render, snapshot, restore, prefill, identities) and run on the
engine thread: give them to ``Engine.with_cache`` (``submit_resume`` and ``submit_autosave``
do that for you).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import NoModel
from common.repo_id import looks_like_repo_id
from models.fingerprint import model_fingerprint

from .cache_file import CacheUnusable as CacheUnusable
from .cache_file import check_header, write_cache
from .cache_segments import (
    MAX_SEGMENTS,
    Manifest,
    SegmentFolder,
    SegmentsUnusable,
    cuttable,
    layer_kinds,
    plan,
    remember,
    saved_tokens,
    write_segment,
)
from .errors import SessionError
from .store import SavedTranscript, SessionStore
from .transcript import Session

if TYPE_CHECKING:  # the engine's core and streams are only named here, never imported
    from engine import EngineAPI, EventStream
    from engine.protocol import CacheCore


Emit = Callable[[Any], None]


@dataclass(frozen=True)
class CacheSaved:
    """What a cache save wrote (``path`` None and ``skipped`` set when it wrote nothing).

    ``tokens``: how many tokens the saved cache holds now; ``bytes``: what this save wrote
    (the whole file, or the new segment); ``kind``: ``"whole"`` (``NAME.safetensors``),
    ``"segment"`` (one segment of ``NAME.cache/``), ``"manifest"`` (only the manifest: the
    saved cache was cut back) or ``"none"``; ``new_tokens``: tokens written by this save.
    """

    path: Path | None
    tokens: int
    bytes: int
    seconds: float
    skipped: str | None = None
    kind: str = "whole"
    new_tokens: int = 0


@dataclass(frozen=True)
class SaveReport:
    """One autosave: the transcript (always) and the prompt cache (when there is one)."""

    transcript: SavedTranscript
    cache: CacheSaved
    title: str
    model_fingerprint: str



# -- engine-thread helpers -----------------------------------------------------------------
def require_model(core: CacheCore) -> None:
    if core.info is None:
        raise NoModel("no model is loaded: load the session's model first, then resume it")


def render_history(core: CacheCore, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the conversation so far, as the next turn's prompt will begin."""
    return core.render(messages, add_generation_prompt=False)


def model_ref(core: CacheCore) -> str:
    """The ``--model`` string ``mlx_lm generate --prompt-cache-file`` will be given."""
    assert core.info is not None
    name = core.info.name
    if looks_like_repo_id(name) and not Path(name).exists():
        return name
    return core.info.path


# -- the engine-thread jobs ----------------------------------------------------------------
def save_cache(core: CacheCore, store: SessionStore, session: Session) -> CacheSaved:
    """Write the active prompt cache whole, as ``NAME.safetensors`` (engine thread), and
    make it the base of the segment chain (the old segments go).

    Only the tokens that agree with the transcript are kept (the next turn could not reuse
    the others). Writes nothing, and says why in ``skipped``, when nothing matches or the
    file already holds exactly this cache.
    """
    require_model(core)
    start = time.perf_counter()
    snap = core.snapshot(valid=render_history(core, session.chat_messages()))
    if snap is None:
        return _nothing_cached(core)
    return _save_whole(core, store, session, snap.cache, list(snap.tokens), start)


def _nothing_cached(core: CacheCore) -> CacheSaved:
    skipped = ("nothing is cached yet" if not core.cached_tokens()
               else "the engine's cache holds another conversation")
    return CacheSaved(None, 0, 0, 0.0, skipped=skipped, kind="none")


def _save_whole(core: CacheCore, store: SessionStore, session: Session, cache: list[Any],
                tokens: list[int], start: float) -> CacheSaved:
    assert core.info is not None
    path = store.cache_path(session.name)
    store.acquire(session.name)
    folder = SegmentFolder(store.segments_path(session.name))
    if _whole_is_current(core, path, folder, tokens):
        return CacheSaved(path, len(tokens), 0, time.perf_counter() - start,
                          skipped="the whole file holds this cache already", kind="none")
    digest = write_cache(core, path, cache, tokens, model_ref(core))
    written = path.stat().st_size
    if folder.exists():
        with contextlib.suppress(SegmentsUnusable, OSError):
            folder.check()
            classes, quant = layer_kinds(cache)
            manifest = Manifest(model_fingerprint(core.info.path), core.adapter_identity(),
                                classes, quant, digest, len(tokens), ())
            folder.write_manifest(manifest)
            remember(folder, manifest, tokens)
            folder.cleanup(manifest)
    return CacheSaved(path, len(tokens), written, time.perf_counter() - start, kind="whole",
                      new_tokens=len(tokens))


def _whole_is_current(core: CacheCore, path: Path, folder: SegmentFolder,
                      tokens: list[int]) -> bool:
    """The whole file holds exactly ``tokens`` and no segment extends it (so a close after
    a resume with nothing new writes nothing)."""
    try:
        header = check_header(core, path)
    except CacheUnusable:
        return False
    if header.tokens != tokens:
        return False
    try:
        manifest = folder.read_manifest() if folder.exists() else None
    except SegmentsUnusable:
        return False
    return manifest is None or (not manifest.segments and manifest.base_tokens == len(tokens)
                                and manifest.base_digest == header.metadata.get(
                                    "workbench_digest"))


def save_incremental(core: CacheCore, store: SessionStore, session: Session,
                     valid_upto: int | None = None) -> CacheSaved:
    """Save the active prompt cache, writing only the tokens not saved yet (engine thread).

    ``valid_upto``: only that many saved tokens are known good (a resume found a damaged
    segment after them): the segments past it are replaced.

    The tokens that agree with the transcript are compared with the saved chain (the whole
    file and the segments after it); what they share stays, one new segment holds the rest,
    and the manifest is replaced atomically. The whole file is written instead on the first
    save, when the layers cannot be cut into token ranges, when the segment folder cannot be
    used, or after ``MAX_SEGMENTS`` segments.
    """
    require_model(core)
    assert core.info is not None
    start = time.perf_counter()
    snap = core.snapshot(valid=render_history(core, session.chat_messages()))
    if snap is None:
        return _nothing_cached(core)
    cache, tokens = snap.cache, list(snap.tokens)
    if not cuttable(cache):
        return _save_whole(core, store, session, cache, tokens, start)
    name = session.name
    store.acquire(name)
    folder = SegmentFolder(store.segments_path(name))
    try:
        base = check_header(core, store.cache_path(name))
        digest = base.metadata.get("workbench_digest", "")
        base_tokens = base.tokens or []
        folder.check(create=True)
    except (CacheUnusable, OSError):  # no usable whole file yet, or the folder is not ours
        return _save_whole(core, store, session, cache, tokens, start)
    classes, quant = layer_kinds(cache)
    if tuple(base.classes) != classes:  # e.g. the cache was quantized since the whole save
        return _save_whole(core, store, session, cache, tokens, start)
    fingerprint, adapter = model_fingerprint(core.info.path), core.adapter_identity()
    try:
        manifest = folder.read_manifest()
    except SegmentsUnusable:
        manifest = None
    if manifest is not None and ((manifest.fingerprint, manifest.adapter, manifest.classes,
                                  manifest.quant, manifest.base_digest) != (
            fingerprint, adapter, classes, quant, digest)
            or manifest.base_tokens > len(base_tokens)):
        manifest = None  # made under other weights, or the whole file is newer
    old = manifest
    if manifest is None:  # adopt the whole file as the base
        manifest = Manifest(fingerprint, adapter, classes, quant, digest, len(base_tokens), ())
        saved = base_tokens
    else:
        try:
            saved = saved_tokens(folder, manifest, base_tokens)
        except SegmentsUnusable:
            manifest = Manifest(fingerprint, adapter, classes, quant, digest,
                                manifest.base_tokens, ())
            saved = base_tokens[: manifest.base_tokens]
    if valid_upto is not None:
        saved = saved[:valid_upto]
    new, at = plan(manifest, saved, tokens)
    if len(new.segments) >= MAX_SEGMENTS:
        return _save_whole(core, store, session, cache, tokens, start)
    written, kind = 0, "manifest"
    if at < len(tokens):
        segment = write_segment(folder, cache, tokens, at, len(tokens))
        new = replace(new, segments=(*new.segments, segment))
        written, kind = segment.bytes, "segment"
    if new != old:
        folder.write_manifest(new)
    elif kind == "manifest":
        kind = "none"
    remember(folder, new, tokens)
    with contextlib.suppress(OSError):
        folder.cleanup(new)
    return CacheSaved(folder.manifest_path, len(tokens), written, time.perf_counter() - start,
                      kind=kind, new_tokens=len(tokens) - at)


def autosave(core: CacheCore, store: SessionStore, session: Session,
             whole: bool = False) -> SaveReport:
    """Save the transcript, then the prompt cache (engine thread): only what is new
    (``save_incremental``), or with ``whole`` the standard single file (``save_cache``: an
    explicit save, a close). Give it a snapshot of the session (``submit_autosave`` does):
    it sets ``updated``, ``title`` and the model's fingerprint on the object it is given.

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
    save = save_cache if whole else save_incremental
    try:
        cache = save(core, store, session) if core.info is not None else CacheSaved(
            None, 0, 0, 0.0, skipped="no model is loaded", kind="none")
    except OSError as exc:
        cache = CacheSaved(None, 0, 0, 0.0, kind="none",
                           skipped=f"the prompt cache could not be written ({exc.strerror})")
    return SaveReport(saved, cache, session.title, session.model_fingerprint)



def submit_autosave(engine: EngineAPI, store: SessionStore, session: Session,
                    whole: bool = False) -> EventStream[SaveReport]:
    """``engine.with_cache`` an autosave of a snapshot of ``session`` (with ``whole``: the
    standard single cache file, as an explicit save). Ends in ``Result(SaveReport)`` (or
    ``Error`` if the transcript could not be written)."""
    snapshot = copy.deepcopy(session)
    return engine.with_cache(lambda core, _emit, _cancel: autosave(core, store, snapshot, whole))


def close_cache(core: CacheCore, store: SessionStore, session: Session) -> CacheSaved:
    """When a session is closed (or the app quits): write its prompt cache whole, as the
    standard ``NAME.safetensors`` that ``mlx_lm generate --prompt-cache-file`` reads
    (nothing is written when that file holds it already). Never raises for a cache that
    cannot be saved: says why in ``skipped``."""
    if core.info is None:
        return CacheSaved(None, 0, 0, 0.0, skipped="no model is loaded", kind="none")
    try:
        return save_cache(core, store, session)
    except (OSError, SessionError) as exc:
        return CacheSaved(None, 0, 0, 0.0, kind="none",
                          skipped=f"the prompt cache could not be written ({exc})")


def submit_close(engine: EngineAPI, store: SessionStore, session: Session
                 ) -> EventStream[CacheSaved]:
    """``engine.with_cache`` ``close_cache`` for a snapshot of ``session`` (queued after the
    autosaves in flight, so it sees the same cache). Ends in ``Result(CacheSaved)``."""
    snapshot = copy.deepcopy(session)
    return engine.with_cache(lambda core, _emit, _cancel: close_cache(core, store, snapshot))


