"""The engine: one thread that owns every MLX call, fed by a request queue.

The public ``Engine`` methods return at once with an ``EventStream``; the work happens on
the engine thread, which puts small frozen events on that stream. ``EngineCore`` is the
state that lives on the engine thread (model, tokenizer, prompt caches) and the logic of a
chat turn: render the messages with the chat template, reuse the longest cached prefix,
prefill the rest in cancellable chunks, stream the reply.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from models.resolve import display_name, model_info, resolve_model

from . import memory as mem
from .adapter_swap import DEFAULT_MAX_PREPARED, AdapterKey, AdapterManager, AdapterState
from .adapters import AdapterInfo, discover_adapters, inspect_adapter
from .errors import AdapterError, Cancelled, ContextOverflow, NoModel, WorkbenchError
from .events import (
    Error,
    LoadProgress,
    Memory,
    ModelInfo,
    ModelLoaded,
    Notice,
    PrefillProgress,
    Result,
    TokenText,
    TurnDone,
    TurnStats,
)
from .sampling import SamplingParams, make_sampler_and_processors
from .stream import EventStream

Message = Mapping[str, str]
Emit = Callable[[Any], None]
DEFAULT_PREFILL_STEP = 512  # small enough to cancel between chunks; faster than 2048 on CPU
MEMORY_EVENT_INTERVAL_S = 0.25


@dataclass
class CacheSlot:
    """A prompt cache and the token ids whose keys and values it holds, in order."""

    cache: list[Any]
    tokens: list[int] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        total = 0
        for c in self.cache:
            try:
                total += int(c.nbytes)
            except Exception:  # noqa: BLE001 - an empty cache has no arrays yet
                pass
        return total

    def offset(self) -> int:
        return int(getattr(self.cache[0], "offset", len(self.tokens))) if self.cache else 0

    def reconcile(self) -> None:
        """Make ``tokens`` agree with what the cache really holds."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        held = self.offset()
        if held < len(self.tokens):
            del self.tokens[held:]
        elif held > len(self.tokens):
            if can_trim_prompt_cache(self.cache):
                trim_prompt_cache(self.cache, held - len(self.tokens))
            else:  # cannot tell what the extra entries are: start over
                self.cache[:] = []
                self.tokens.clear()


class EngineCore:
    """State owned by the engine thread. Never touch it from another thread."""

    def __init__(self, prefill_step_size: int, max_kv_size: int | None,
                 memory_probe: mem.MemoryProbe,
                 max_prepared_adapters: int = DEFAULT_MAX_PREPARED) -> None:
        self.prefill_step_size = prefill_step_size
        self.max_kv_size = max_kv_size
        self.memory_probe = memory_probe
        self.model: Any = None
        self.tokenizer: Any = None
        self.config: dict[str, Any] = {}
        self.info: ModelInfo | None = None
        # One cache per cache key (the active adapter's identity; None for the base model).
        self.cache_key: Any = None
        self.slots: dict[Any, CacheSlot] = {}
        # Adapters: prepared wrapper sets, the one installed, the order cache keys were used
        # in (to bound the caches kept), and the swap the next turn should report.
        self.adapters = AdapterManager(max_prepared_adapters)
        self.max_slots = self.adapters.max_prepared + 2
        self._key_order: dict[Any, None] = {}
        self._pending_swap: tuple[float, list[int]] | None = None

    # -- model ---------------------------------------------------------------------------
    def unload(self) -> None:
        import mlx.core as mx

        self.model = self.tokenizer = self.info = None
        self.config = {}
        self.slots.clear()
        self.cache_key = None
        self.adapters.reset()
        self._key_order.clear()
        self._pending_swap = None
        # Modules can sit in reference cycles: collect them here, on the thread that made
        # their arrays, not later on whichever thread the garbage collector next runs.
        gc.collect()
        mx.synchronize()
        mx.clear_cache()

    def load(self, spec: str, adapter: str | None, emit: Emit,
             cancel: threading.Event | None = None) -> ModelInfo:
        """Load the base model, then activate ``adapter`` (if any) through the swap mechanism,
        so it can be swapped later. An adapter that does not fit the model fails the load
        (nothing stays loaded), as ``mlx_lm generate --adapter-path`` does. ``cancel`` stops
        a download in progress (what arrived is kept for the next try)."""
        emit(LoadProgress("resolve", f"looking for {spec}"))
        path = resolve_model(spec, emit, cancel)
        if adapter:  # what the files alone can tell, before the loaded model is dropped
            checked = inspect_adapter(adapter)
            if not checked.valid:
                raise AdapterError(checked.reason, path=checked.path)
        # The model being replaced gives its memory back before the new one loads.
        freed = self.info.weight_bytes if self.info is not None else 0
        weight_bytes = mem.check_fit(path, lambda: self.memory_probe() + freed,
                                     self.context_budget_hint(),
                                     warn=lambda message: emit(Notice(message)))
        emit(LoadProgress("load", f"loading {path.name} ({mem.gb(weight_bytes)})"))
        self.unload()
        import mlx.core as mx
        from mlx_lm import load

        start = time.perf_counter()
        try:
            model, tokenizer, config = load(str(path), return_config=True)
        except ValueError as exc:
            raise WorkbenchError(f"{path.name} cannot be loaded: {_first_line(exc)}") from None
        mx.reset_peak_memory()
        self.model, self.tokenizer, self.config = model, tokenizer, config
        name = display_name(spec, path)
        self.adapters.attach(model, str(path), name)
        info = model_info(name, path, model, config, weight_bytes, 0.0, None)
        if adapter:
            emit(LoadProgress("load", f"preparing adapter {Path(adapter).name}"))
            try:
                state = self.use_adapter(adapter, None)
            except WorkbenchError:
                self.unload()
                raise
            self._pending_swap = None  # part of the load, not a swap mid-conversation
            info = replace(info, adapter=state.path)
        elapsed = time.perf_counter() - start
        self.info = replace(info, load_time_s=round(elapsed, 3))
        emit(LoadProgress("ready", f"{self.info.name} ready in {elapsed:.2f} s"))
        return self.info

    def context_budget_hint(self) -> int:
        return self.max_kv_size or 4096

    def context_limit(self) -> int:
        limit = self.info.context_length if self.info and self.info.context_length else 0
        if self.max_kv_size:
            limit = min(limit, self.max_kv_size) if limit else self.max_kv_size
        return limit or 1 << 31

    # -- prompt and cache ----------------------------------------------------------------
    def render(self, messages: Iterable[Message]) -> list[int]:
        msgs = [dict(m) for m in messages]
        if getattr(self.tokenizer, "has_chat_template", True):
            tokens = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True,
                                                        tokenize=True)
            return list(tokens)
        text = "\n".join(m["content"] for m in msgs)
        return list(self.tokenizer.encode(text))

    def slot(self) -> CacheSlot:
        from mlx_lm.models.cache import make_prompt_cache

        slot = self.slots.get(self.cache_key)
        if slot is None or not slot.cache:
            slot = CacheSlot(make_prompt_cache(self.model))
            self.slots[self.cache_key] = slot
        return slot

    def reuse_prefix(self, prompt: list[int]) -> int:
        """Trim the active cache to its longest prefix shared with ``prompt``; return its length.

        At least one prompt token is always left to evaluate (the model needs an input).
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        slot = self.slot()
        common = 0
        for a, b in zip(slot.tokens, prompt, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        extra = len(slot.tokens) - common
        if extra > 0:
            if can_trim_prompt_cache(slot.cache):
                trim_prompt_cache(slot.cache, extra)
                del slot.tokens[common:]
            else:
                self.slots.pop(self.cache_key, None)
                return 0
        return common

    def prefill(self, tokens: list[int], emit: Emit,
                cancel: threading.Event) -> tuple[int, bool]:
        """Evaluate ``tokens`` beyond what the active cache holds (its tokens must be a prefix
        of ``tokens``), in cancellable chunks: ``(tokens evaluated, cancelled)``."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        slot = self.slot()
        start = len(slot.tokens)
        todo = tokens[start:]
        if not todo:
            return 0, False
        watch = _PrefillWatch(emit, cancel)
        cancelled = False
        try:
            for _ in generate_step(mx.array(todo), self.model, max_tokens=0,
                                   prompt_cache=slot.cache,
                                   prefill_step_size=self.prefill_step_size,
                                   prompt_progress_callback=watch):
                pass
            slot.tokens = list(tokens)
        except Cancelled:
            slot.tokens = tokens[: start + watch.done]
            cancelled = True
        except BaseException:
            self.slots.pop(self.cache_key, None)  # unknown state: rebuild next turn
            raise
        slot.reconcile()
        return len(slot.tokens) - start, cancelled

    def reset_cache(self) -> None:
        self.slots.clear()
        self._pending_swap = None  # nothing cached is re-prefilled "because of" a swap now

    def adapter_identity(self) -> str:
        """Names the weights the active cache was computed under ("" = the base model).

        For an adapter: ``NAME@DIGEST x SCALE`` (e.g. ``tone-a@3f2a9c01b4de x1``), where
        DIGEST hashes its LoRA settings and weights and SCALE is the multiple of its trained
        scale: K/V stored under one identity are valid only under the same identity.
        """
        return "" if self.cache_key is None else str(self.cache_key)

    # -- adapters ------------------------------------------------------------------------
    def adapter_state(self, swap_ms: float = 0.0, prepare_ms: float = 0.0) -> AdapterState:
        """The active adapter (or the base model) and its scale."""
        prepared = self.adapters.active
        scale = self.adapters.scale if prepared is not None else None
        slot = self.slots.get(self.cache_key)
        return AdapterState(
            info=prepared.info if prepared is not None else None,
            scale=scale,
            lora_scale=prepared.info.scale * scale if prepared and scale is not None else None,
            identity=self.adapter_identity(),
            swap_ms=swap_ms,
            prepare_ms=prepare_ms,
            cached_tokens=len(slot.tokens) if slot else 0,
            prepared=self.adapters.prepared_names(),
        )

    def _require_model(self) -> None:
        if self.model is None:
            raise NoModel("no model is loaded yet: wait for the load to finish, or load one "
                          "with --model")

    def use_adapter(self, path: str | Path | None, scale: float | None = None) -> AdapterState:
        """Activate the adapter folder at ``path`` (None = no adapter) at ``scale`` times its
        trained scale (None = 1). The base weights stay; the conversation's caches stay, one
        per adapter and scale. On error the previous adapter stays active."""
        self._require_model()
        old_key = self.cache_key
        _prepared, prepare_s, swap_s = self.adapters.activate(path, scale)
        self._switch_key(self.adapters.active_key(), old_key, swap_s)
        state = self.adapter_state(swap_ms=swap_s * 1000, prepare_ms=prepare_s * 1000)
        return state

    def set_adapter_scale(self, scale: float) -> AdapterState:
        """Change the active adapter's scale (0 to 2 times trained) without a reload."""
        self._require_model()
        old_key = self.cache_key
        start = time.perf_counter()
        self.adapters.set_scale(scale)
        swap_s = time.perf_counter() - start
        self._switch_key(self.adapters.active_key(), old_key, swap_s)
        state = self.adapter_state(swap_ms=swap_s * 1000)
        return state

    def _switch_key(self, new_key: AdapterKey | None, old_key: Any, swap_s: float) -> None:
        """Make ``new_key`` the active cache key; bound the caches kept."""
        self.cache_key = new_key
        if new_key != old_key:
            previous = self._pending_swap
            if previous is None:
                old = self.slots.get(old_key)
                self._pending_swap = (swap_s * 1000, list(old.tokens) if old else [])
            else:
                self._pending_swap = (swap_s * 1000, previous[1])
        self._key_order.pop(new_key, None)
        self._key_order[new_key] = None
        gone = {p.digest for p in self.adapters.evicted}
        self.adapters.evicted.clear()
        for key in list(self.slots):
            if isinstance(key, AdapterKey) and key.digest in gone and key != new_key:
                self.slots.pop(key, None)
                self._key_order.pop(key, None)
        while len(self.slots) > self.max_slots:
            oldest = next((k for k in self._key_order if k != new_key and k in self.slots),
                          None)
            if oldest is None:
                break
            self.slots.pop(oldest, None)
            self._key_order.pop(oldest, None)

    def check_adapter(self, path: str | Path) -> AdapterInfo:
        """Describe and check one adapter folder (against the loaded model, if any)."""
        return self.adapters.check(path)

    def list_adapters(self, dirs: Iterable[str | Path], extra_paths: Iterable[str | Path],
                      emit: Emit) -> list[AdapterInfo]:
        """Every adapter found, each checked; problems with the folders become Notices."""
        paths, problems = discover_adapters(dirs, extra_paths)
        for problem in problems:
            emit(Notice(problem))
        return [self.check_adapter(p) for p in paths]

    def memory(self) -> mem.MemoryReading:
        slot = self.slots.get(self.cache_key)
        return mem.read_memory(self.info.weight_bytes if self.info else 0,
                               slot.nbytes if slot else 0)

    # -- a chat turn ---------------------------------------------------------------------
    def chat(self, messages: Sequence[Message], params: SamplingParams, emit: Emit,
             cancel: threading.Event, submitted: float, ignore_eos: bool = False) -> TurnDone:
        import mlx.core as mx
        from mlx_lm import stream_generate

        if self.model is None:
            raise NoModel("no model is loaded yet: wait for the load to finish, or load one "
                          "with --model")
        prompt = self.render(messages)
        limit = self.context_limit()
        if len(prompt) >= limit:
            raise ContextOverflow(
                f"the conversation is {len(prompt)} tokens and the context holds {limit}: "
                "start a new conversation (/reset) or shorten it",
                prompt_tokens=len(prompt), limit=limit)
        max_tokens = params.max_tokens
        context_cut = False
        if len(prompt) + max_tokens > limit:
            max_tokens = limit - len(prompt)
            context_cut = True
            emit(Notice(f"this reply can use only {max_tokens} tokens before the context "
                        f"({limit}) is full: start a new conversation for longer replies"))
        reused = self.reuse_prefix(prompt)
        slot = self.slot()
        suffix = prompt[reused:]
        swap_ms: float | None = None
        reprefill = 0
        pending_swap, self._pending_swap = self._pending_swap, None
        if pending_swap is not None:
            swap_ms, before_swap = pending_swap
            shared = 0
            for a, b in zip(before_swap, prompt, strict=False):
                if a != b:
                    break
                shared += 1
            reprefill = max(0, min(shared, len(prompt) - 1) - reused)
        sampler, processors = make_sampler_and_processors(params)
        if ignore_eos:
            processors = [*processors, _mask_tokens(self.tokenizer.eos_token_ids)]
        if params.seed is not None:
            mx.random.seed(params.seed)
        mx.reset_peak_memory()

        on_prefill = _PrefillWatch(emit, cancel)

        pieces: list[str] = []
        generated: list[int] = []
        finish = "cancelled"
        prefill_tps = decode_tps = 0.0
        ttft = 0.0
        last_mem = 0.0
        try:
            for resp in stream_generate(
                self.model, self.tokenizer, mx.array(suffix), max_tokens=max_tokens,
                sampler=sampler, logits_processors=processors or None, prompt_cache=slot.cache,
                prefill_step_size=self.prefill_step_size, prompt_progress_callback=on_prefill,
            ):
                if not generated:
                    ttft = time.perf_counter() - submitted
                    prefill_tps = resp.prompt_tps
                generated.append(resp.token)
                decode_tps = resp.generation_tps
                if resp.text:
                    pieces.append(resp.text)
                    emit(TokenText(resp.text, resp.generation_tokens, decode_tps))
                if resp.finish_reason is not None:
                    finish = resp.finish_reason
                    break
                now = time.perf_counter()
                if now - last_mem > MEMORY_EVENT_INTERVAL_S:
                    last_mem = now
                    emit(Memory(self.memory()))
                if cancel.is_set():
                    break
            slot.tokens = prompt[:reused] + suffix + generated
        except Cancelled:
            slot.tokens = prompt[: reused + on_prefill.done]
        except BaseException:
            self.slots.pop(self.cache_key, None)  # unknown state: rebuild next turn
            raise
        slot.reconcile()
        if finish == "cancelled" and not generated:
            self._pending_swap = pending_swap  # the re-prefill is still to come
        if finish == "length" and context_cut:
            finish = "context"
        stats = TurnStats(
            prompt_tokens=len(prompt),
            reused_tokens=reused,
            prefill_tokens=len(suffix) if generated else on_prefill.done,
            prefill_tps=float(prefill_tps),
            ttft_s=float(ttft),
            decode_tps=float(decode_tps),
            generated_tokens=len(generated),
            finish_reason=finish,
            peak_memory=int(mx.get_peak_memory()),
            kv_bytes=slot.nbytes,
            context_tokens=len(slot.tokens),
            adapter=self.adapters.active.info.name if self.adapters.active else None,
            scale=self.adapters.scale if self.adapters.active else None,
            adapter_identity=self.adapter_identity(),
            swap_ms=swap_ms,
            reprefill_tokens=reprefill,
        )
        emit(Memory(self.memory()))
        return TurnDone("".join(pieces), stats)


class _PrefillWatch:
    """mlx-lm's ``prompt_progress_callback``: reports progress, stops between chunks on cancel.

    It is called after each evaluated chunk, so on ``Cancelled`` the cache holds exactly the
    ``done`` tokens. At ``done == total`` the first reply token is already in the cache:
    it does not raise then, and the decode loop stops instead, so kept tokens and cache agree.
    """

    def __init__(self, emit: Emit, cancel: threading.Event) -> None:
        self.emit = emit
        self.cancel = cancel
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        self.emit(PrefillProgress(done, total))
        if self.cancel.is_set() and done < total:
            raise Cancelled


def _mask_tokens(token_ids: Iterable[int]) -> Callable[[Any, Any], Any]:
    ids = sorted(set(token_ids))

    def mask(_tokens: Any, logits: Any) -> Any:
        import mlx.core as mx

        if ids:
            logits[:, mx.array(ids)] = -float("inf")
        return logits

    return mask


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class _Request:
    handler: Callable[[EngineCore, Emit, threading.Event], Any]
    stream: EventStream
    wraps_result: bool  # handler's return value is a plain value, to be wrapped in Result


_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_live_engines):
        engine.close()


class Engine:
    """The UI-side handle. Every method returns at once; results arrive as events."""

    _ids = itertools.count(1)

    def __init__(self, *, prefill_step_size: int = DEFAULT_PREFILL_STEP,
                 max_kv_size: int | None = None,
                 memory_probe: mem.MemoryProbe | None = None,
                 max_prepared_adapters: int = DEFAULT_MAX_PREPARED) -> None:
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._pending: list[EventStream] = []
        self._lock = threading.Lock()
        self._closed = False
        self.info: ModelInfo | None = None  # last loaded model, readable from any thread
        # The active adapter (info None = base model) once a model is loaded; any thread.
        self.adapter: AdapterState | None = None
        self._core_args = (prefill_step_size, max_kv_size,
                           memory_probe or mem.available_memory, max_prepared_adapters)
        self._thread = threading.Thread(target=self._run, name=f"mlx-engine-{next(self._ids)}",
                                        daemon=True)
        self._thread.start()
        _live_engines.add(self)

    # -- requests ------------------------------------------------------------------------
    def _submit(self, handler: Callable[[EngineCore, Emit, threading.Event], Any],
                wraps_result: bool = False) -> EventStream:
        stream = EventStream()
        if self._closed:
            stream.put(Error("the engine has shut down", kind="closed"))
            return stream
        with self._lock:
            self._pending.append(stream)
        self._requests.put(_Request(handler, stream, wraps_result))
        return stream

    def load(self, model: str, adapter: str | None = None) -> EventStream:
        """Load ``model`` (folder or repo id), replacing any loaded model. Ends in ModelLoaded."""

        def handler(core: EngineCore, emit: Emit, cancel: threading.Event) -> ModelLoaded:
            self.info = None
            self.adapter = None
            try:
                info = core.load(model, adapter, emit, cancel)
            except WorkbenchError:
                # A failure before the old model was dropped (e.g. a bad adapter folder)
                # leaves it loaded: say so.
                self.info = core.info
                self.adapter = core.adapter_state() if core.model is not None else None
                raise
            self.info = info
            self.adapter = core.adapter_state()
            return ModelLoaded(info)

        return self._submit(handler)

    def chat(self, messages: Iterable[Message], params: SamplingParams | None = None, *,
             ignore_eos: bool = False) -> EventStream:
        """Generate the assistant's reply to ``messages``. Ends in TurnDone."""
        msgs = [dict(m) for m in messages]
        params = params or SamplingParams()
        submitted = time.perf_counter()

        def handler(core: EngineCore, emit: Emit, cancel: threading.Event) -> TurnDone:
            return core.chat(msgs, params, emit, cancel, submitted, ignore_eos)

        return self._submit(handler)

    # -- adapters ------------------------------------------------------------------------
    def use_adapter(self, path: str | Path | None, scale: float | None = None) -> EventStream:
        """Activate the LoRA/DoRA adapter folder at ``path``, or none (``None``), mid-chat.

        ``scale`` multiplies the adapter's trained scale, 0 to 2 (None = 1, as trained). The
        base weights are not reloaded; an adapter used before is still prepared (up to
        ``max_prepared_adapters``, least recently used out) and swaps in about a millisecond.
        Each adapter and scale keeps its own conversation cache: the next ``chat`` reuses it
        and re-prefills (with PrefillProgress, cancellable) only what it lacks, so its reply
        equals a fresh ``mlx_lm.load(model, adapter_path=path)`` on the same conversation.

        Ends in ``Result(AdapterState)``, or ``Error(kind="adapter"|"bad-setting"|"no-model")``
        with one line; after an error the previous adapter is still active and every cache
        is untouched. ``self.adapter`` follows the active adapter.
        """

        def handler(core: EngineCore, _emit: Emit, _cancel: threading.Event) -> AdapterState:
            state = core.use_adapter(path, scale)
            self.adapter = state
            self._note_adapter(state)
            return state

        return self.submit(handler)

    def set_adapter_scale(self, scale: float) -> EventStream:
        """Change the active adapter's scale (0 to 2 times trained) without a reload.

        Ends in ``Result(AdapterState)``; ``Error`` when no adapter is active or the value is
        out of range (the scale then stays as it was).
        """

        def handler(core: EngineCore, _emit: Emit, _cancel: threading.Event) -> AdapterState:
            state = core.set_adapter_scale(scale)
            self.adapter = state
            self._note_adapter(state)
            return state

        return self.submit(handler)

    def list_adapters(self, dirs: Iterable[str | Path] = (),
                      extra_paths: Iterable[str | Path] = ()) -> EventStream:
        """Find and check adapters: ``dirs`` are folders of adapter folders (``--adapters``,
        the config's adapters folder), ``extra_paths`` single adapter folders (``--adapter``).

        Each is checked from its files and, when a model is loaded, against that model
        (layer count, target layers, tensor names and shapes; base-model mismatch as a note).
        A missing folder in ``dirs`` becomes a ``Notice``. Ends in
        ``Result(list[AdapterInfo])``, invalid ones included with their reason.
        """
        dir_list, extra_list = list(dirs), list(extra_paths)
        return self.submit(lambda core, emit, _cancel:
                           core.list_adapters(dir_list, extra_list, emit))

    def check_adapter(self, path: str | Path) -> EventStream:
        """Describe one adapter folder (config included, for a details view), checked against
        the loaded model if any. Ends in ``Result(AdapterInfo)``; never an Error for a bad
        adapter (``info.valid`` is False and ``info.reason`` says why)."""
        return self.submit(lambda core, _emit, _cancel: core.check_adapter(path))

    def adapter_state(self) -> EventStream:
        """Ends in ``Result(AdapterState)``: the active adapter, its scale, what is prepared,
        and how many tokens are cached under it."""
        return self.submit(lambda core, _emit, _cancel: core.adapter_state())

    def _note_adapter(self, state: AdapterState) -> None:
        if self.info is not None:
            self.info = replace(self.info, adapter=state.path)

    def memory(self) -> EventStream:
        """A memory reading. Ends in Result(MemoryReading)."""
        return self.submit(lambda core, _emit, _cancel: core.memory())

    def reset(self) -> EventStream:
        """Forget the cached conversation (the next turn prefills from scratch)."""
        return self.submit(lambda core, _emit, _cancel: core.reset_cache())

    def submit(self, fn: Callable[[EngineCore, Emit, threading.Event], Any]) -> EventStream:
        """Run ``fn(core, emit, cancel)`` on the engine thread. Ends in Result(return value).

        This is how other packages (sessions, adapters) do MLX work without a thread of
        their own. ``fn`` raises ``WorkbenchError`` for a user-facing failure.
        """
        return self._submit(fn, wraps_result=True)

    def cancel(self) -> None:
        """Stop the running request and drop queued ones. Safe from any thread."""
        with self._lock:
            for stream in self._pending:
                stream.cancel_flag.set()

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def close(self, timeout: float = 120.0) -> None:
        """Cancel what runs, stop the thread and free MLX state (no abort at exit).

        A model load cannot be interrupted (mlx-lm loads in one call; a cold CUDA start took
        11 s for a 1B model): the wait must outlast it, because an interpreter that exits
        while the engine thread is inside MLX can abort.
        """
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._requests.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        core = EngineCore(*self._core_args)
        while True:
            request = self._requests.get()
            if request is None:
                break
            stream = request.stream
            try:
                if stream.cancel_flag.is_set() and self._closed:
                    stream.put(Error("cancelled: the engine is shutting down", kind="cancelled"))
                    continue
                value = request.handler(core, stream.put, stream.cancel_flag)
                stream.put(Result(value) if request.wraps_result else value)
            except WorkbenchError as exc:
                stream.put(Error(str(exc), kind=exc.kind, details=dict(exc.details)))
            except Exception as exc:  # noqa: BLE001 - the engine must outlive any failure
                stream.put(Error(f"unexpected {type(exc).__name__}: {_first_line(exc)}",
                                 kind="internal"))
            finally:
                with self._lock:
                    if stream in self._pending:
                        self._pending.remove(stream)
        self._shutdown(core)

    @staticmethod
    def _shutdown(core: EngineCore) -> None:
        """Free every array made on this thread before it ends (see MLX-FACTS, Threads)."""
        import sys

        core.unload()
        if "mlx.core" in sys.modules:
            import mlx.core as mx

            mx.synchronize()
            mx.clear_streams()
