"""The UI-free MLX engine of MLX Workbench.

Layers, as in mlx-lm: ``run_turn`` (engine/turn.py) is one chat turn as a plain generator
over a ``LoadedModel`` and its ``PromptCaches``; ``EngineCore`` holds that state with the
adapters; ``Engine`` (engine/runtime.py) is the one thread that owns MLX, fed by a queue,
answering each request with a typed ``EventStream``. Nothing here imports textual, rich or
prompt_toolkit, and mlx-lm is imported only on the engine thread; importing this package
loads a module only when one of its names is first used.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.errors import EngineError, WorkbenchError
    from common.progress import LoadProgress

    from .adapter_state import AdapterState
    from .adapters import AdapterInfo
    from .core import EngineCore
    from .events import (
        AdapterChanged,
        EngineState,
        Error,
        Memory,
        MemoryReading,
        ModelChanged,
        ModelInfo,
        ModelLoaded,
        Notice,
        PrefillProgress,
        Result,
        TokenLogprob,
        TokenText,
        TurnDone,
        TurnStats,
    )
    from .prompt_cache import CacheSnapshot
    from .protocol import EngineAPI
    from .runtime import Engine
    from .sampling import PRESETS, SamplingParams, TurnOptions, preset
    from .stream import EventStream, follow, follow_sync

# Each public name and the module that defines it (the foundation's, for the errors and the
# load progress it reports). Importing ``engine`` (or one of its light modules, e.g.
# ``engine.events``) loads nothing else: a name is imported when first used,
# so the app's first frame does not wait for the engine's adapter and model code.
_PUBLIC = {
    "AdapterState": "adapter_state",
    "AdapterInfo": "adapters",
    "EngineCore": "core",
    "EngineError": "common.errors",
    "WorkbenchError": "common.errors",
    "AdapterChanged": "events",
    "EngineState": "events",
    "Error": "events",
    "LoadProgress": "common.progress",
    "Memory": "events",
    "MemoryReading": "events",
    "ModelChanged": "events",
    "ModelInfo": "events",
    "ModelLoaded": "events",
    "Notice": "events",
    "PrefillProgress": "events",
    "Result": "events",
    "TokenText": "events",
    "TokenLogprob": "events",
    "TurnDone": "events",
    "TurnStats": "events",
    "CacheSnapshot": "prompt_cache",
    "EngineAPI": "protocol",
    "Engine": "runtime",
    "PRESETS": "sampling",
    "SamplingParams": "sampling",
    "TurnOptions": "sampling",
    "preset": "sampling",
    "EventStream": "stream",
    "follow": "stream",
    "follow_sync": "stream",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    where = module if "." in module else f"{__name__}.{module}"
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


__all__ = [
    "PRESETS", "AdapterChanged", "AdapterInfo", "AdapterState", "CacheSnapshot", "Engine",
    "EngineAPI", "EngineCore", "EngineError", "EngineState", "Error", "EventStream",
    "LoadProgress", "Memory", "MemoryReading", "ModelChanged", "ModelInfo", "ModelLoaded",
    "Notice", "PrefillProgress", "Result", "SamplingParams", "TokenLogprob", "TokenText",
    "TurnDone", "TurnOptions", "TurnStats", "WorkbenchError", "follow", "follow_sync", "preset",
]
