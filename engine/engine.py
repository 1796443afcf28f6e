"""The engine: one thread that owns every MLX call, fed by a request queue.

The public ``Engine`` methods return at once with an ``EventStream``; the work happens on
the engine thread, which puts small frozen events on that stream. ``EngineCore`` is the
state that lives on the engine thread (model, tokenizer, prompt caches) and the logic of a
chat turn: render the messages with the chat template, reuse the longest cached prefix,
prefill the rest in cancellable chunks, stream the reply.
"""

from __future__ import annotations

import atexit
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import memory as mem
from .errors import Cancelled, ContextOverflow, NoModel, WorkbenchError
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
from .loader import display_name, model_info, resolve_model
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
                 memory_probe: mem.MemoryProbe) -> None:
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

    # -- model ---------------------------------------------------------------------------
    def unload(self) -> None:
        import mlx.core as mx

        self.model = self.tokenizer = self.info = None
        self.config = {}
        self.slots.clear()
        self.cache_key = None
        mx.synchronize()
        mx.clear_cache()

    def load(self, spec: str, adapter: str | None, emit: Emit) -> ModelInfo:
        emit(LoadProgress("resolve", f"looking for {spec}"))
        path = resolve_model(spec, emit)
        weight_bytes = mem.check_fit(path, self.memory_probe, self.context_budget_hint())
        emit(LoadProgress("load", f"loading {path.name} ({mem.gb(weight_bytes)})"))
        self.unload()
        import mlx.core as mx
        from mlx_lm import load

        start = time.perf_counter()
        adapter_path = str(Path(adapter).expanduser()) if adapter else None
        if adapter_path is not None:
            from .adapters import check_adapter_folder

            check_adapter_folder(Path(adapter_path))
        try:
            model, tokenizer, config = load(str(path), adapter_path=adapter_path,
                                            return_config=True)
        except ValueError as exc:
            raise WorkbenchError(f"{path.name} cannot be loaded: {_first_line(exc)}") from None
        mx.reset_peak_memory()
        self.model, self.tokenizer, self.config = model, tokenizer, config
        elapsed = time.perf_counter() - start
        self.info = model_info(display_name(spec, path), path, model, config, weight_bytes,
                               elapsed, adapter_path)
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

    def reset_cache(self) -> None:
        self.slots.clear()

    def adapter_identity(self) -> str:
        """Names the weights the active cache was computed under ("" = the base model)."""
        return "" if self.cache_key is None else str(self.cache_key)

    def memory(self) -> mem.MemoryReading:
        slot = self.slots.get(self.cache_key)
        return mem.read_memory(self.info.weight_bytes if self.info else 0,
                               slot.nbytes if slot else 0)

    # -- a chat turn ---------------------------------------------------------------------
    def chat(self, messages: list[Message], params: SamplingParams, emit: Emit,
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
        sampler, processors = make_sampler_and_processors(params)
        if ignore_eos:
            processors = [*processors, _mask_tokens(self.tokenizer.eos_token_ids)]
        if params.seed is not None:
            mx.random.seed(params.seed)
        mx.reset_peak_memory()

        processed = 0

        def on_prefill(done: int, total: int) -> None:
            nonlocal processed
            processed = done
            emit(PrefillProgress(done, total))
            # At done == total the first reply token is already in the cache: let the
            # decode loop stop instead, so the kept tokens and the cache agree.
            if cancel.is_set() and done < total:
                raise Cancelled

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
            slot.tokens = prompt[: reused + processed]
        except BaseException:
            self.slots.pop(self.cache_key, None)  # unknown state: rebuild next turn
            raise
        slot.reconcile()
        if finish == "length" and context_cut:
            finish = "context"
        stats = TurnStats(
            prompt_tokens=len(prompt),
            reused_tokens=reused,
            prefill_tokens=len(suffix) if generated else processed,
            prefill_tps=float(prefill_tps),
            ttft_s=float(ttft),
            decode_tps=float(decode_tps),
            generated_tokens=len(generated),
            finish_reason=finish,
            peak_memory=int(mx.get_peak_memory()),
            kv_bytes=slot.nbytes,
            context_tokens=len(slot.tokens),
        )
        emit(Memory(self.memory()))
        return TurnDone("".join(pieces), stats)


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
                 memory_probe: mem.MemoryProbe | None = None) -> None:
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._current: EventStream | None = None
        self._pending: list[EventStream] = []
        self._lock = threading.Lock()
        self._closed = False
        self.info: ModelInfo | None = None  # last loaded model, readable from any thread
        self._core_args = (prefill_step_size, max_kv_size,
                           memory_probe or mem.available_memory)
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

        def handler(core: EngineCore, emit: Emit, _cancel: threading.Event) -> ModelLoaded:
            self.info = None
            info = core.load(model, adapter, emit)
            self.info = info
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

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what runs, stop the thread and free MLX state (no abort at exit)."""
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
