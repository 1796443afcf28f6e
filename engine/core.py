"""The state that lives on the engine thread: the loaded model, its prompt caches, its adapters.

``EngineCore`` composes three owners: ``LoadedModel`` (weights, tokenizer, rendering),
``PromptCaches`` (one cache per adapter choice, prefix reuse, snapshot/restore) and
``AdapterManager`` (prepared LoRA/DoRA wrappers, swaps). A chat turn is ``run_turn`` over
those; the core adds what only it knows: which cache key is active and what the last swap
cost. Every method runs on the engine thread (``Engine`` calls them there); functions given
to ``Engine.submit`` receive the core and may use its public methods.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.resolve import resolve_model

from . import memory as mem
from .adapter_swap import DEFAULT_MAX_PREPARED, AdapterKey, AdapterManager, AdapterState
from .adapters import AdapterInfo, discover_adapters
from .errors import NoModel, WorkbenchError
from .events import LoadProgress, ModelInfo, Notice, PrefillProgress, TurnDone
from .loaded import LoadedModel
from .prompt_cache import CacheKey, CacheSnapshot, PromptCaches, common_prefix
from .sampling import SamplingParams
from .turn import ChunkSizer, prefill, run_turn

Message = Mapping[str, str]
Emit = Callable[[Any], None]


class EngineCore:
    """State owned by the engine thread. Never touch it from another thread."""

    def __init__(self, prefill_step_size: int | None = None,
                 max_kv_size: int | None = None,
                 memory_probe: mem.MemoryProbe = mem.available_memory,
                 max_prepared_adapters: int = DEFAULT_MAX_PREPARED) -> None:
        # Prefill chunks: a fixed size when one is given, else sized by time.
        self.prefill_step: int | ChunkSizer = prefill_step_size or ChunkSizer()
        self.max_kv_size = max_kv_size
        self.memory_probe = memory_probe
        self.loaded: LoadedModel | None = None
        self.adapters = AdapterManager(max_prepared_adapters)
        self.caches = PromptCaches(self.adapters.max_prepared + 2)
        self.cache_key: CacheKey = None  # the active adapter's key (None: the base model)
        # The swap the next turn reports: its latency and the tokens cached before it.
        self._pending_swap: tuple[float, list[int]] | None = None

    # -- the model -----------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo | None:
        return self.loaded.info if self.loaded is not None else None

    @property
    def model(self) -> Any:
        return self.loaded.model if self.loaded is not None else None

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer if self.loaded is not None else None

    def require(self) -> LoadedModel:
        if self.loaded is None:
            raise NoModel("no model is loaded yet: wait for the load to finish, or load one "
                          "with --model")
        return self.loaded

    def unload(self) -> None:
        import mlx.core as mx

        self.loaded = None
        self.caches.clear()
        self.caches.model = None
        self.cache_key = None
        self.adapters.reset()
        self._pending_swap = None
        # Modules can sit in reference cycles: collect them here, on the thread that made
        # their arrays, not later on whichever thread the garbage collector next runs.
        gc.collect()
        mx.synchronize()
        mx.clear_cache()

    def load(self, spec: str, adapter: str | None, emit: Emit,
             cancel: threading.Event | None = None) -> ModelInfo:
        """Load the base model, then activate ``adapter`` (if any) through the swap mechanism,
        so it can be swapped later. An adapter that cannot be used does not stop the base
        model: it is reported in one ``Notice`` and the model runs without it. ``cancel``
        stops a download in progress (what arrived is kept for the next try)."""
        emit(LoadProgress("resolve", f"looking for {spec}"))
        path = resolve_model(spec, emit, cancel)
        # The model being replaced gives its memory back before the new one loads.
        freed = self.info.weight_bytes if self.info is not None else 0
        start = time.perf_counter()
        loaded = LoadedModel.load(spec, path, emit,
                                  available=lambda: self.memory_probe() + freed,
                                  context_hint=self.max_kv_size or 4096,
                                  before_load=self.unload)
        self.loaded = loaded
        self.caches.model = loaded.model
        self.adapters.attach(loaded.model, str(path), loaded.info.name)
        if adapter:
            emit(LoadProgress("load", f"preparing adapter {Path(adapter).name}"))
            try:
                self.use_adapter(adapter, None)
            except WorkbenchError as exc:
                emit(Notice(f"{loaded.info.name} is loaded without the adapter "
                            f"{Path(adapter).name}: {exc}"))
            self._pending_swap = None  # part of the load, not a swap mid-conversation
        elapsed = time.perf_counter() - start
        loaded.info = replace(loaded.info, load_time_s=round(elapsed, 3))
        emit(LoadProgress("ready", f"{loaded.info.name} ready in {elapsed:.2f} s"))
        return loaded.info

    def context_limit(self) -> int:
        return self.require().context_limit(self.max_kv_size)

    def render(self, messages: Iterable[Message], add_generation_prompt: bool = True
               ) -> list[int]:
        return self.require().render(messages, add_generation_prompt)

    # -- caches --------------------------------------------------------------------------
    def reset_cache(self) -> None:
        self.caches.clear()
        self._pending_swap = None  # nothing cached is re-prefilled "because of" a swap now

    def adapter_identity(self) -> str:
        """Names the weights the active cache was computed under ("" = the base model).

        For an adapter: ``NAME@DIGEST x SCALE`` (e.g. ``tone-a@3f2a9c01b4de x1``), where
        DIGEST hashes its LoRA settings and weights and SCALE is the multiple of its trained
        scale: K/V stored under one identity are valid only under the same identity.
        """
        return "" if self.cache_key is None else str(self.cache_key)

    def cached_tokens(self) -> list[int]:
        """The token ids whose keys and values the active cache holds."""
        return self.caches.tokens(self.cache_key)

    def snapshot(self, valid: list[int] | None = None) -> CacheSnapshot | None:
        """The active cache and the tokens it holds (for a session save); with ``valid``,
        only the longest part that agrees with those tokens and can be had on its own."""
        return self.caches.snapshot(self.cache_key, valid)

    def restore(self, cache: list[Any], tokens: list[int]) -> None:
        """Make ``cache`` (holding ``tokens``) the active cache (a resumed session)."""
        self.caches.restore(self.cache_key, cache, tokens)

    def new_cache(self) -> list[Any]:
        """An empty prompt cache of the loaded model's kind (one per layer)."""
        from mlx_lm.models.cache import make_prompt_cache

        return list(make_prompt_cache(self.require().model))

    def prefill(self, tokens: list[int], emit: Emit,
                cancel: threading.Event) -> tuple[int, bool]:
        """Evaluate ``tokens`` beyond what the active cache holds (its tokens must be a prefix
        of ``tokens``), in cancellable chunks: ``(tokens evaluated, cancelled)``."""
        loaded = self.require()
        slot = self.caches.slot(self.cache_key)
        start = len(slot.tokens)
        todo = tokens[start:]
        cancelled = False
        try:
            for done in prefill(loaded.model, slot, todo, self.prefill_step):
                emit(PrefillProgress(done, len(todo)))
                if cancel.is_set() and done < len(todo):
                    cancelled = True
                    break
        except BaseException:
            self.caches.drop(self.cache_key)  # unknown state: rebuild next turn
            raise
        slot.reconcile()
        slot.mark()
        return len(slot.tokens) - start, cancelled

    # -- adapters ------------------------------------------------------------------------
    def adapter_state(self, swap_ms: float = 0.0, prepare_ms: float = 0.0) -> AdapterState:
        """The active adapter (or the base model) and its scale."""
        prepared = self.adapters.active
        scale = self.adapters.scale if prepared is not None else None
        return AdapterState(
            info=prepared.info if prepared is not None else None,
            scale=scale,
            lora_scale=prepared.info.scale * scale if prepared and scale is not None else None,
            identity=self.adapter_identity(),
            swap_ms=swap_ms,
            prepare_ms=prepare_ms,
            cached_tokens=len(self.caches.tokens(self.cache_key)),
            prepared=self.adapters.prepared_names(),
        )

    def use_adapter(self, path: str | Path | None, scale: float | None = None) -> AdapterState:
        """Activate the adapter folder at ``path`` (None = no adapter) at ``scale`` times its
        trained scale (None = 1). The base weights stay; the conversation's caches stay, one
        per adapter and scale. On error the previous adapter stays active."""
        self.require()
        old_key = self.cache_key
        _prepared, prepare_s, swap_s = self.adapters.activate(path, scale)
        self._switch_key(self.adapters.active_key(), old_key, swap_s)
        state = self.adapter_state(swap_ms=swap_s * 1000, prepare_ms=prepare_s * 1000)
        self.require().info = replace(self.require().info, adapter=state.path)
        return state

    def set_adapter_scale(self, scale: float) -> AdapterState:
        """Change the active adapter's scale (0 to 2 times trained) without a reload."""
        self.require()
        old_key = self.cache_key
        start = time.perf_counter()
        self.adapters.set_scale(scale)
        swap_s = time.perf_counter() - start
        self._switch_key(self.adapters.active_key(), old_key, swap_s)
        return self.adapter_state(swap_ms=swap_s * 1000)

    def _switch_key(self, new_key: AdapterKey | None, old_key: CacheKey, swap_s: float) -> None:
        """Make ``new_key`` the active cache key; bound the caches kept."""
        self.cache_key = new_key
        if new_key != old_key:
            before = (self._pending_swap[1] if self._pending_swap is not None
                      else self.caches.tokens(old_key))
            self._pending_swap = (swap_s * 1000, before)
        self.caches.touch(new_key)
        gone = {p.digest for p in self.adapters.evicted}
        self.adapters.evicted.clear()
        for key in self.caches.cached_keys():
            if isinstance(key, AdapterKey) and key.digest in gone and key != new_key:
                self.caches.drop(key)
        self.caches.bound(new_key)

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
        return mem.read_memory(self.info.weight_bytes if self.info else 0,
                               self.caches.nbytes(self.cache_key))

    # -- a chat turn ---------------------------------------------------------------------
    def turn(self, messages: Sequence[Message], params: SamplingParams,
             cancel: threading.Event, submitted: float, ignore_eos: bool = False
             ) -> Iterator[Any]:
        """``run_turn`` on the active cache, its ``TurnDone`` completed with the adapter that
        wrote the reply and, on the first turn after a swap, what the swap cost."""
        loaded = self.require()
        pending, self._pending_swap = self._pending_swap, None
        for event in run_turn(loaded, self.caches, self.cache_key, messages, params,
                              cancel=cancel, limit=self.context_limit(),
                              prefill_step=self.prefill_step, ignore_eos=ignore_eos,
                              submitted=submitted, memory=self.memory):
            if isinstance(event, TurnDone):
                event = self._complete(event, pending)
            yield event

    def _complete(self, done: TurnDone, pending: tuple[float, list[int]] | None) -> TurnDone:
        stats = done.stats
        swap_ms, reprefill = None, 0
        if pending is not None and not stats.generated_tokens \
                and stats.finish_reason == "cancelled":
            self._pending_swap = pending  # the re-prefill is still to come
        elif pending is not None:
            swap_ms = pending[0]
            tokens = self.caches.tokens(self.cache_key)
            shared = min(common_prefix(pending[1], tokens), stats.prompt_tokens - 1)
            reprefill = max(0, shared - stats.reused_tokens)
        active = self.adapters.active
        return TurnDone(done.text, replace(
            stats,
            adapter=active.info.name if active else None,
            scale=self.adapters.scale if active else None,
            adapter_identity=self.adapter_identity(),
            swap_ms=swap_ms,
            reprefill_tokens=reprefill,
        ))
