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

from common.errors import NoModel, WorkbenchError
from common.progress import LoadProgress
from models import fit
from models.resolve import resolve_model

from . import memory as mem
from .adapter_swap import DEFAULT_MAX_PREPARED, AdapterKey, AdapterManager, AdapterState
from .adapters import AdapterInfo, discover_adapters
from .cache_miss import explain_swap
from .events import ModelInfo, Notice, PrefillProgress, TurnDone
from .loaded import LoadedModel
from .prompt_cache import CacheKey, CacheSnapshot, PromptCaches
from .sampling import SamplingParams, TurnOptions
from .speculative import (
    MLX_PREFILL_STEP,
    MLX_SPECULATIVE_PREFILL_STEP,
    DecodingSettings,
    DraftModel,
    check_kv_quantizable,
)
from .turn import ChunkSizer, prefill, run_turn

Message = Mapping[str, str]
Emit = Callable[[Any], None]
SHELF_MAX_BYTES = 2 << 30


class EngineCore:
    """State owned by the engine thread. Never touch it from another thread."""

    def __init__(self, prefill_step_size: int | None = None,
                 max_kv_size: int | None = None,
                 memory_probe: mem.MemoryProbe = mem.available_memory,
                 max_prepared_adapters: int = DEFAULT_MAX_PREPARED,
                 adapter_mode: str = "unfused", warm_up: bool | None = None) -> None:
        # Prefill chunks: a fixed size when one is given, else sized by time.
        self.prefill_step: int | ChunkSizer = prefill_step_size or ChunkSizer()
        self.max_kv_size = max_kv_size
        self.memory_probe = memory_probe
        self.loaded: LoadedModel | None = None
        # Adapters run fused (merged into copies of the weights they touch) when the mode
        # setting and the free memory allow, else unfused (engine/adapter_fuse.py).
        self.adapters = AdapterManager(max_prepared_adapters, memory_probe, adapter_mode)
        # Kernels are compiled on first use on CUDA: a load runs a tiny warm-up
        # (engine/warmup.py; None: on GPU backends only).
        self.warm_up = warm_up
        self.caches = PromptCaches(self.adapters.max_prepared + 2)
        self.cache_key: CacheKey = None  # the active adapter's key (None: the base model)
        # The swap the next turn reports: its latency and the tokens cached before it.
        self._pending_swap: tuple[float, list[int]] | None = None
        # Faster decoding (engine/speculative.py): KV quantization, prompt lookup, and a
        # draft model for speculative decoding (set_decoding, load_draft).
        self.decoding = DecodingSettings()
        self.draft: DraftModel | None = None

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
        self.draft = None  # load() keeps it across a model change (if the vocabulary fits)
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
        draft = self.draft  # kept across the unload, checked against the new model below
        kv = self.decoding.kv
        extra = fit.adapter_bytes(adapter)
        loaded = LoadedModel.load(spec, path, emit,
                                  available=lambda: self.memory_probe() + freed,
                                  context_hint=self.max_kv_size or None,
                                  before_load=self.unload, fit={
                                      "kv_bits": kv.bits, "kv_group_size": kv.group_size,
                                      "extra": extra, "extra_label": "adapter",
                                      "context_chosen": bool(self.max_kv_size)})
        try:
            check_kv_quantizable(loaded.model, kv)
        except WorkbenchError:
            del loaded  # refused before any turn: no model is left half in use
            self.unload()
            raise
        self.loaded = loaded
        if draft is not None:
            self._keep_draft(draft, emit)
        self.caches.model = loaded.model
        # Caches of other branches of the conversation: a tenth of what is free, up to 2 GiB.
        self.caches.shelf_bytes = min(SHELF_MAX_BYTES, max(0, self.memory_probe()) // 10)
        self.adapters.attach(loaded.model, str(path), loaded.info.name)
        if adapter:
            emit(LoadProgress("load", f"preparing adapter {Path(adapter).name}"))
            try:
                self.use_adapter(adapter, None)
            except WorkbenchError as exc:
                emit(Notice(f"{loaded.info.name} is loaded without the adapter "
                            f"{Path(adapter).name}: {exc}"))
            self._pending_swap = None  # part of the load, not a swap mid-conversation
        from .warmup import warm_up

        warm_s = warm_up(loaded.model, emit, self.warm_up)
        elapsed = time.perf_counter() - start - warm_s
        loaded.info = replace(loaded.info, load_time_s=round(elapsed, 3))
        self._describe_costs()
        warm = f" (then {warm_s:.2f} s of GPU warm-up)" if warm_s else ""
        emit(LoadProgress("ready", f"{loaded.info.name} ready in {elapsed:.2f} s{warm}"))
        return loaded.info

    def context_limit(self) -> int:
        return self.require().context_limit(self.max_kv_size)

    # -- faster decoding (engine/speculative.py) -----------------------------------------
    def kv_identity(self) -> str:
        """The KV quantization new cache entries are written with ("" = full precision),
        e.g. ``kv8:g64:s5000``: a saved cache may be restored only under the same one."""
        return self.decoding.kv.identity()

    def set_decoding(self, settings: DecodingSettings) -> DecodingSettings:
        """Use ``settings`` from the next turn on. Caches written under other KV settings
        are dropped (the next turn prefills again under the new ones)."""
        if settings.kv != self.decoding.kv:
            if self.loaded is not None:  # refused: nothing changes
                check_kv_quantizable(self.loaded.model, settings.kv)
            if self.draft is not None:
                check_kv_quantizable(self.draft.model, settings.kv, f"the draft {self.draft.name}")
            self.caches.clear()
            self._pending_swap = None
        self.decoding = settings
        if self.loaded is not None:
            self._describe_costs()
        return settings

    def load_draft(self, spec: str | None, emit: Emit,
                   cancel: threading.Event | None = None) -> ModelInfo | None:
        """Load the draft model for speculative decoding (None: stop using one). Refused in
        one line when its vocabulary differs from the loaded model's."""
        from .speculative import load_draft

        loaded = self.require()
        if not spec:
            self._set_draft(None)
            return self.info
        emit(LoadProgress("resolve", f"looking for the draft model {spec}"))
        path = resolve_model(spec, emit, cancel)
        freed = self.draft.weight_bytes if self.draft is not None else 0
        emit(LoadProgress("load", f"loading the draft model {path.name}"))
        draft = load_draft(spec, path, loaded.tokenizer, loaded.info.name,
                           lambda: self.memory_probe() + freed,
                           self.max_kv_size or loaded.info.context_length or 4096,
                           self.decoding.kv)
        self._set_draft(draft)
        emit(LoadProgress("ready", f"draft model {draft.name} ready"))
        return self.info

    def _set_draft(self, draft: DraftModel | None) -> None:
        import mlx.core as mx

        self.draft = draft
        for key in self.caches.cached_keys():
            slot = self.caches.get(key)
            if slot is not None:
                slot.draft, slot.draft_of = None, ""
        gc.collect()
        mx.clear_cache()
        self._describe_costs()

    def _keep_draft(self, draft: DraftModel, emit: Emit) -> None:
        """After a model change: keep the draft if it speaks the new model's vocabulary."""
        from .speculative import check_vocabulary

        loaded = self.require()
        try:
            check_vocabulary(loaded.tokenizer, draft.tokenizer, draft.name, loaded.info.name)
        except WorkbenchError as exc:
            emit(Notice(f"the draft model is no longer used: {exc}"))
            return
        self.draft = draft

    def _describe_costs(self) -> None:
        """Put what the chosen context costs, the KV settings and the draft in the info."""
        loaded = self.loaded
        if loaded is None:
            return
        kv = self.decoding.kv
        tokens, kv_bytes = fit.context_cost(Path(loaded.info.path), self.max_kv_size or None,
                                            kv.bits, kv.group_size)
        loaded.info = replace(loaded.info, context_tokens=tokens, kv_context_bytes=kv_bytes,
                              kv_label=kv.label() if kv.on else "",
                              draft=self.draft.name if self.draft else None)

    def render(self, messages: Iterable[Message], add_generation_prompt: bool = True,
               template_args: Mapping[str, Any] | None = None) -> list[int]:
        return self.require().render(messages, add_generation_prompt, template_args)

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
            kv = self.decoding.kv if self.decoding.kv.on else None
            step = MLX_SPECULATIVE_PREFILL_STEP if self.draft else MLX_PREFILL_STEP
            for done in prefill(loaded.model, slot, todo, self.prefill_step, kv, step):
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
            mode=prepared.mode if prepared is not None else None,
            adapter_mode=self.adapters.mode,
            fused_bytes=prepared.fused_bytes if prepared is not None and prepared.fused else 0,
            mode_note=prepared.note if prepared is not None else "",
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

    def set_adapter_mode(self, mode: str) -> AdapterState:
        """Set how adapters run: auto (fused when it fits in memory), fused or unfused. The
        active adapter follows at once; each mode keeps its own prompt cache."""
        self.require()
        old_key = self.cache_key
        start = time.perf_counter()
        self.adapters.set_mode(mode)
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
             cancel: threading.Event, submitted: float, ignore_eos: bool = False,
             options: TurnOptions | None = None) -> Iterator[Any]:
        """``run_turn`` on the active cache, its ``TurnDone`` completed with the adapter that
        wrote the reply and, on the first turn after a swap, what the swap cost."""
        loaded = self.require()
        pending, self._pending_swap = self._pending_swap, None
        options = options or TurnOptions(ignore_eos=ignore_eos)
        for event in run_turn(loaded, self.caches, self.cache_key, messages, params,
                              cancel=cancel, limit=self.context_limit(),
                              prefill_step=self.prefill_step, submitted=submitted,
                              memory=self.memory, options=options, draft=self.draft,
                              decoding=self.decoding):
            if isinstance(event, TurnDone):
                event = self._complete(event, pending, messages, options)
            yield event

    def _complete(self, done: TurnDone, pending: tuple[float, list[int]] | None,
                  messages: Sequence[Message], options: TurnOptions) -> TurnDone:
        stats = done.stats
        swap_ms, reprefill = None, 0
        if pending is not None and not stats.generated_tokens \
                and stats.finish_reason == "cancelled":
            self._pending_swap = pending  # the re-prefill is still to come
        elif pending is not None:
            swap_ms = pending[0]
            loaded = self.require()
            args = options.template_args or None
            prompt = loaded.render(messages, template_args=args) + list(options.reply_prefix)
            line, reprefill = explain_swap(
                pending[1], prompt, stats.reused_tokens, messages,
                lambda msgs: loaded.render(msgs, False, args), loaded.tokenizer.decode)
            if reprefill:
                stats = replace(stats, cached_before=len(pending[1]), cache_miss=line)
        active = self.adapters.active
        return replace(done, stats=replace(  # the text and the tool calls as run_turn gave
            stats,
            adapter=active.info.name if active else None,
            scale=self.adapters.scale if active else None,
            adapter_identity=self.adapter_identity(),
            swap_ms=swap_ms,
            reprefill_tokens=reprefill,
        ))
