"""The engine thread: a queue of requests in, an ``EventStream`` of events out per request.

This is plumbing around the library layer (``EngineCore``, ``run_turn``): every public
method returns at once with a typed stream; the thread takes one request at a time, runs it
against the core and puts what it yields or returns on that request's stream. An error a
user can cause ends the stream with one ``Error`` line; anything else is reported too, and
the thread keeps running. Listeners (``subscribe``) hear every model and adapter change,
whoever caused it, so no face has to poll.
"""

from __future__ import annotations

import atexit
import itertools
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from common.errors import WorkbenchError

from . import memory as mem
from .events import (
    AdapterChanged,
    EngineState,
    MemoryReading,
    ModelChanged,
    ModelInfo,
    ModelLoaded,
    Notice,
    StateEvent,
    TurnDone,
)
from .protocol import AdapterSwap, CacheCore, StateHolder
from .requests import RequestThread
from .sampling import SamplingParams, TurnOptions
from .speculative import DecodingSettings
from .stream import EventStream

if TYPE_CHECKING:  # the core, its adapters and models are imported on the engine thread
    from .adapter_swap import AdapterState
    from .adapters import AdapterInfo
    from .core import EngineCore

T = TypeVar("T")
Message = Mapping[str, str]
Emit = Callable[[Any], None]
Job = Callable[["EngineCore", Emit, threading.Event], Any]
Listener = Callable[[StateEvent], None]


_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_live_engines):
        engine.close()


def _restore(core: EngineCore, before: AdapterState, emit: Emit) -> None:
    """Put back the adapter (and scale) of ``before``; if it cannot be had any more (its
    folder changed on disk), the base model, with a notice."""
    state = core.adapter_state()
    if state.path == before.path and (before.path is None or state.scale == before.scale):
        return
    try:
        core.use_adapter(before.path, before.scale)
    except WorkbenchError as exc:
        core.use_adapter(None)
        emit(Notice(f"the adapter active before could not be restored ({exc}): the base "
                    "model is active"))


class Engine(RequestThread, StateHolder):
    """The handle other threads hold. Every method returns at once; results arrive as events."""

    _ids = itertools.count(1)

    def __init__(self, *, prefill_step_size: int | None = None,
                 max_kv_size: int | None = None,
                 memory_probe: mem.MemoryProbe | None = None,
                 max_prepared_adapters: int = 4, adapter_mode: str = "unfused",
                 warm_up: bool | None = None,
                 decoding: DecodingSettings | None = None,
                 draft_model: str | None = None) -> None:
        self._listeners: list[Listener] = []
        # What the engine holds, for any thread: replaced whole (under the lock) on a change.
        # ``draft_wanted``: the draft model loaded after each model load (load_draft).
        self._hold(EngineState(None, None, decoding or DecodingSettings(), adapter_mode,
                               draft_model))
        self._core_args = (prefill_step_size, max_kv_size,
                           memory_probe or mem.available_memory, max_prepared_adapters,
                           adapter_mode, warm_up)
        # Made at the first request, on the engine thread, so that an app's first frame
        # does not share the interpreter with the core's imports.
        self._core: EngineCore | None = None
        # KV quantization, prompt lookup, draft tokens (engine/speculative.py): the settings
        # the core has taken (state.decoding: the last ones asked for).
        self._decoding = decoding
        super().__init__(f"mlx-engine-{next(self._ids)}")
        _live_engines.add(self)

    # -- listeners -----------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` (on the engine thread: keep it short, hand over to your own
        thread) with ``ModelChanged`` / ``AdapterChanged`` after every change. Returns the
        function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners \
            else None

    def _announce(self, core: EngineCore, *, swapped: bool = True) -> None:
        """Publish the core's model and adapter to other threads, and tell the listeners."""
        info = core.info
        if info != self.info:
            self._set_state(info=info)
            self._broadcast(ModelChanged(info))
        adapter = core.adapter_state() if core.loaded is not None else None
        self._set_state(adapter=adapter, adapter_mode=core.adapters.mode)
        if adapter is not None:
            self._broadcast(AdapterChanged(adapter, swapped))

    def _broadcast(self, event: StateEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the engine
                pass

    # -- requests ------------------------------------------------------------------------
    def _submit_core(self, job: Job, wrap: bool) -> EventStream[Any]:
        """Queue ``job(core, emit, cancel)``: a job with the engine's state (made on first
        use, on the engine thread)."""
        def with_core(emit: Emit, cancel: threading.Event) -> Any:
            if self._core is None:
                # Under mlx.launch, rank 0's core mirrors its requests to the other ranks
                # (issue 14, engine/distributed.py); otherwise this is a plain EngineCore.
                from .distributed_core import make_core

                self._core = make_core(self._core_args)
                if self._decoding is not None:
                    self._core.set_decoding(self._decoding)
            return job(self._core, emit, cancel)

        return self._submit(with_core, wrap)

    def submit(self, fn: Callable[[EngineCore, Emit, threading.Event], T]) -> EventStream[T]:
        """Run ``fn(core, emit, cancel)`` on the engine thread. Ends in ``Result(value)``.

        The whole core, for tests and benchmarks (and MLX work that needs no core, e.g. a
        quantization); a session's cache work goes through ``with_cache``. ``fn`` raises
        ``WorkbenchError`` for a user-facing failure.
        """
        return self._submit_core(fn, wrap=True)

    def run_mlx(self, fn: Callable[[Emit, threading.Event], T]) -> EventStream[T]:
        """Run ``fn(emit, cancel)`` on the engine thread, with none of the engine's state:
        MLX work of its own (building the demo kit, a quantization) belongs on the one
        thread that owns MLX. Ends in ``Result(value)``."""
        return self._submit(fn, wrap=True)

    def with_cache(self, fn: Callable[[CacheCore, Emit, threading.Event], T]
                   ) -> EventStream[T]:
        """Run ``fn(cache_core, emit, cancel)`` on the engine thread, where ``cache_core`` is
        the core seen through ``CacheCore``: what a session's save and resume need (render,
        snapshot, restore, prefill, identities), nothing more. Ends in ``Result(value)``."""
        return self._submit_core(fn, wrap=True)

    def load(self, model: str, adapter: str | None = None) -> EventStream[ModelInfo]:
        """Load ``model`` (folder or repo id), replacing any loaded model. Ends in
        ``ModelLoaded`` (``result()``: its ``ModelInfo``)."""

        def job(core: EngineCore, emit: Emit, cancel: threading.Event) -> ModelLoaded:
            try:
                info = core.load(model, adapter, emit, cancel)
                wanted = self._state.draft_wanted
                if wanted and core.draft is None:
                    try:
                        core.load_draft(wanted, emit, cancel)
                    except WorkbenchError as exc:
                        emit(Notice(f"{info.name} is loaded without a draft model: {exc}"))
                    info = core.info or info
            finally:  # loaded, or failed (a failure before the old model went keeps it)
                self._set_state(info=None)  # a reload of the same model is a change too
                self._announce(core, swapped=False)
            return ModelLoaded(info)

        return self._submit_core(job, wrap=False)

    def chat(self, messages: Iterable[Message], params: SamplingParams | None = None, *,
             ignore_eos: bool = False, options: TurnOptions | None = None
             ) -> EventStream[TurnDone]:
        """Generate the assistant's reply to ``messages`` (see ``run_turn``): events
        ``PrefillProgress``, ``TokenText``, ``TokenLogprob`` (with ``options.logprobs``),
        ``Memory``, ``Notice``, then ``TurnDone``."""
        msgs = [dict(m) for m in messages]
        params = params or SamplingParams()
        options = options or TurnOptions(ignore_eos=ignore_eos)
        submitted = time.perf_counter()

        def job(core: EngineCore, emit: Emit, cancel: threading.Event) -> TurnDone:
            final: TurnDone | None = None
            for event in core.turn(msgs, params, cancel, submitted, options=options):
                if isinstance(event, TurnDone):
                    final = event
                else:
                    emit(event)
            assert final is not None
            return final

        return self._submit_core(job, wrap=False)

    def load_draft(self, model: str | None) -> EventStream[ModelInfo | None]:
        """Load ``model`` (folder or repo id) as the draft model for speculative decoding
        (mlx-lm's), or stop using one (None). A model must be loaded; a draft whose
        vocabulary differs from it ends in ``Error(kind="draft")`` with one line. Ends in
        ``Result(ModelInfo)`` (its ``draft`` names the draft); listeners hear
        ``ModelChanged``."""

        def job(core: EngineCore, emit: Emit, cancel: threading.Event) -> ModelInfo | None:
            try:
                info = core.load_draft(model, emit, cancel)
                self._set_state(draft_wanted=model)
                return info
            finally:
                self._announce(core, swapped=False)

        return self.submit(job)

    def set_decoding(self, settings: DecodingSettings) -> EventStream[DecodingSettings]:
        """Decode with ``settings`` (KV quantization, prompt lookup, draft tokens per step)
        from the next turn on; a KV change drops the caches written under the old one."""
        self._set_state(decoding=settings)

        def job(core: EngineCore, _emit: Emit, _cancel: threading.Event) -> DecodingSettings:
            try:
                done = core.set_decoding(settings)
            except WorkbenchError:
                # refused (engine/speculative.py): unchanged
                self._set_state(decoding=core.decoding)
                raise
            else:
                self._decoding = settings
                return done
            finally:
                if core.loaded is not None:
                    self._announce(core, swapped=False)

        return self.submit(job)

    def _adapter_job(self, change: Callable[[EngineCore], AdapterState]
                     ) -> EventStream[AdapterState]:
        def job(core: EngineCore, _emit: Emit, _cancel: threading.Event) -> AdapterState:
            state = change(core)
            self._announce(core)
            return state

        return self.submit(job)

    def use_adapter(self, path: str | Path | None, scale: float | None = None
                    ) -> EventStream[AdapterState]:
        """Activate the LoRA/DoRA adapter folder at ``path``, or none (``None``), mid-chat.

        ``scale`` multiplies the adapter's trained scale, 0 to 2 (None = 1, as trained). The
        base weights are not reloaded; an adapter used before is still prepared (up to
        ``max_prepared_adapters``, least recently used out) and swaps in about a millisecond.
        Each adapter and scale keeps its own conversation cache: the next ``chat`` reuses it
        and re-prefills (with PrefillProgress, cancellable) only what it lacks, so its reply
        equals a fresh ``mlx_lm.load(model, adapter_path=path)`` on the same conversation.

        Ends in ``Result(AdapterState)``, or ``Error(kind="adapter"|"bad-setting"|"no-model")``
        with one line; after an error the previous adapter is still active and every cache
        is untouched. Listeners hear ``AdapterChanged``.
        """
        return self._adapter_job(lambda core: core.use_adapter(path, scale))

    def set_adapter_scale(self, scale: float) -> EventStream[AdapterState]:
        """Change the active adapter's scale (0 to 2 times trained) without a reload.
        ``Error`` when no adapter is active or the value is out of range."""
        return self._adapter_job(lambda core: core.set_adapter_scale(scale))

    def set_adapter_mode(self, mode: str) -> EventStream[AdapterState]:
        """How adapters run: auto (fused when the copy fits in memory, else unfused), fused
        (whenever it fits) or unfused. The active adapter follows at once; fused and unfused
        each keep their own conversation cache. ``Error(kind="bad-setting")`` for another
        value."""
        return self._adapter_job(lambda core: core.set_adapter_mode(mode))

    def with_adapter_swaps(self, fn: Callable[[EngineCore, AdapterSwap, Emit, threading.Event], T]
                           ) -> EventStream[T]:
        """Run ``fn(core, swap, emit, cancel)`` on the engine thread, where ``swap(path,
        scale)`` activates an adapter as ``use_adapter`` does and announces it
        (``AdapterChanged``): for work that tries several adapters in one request (an
        evaluation). When ``fn`` ends, also by an error or a cancel, the adapter and scale
        active before are active again, announced; one that cannot be had any more (its
        folder changed on disk meanwhile) gives way to the base model, with a ``Notice``.
        Ends in ``Result(fn's value)``."""

        def job(core: EngineCore, emit: Emit, cancel: threading.Event) -> T:
            before = core.adapter_state()
            swapped = False

            def swap(path: str | None, scale: float | None) -> AdapterState:
                nonlocal swapped
                state = core.use_adapter(path, scale)
                swapped = True
                self._announce(core)
                return state

            try:
                return fn(core, swap, emit, cancel)
            finally:
                if swapped:
                    _restore(core, before, emit)
                    self._announce(core)

        return self.submit(job)

    def list_adapters(self, dirs: Iterable[str | Path] = (),
                      extra_paths: Iterable[str | Path] = ()) -> EventStream[list[AdapterInfo]]:
        """Find and check adapters: ``dirs`` are folders of adapter folders (``--adapters``,
        the config's adapters folder), ``extra_paths`` single adapter folders (``--adapter``).
        Each is checked from its files and, when a model is loaded, against that model. A
        missing folder in ``dirs`` becomes a ``Notice``; invalid ones come with a reason."""
        dir_list, extra_list = list(dirs), list(extra_paths)
        return self.submit(lambda core, emit, _cancel:
                           core.list_adapters(dir_list, extra_list, emit))

    def check_adapter(self, path: str | Path) -> EventStream[AdapterInfo]:
        """Describe one adapter folder (config included, for a details view), checked against
        the loaded model if any; never an Error for a bad adapter (``info.reason`` says)."""
        return self.submit(lambda core, _emit, _cancel: core.check_adapter(path))

    def adapter_state(self) -> EventStream[AdapterState]:
        """The active adapter, its scale, what is prepared, how many tokens it has cached."""
        return self.submit(lambda core, _emit, _cancel: core.adapter_state())

    def memory(self) -> EventStream[MemoryReading]:
        """A memory reading, taken on the engine thread."""
        return self.submit(lambda core, _emit, _cancel: core.memory())

    def reset(self) -> EventStream[None]:
        """Forget the cached conversation (the next turn prefills from scratch)."""
        return self.submit(lambda core, _emit, _cancel: core.reset_cache())

    def close(self, timeout: float = 120.0) -> None:
        """Cancel what runs, stop the thread and free MLX state (no abort at exit).

        A model load cannot be interrupted (mlx-lm loads in one call; a cold CUDA start took
        11 s for a 1B model): the wait must outlast it, because an interpreter that exits
        while the engine thread is inside MLX can abort.
        """
        super().close(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the engine thread ---------------------------------------------------------------
    def _on_thread_exit(self) -> None:
        if self._core is not None:
            self._shutdown(self._core)

    @staticmethod
    def _shutdown(core: EngineCore) -> None:
        """Free every array made on this thread before it ends (see MLX-FACTS, Threads)."""
        core.unload()
        from .distributed_core import release

        release(core)  # distributed (issue 14): the other ranks leave their loop
        if "mlx.core" in sys.modules:
            import mlx.core as mx

            mx.synchronize()
            mx.clear_streams()

