"""What a face of the workbench may ask of an engine: the boundary a fake can stand behind.

``Engine`` (the real one, one MLX thread) implements it; the app's tests run on a scripted
fake that does too (``tests/fake_engine.py``), so they need no model and no MLX numerics.
Every method returns at once with a stream; ``subscribe`` listeners hear model and adapter
changes whoever made them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .adapter_swap import AdapterState
    from .adapters import AdapterInfo
    from .events import MemoryReading, ModelInfo, StateEvent, TurnDone
    from .sampling import SamplingParams, TurnOptions
    from .speculative import DecodingSettings
    from .stream import EventStream

T = TypeVar("T")


class EngineAPI(Protocol):
    info: ModelInfo | None  # the loaded model (any thread may read it)
    adapter: AdapterState | None  # the active adapter once a model is loaded

    def subscribe(self, listener: Callable[[StateEvent], None]) -> Callable[[], None]: ...

    def submit(self, fn: Callable[[Any, Callable[[Any], None], threading.Event], T]
               ) -> EventStream[T]: ...

    def load(self, model: str, adapter: str | None = None) -> EventStream[ModelInfo]: ...

    def chat(self, messages: Iterable[Mapping[str, str]], params: SamplingParams | None = None,
             *, ignore_eos: bool = False, options: TurnOptions | None = None
             ) -> EventStream[TurnDone]: ...

    def load_draft(self, model: str | None) -> EventStream[ModelInfo | None]: ...

    def set_decoding(self, settings: DecodingSettings) -> EventStream[DecodingSettings]: ...

    def use_adapter(self, path: str | Path | None, scale: float | None = None
                    ) -> EventStream[AdapterState]: ...

    def set_adapter_scale(self, scale: float) -> EventStream[AdapterState]: ...

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
