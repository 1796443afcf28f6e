"""What a face of the workbench may ask of an engine: the boundary a fake can stand behind.

``Engine`` (the real one, one MLX thread) implements it; the app's tests run on a scripted
fake that does too (``tests/fake_engine.py``; tests/test_engine_contract.py runs one suite
over both), so they need no model and no MLX numerics. Every method returns at once with a
stream; ``subscribe`` listeners hear model and adapter changes whoever made them; what the
engine holds now is one frozen ``EngineState`` any thread may read (``state``), so no face
reaches into an engine for an attribute that one of them may lack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from .adapter_state import AdapterState
    from .adapters import AdapterInfo
    from .events import EngineState, MemoryReading, ModelInfo, StateEvent, TurnDone
    from .prompt_cache import CacheSnapshot
    from .sampling import SamplingParams, TurnOptions
    from .speculative import DecodingSettings
    from .stream import EventStream

T = TypeVar("T")
Emit = Callable[[Any], None]
# Given to a ``with_adapter_swaps`` job: activate (path, scale) as ``use_adapter`` does, and
# announce it (``AdapterChanged``) before returning the new state.
AdapterSwap = Callable[[str | None, float | None], "AdapterState"]


class CacheCore(Protocol):
    """What work on a session's prompt cache may use of the engine's core, on the engine
    thread (``EngineAPI.with_cache``): render the transcript, snapshot and restore the
    active cache, prefill it, and the identities a saved cache must match. ``EngineCore``
    has all of it (mypy checks ``Engine.with_cache``); nothing else of the core is reached."""

    @property
    def info(self) -> ModelInfo | None: ...

    def render(self, messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = True,
               template_args: Mapping[str, Any] | None = None) -> list[int]: ...

    def snapshot(self, valid: list[int] | None = None) -> CacheSnapshot | None: ...

    def restore(self, cache: list[Any], tokens: list[int]) -> None: ...

    def prefill(self, tokens: list[int], emit: Emit, cancel: threading.Event
                ) -> tuple[int, bool]: ...

    def reset_cache(self) -> None: ...

    def cached_tokens(self) -> list[int]: ...

    def adapter_identity(self) -> str: ...

    def kv_identity(self) -> str: ...

    def new_cache(self) -> list[Any]: ...


class StateHolder:
    """The state half of ``EngineAPI``, shared by ``Engine`` and the test suite's fake: one
    frozen ``EngineState``, replaced whole under a lock by whoever changes it, read from any
    thread. The class that mixes it in has ``busy`` (``engine.requests.RequestThread``)."""

    _state: EngineState

    if TYPE_CHECKING:  # given by the class it is mixed into
        @property
        def busy(self) -> bool: ...

    def _hold(self, state: EngineState) -> None:
        self._state = state
        self._state_lock = threading.Lock()

    @property
    def state(self) -> EngineState:
        """What the engine holds now: model, adapter, decoding, adapter mode, draft, busy."""
        return replace(self._state, busy=self.busy)

    @property
    def info(self) -> ModelInfo | None:
        return self._state.info

    @property
    def adapter(self) -> AdapterState | None:
        return self._state.adapter

    @property
    def decoding(self) -> DecodingSettings:
        return self._state.decoding

    def _set_state(self, **changes: Any) -> None:
        with self._state_lock:
            self._state = replace(self._state, **changes)


@runtime_checkable
class EngineAPI(Protocol):
    @property
    def state(self) -> EngineState:
        """What the engine holds now (model, adapter, decoding, adapter mode, draft, busy)."""
        ...

    @property
    def info(self) -> ModelInfo | None:
        """``state.info``: the loaded model."""
        ...

    @property
    def adapter(self) -> AdapterState | None:
        """``state.adapter``: the active adapter once a model is loaded."""
        ...

    @property
    def decoding(self) -> DecodingSettings:
        """``state.decoding``: the last decoding settings asked for."""
        ...

    def subscribe(self, listener: Callable[[StateEvent], None]) -> Callable[[], None]: ...

    def submit(self, fn: Callable[[Any, Emit, threading.Event], T]) -> EventStream[T]:
        """``fn(core, emit, cancel)`` with the whole core: for tests and benchmarks only."""
        ...

    def run_mlx(self, fn: Callable[[Emit, threading.Event], T]) -> EventStream[T]: ...

    def load(self, model: str, adapter: str | None = None) -> EventStream[ModelInfo]: ...

    def chat(self, messages: Iterable[Mapping[str, str]], params: SamplingParams | None = None,
             *, ignore_eos: bool = False, options: TurnOptions | None = None
             ) -> EventStream[TurnDone]: ...

    def load_draft(self, model: str | None) -> EventStream[ModelInfo | None]: ...

    def set_decoding(self, settings: DecodingSettings) -> EventStream[DecodingSettings]: ...

    def use_adapter(self, path: str | Path | None, scale: float | None = None
                    ) -> EventStream[AdapterState]: ...

    def set_adapter_scale(self, scale: float) -> EventStream[AdapterState]: ...

    def set_adapter_mode(self, mode: str) -> EventStream[AdapterState]: ...

    def adapter_state(self) -> EventStream[AdapterState]: ...

    def with_adapter_swaps(self, fn: Callable[[Any, AdapterSwap, Emit, threading.Event], T]
                           ) -> EventStream[T]: ...

    def with_cache(self, fn: Callable[[CacheCore, Emit, threading.Event], T]
                   ) -> EventStream[T]: ...

    def list_adapters(self, dirs: Iterable[str | Path] = (),
                      extra_paths: Iterable[str | Path] = ()
                      ) -> EventStream[list[AdapterInfo]]: ...

    def check_adapter(self, path: str | Path) -> EventStream[AdapterInfo]: ...

    def memory(self) -> EventStream[MemoryReading]: ...

    def reset(self) -> EventStream[None]: ...

    def cancel(self) -> None: ...

    @property
    def busy(self) -> bool: ...

    def close(self, timeout: float = 120.0) -> None: ...
