"""The UI-free MLX engine of MLX Workbench.

Layers, as in mlx-lm: ``run_turn`` (engine/turn.py) is one chat turn as a plain generator
over a ``LoadedModel`` and its ``PromptCaches``; ``EngineCore`` holds that state with the
adapters; ``Engine`` (engine/runtime.py) is the one thread that owns MLX, fed by a queue,
answering each request with a typed ``EventStream``. Nothing here imports textual, rich or
prompt_toolkit, and mlx-lm is imported only on the engine thread, so importing this package
is cheap.
"""

from .adapter_swap import AdapterState
from .adapters import AdapterInfo
from .core import EngineCore
from .errors import EngineError, WorkbenchError
from .events import (
    AdapterChanged,
    Error,
    LoadProgress,
    Memory,
    MemoryReading,
    ModelChanged,
    ModelInfo,
    ModelLoaded,
    Notice,
    PrefillProgress,
    Result,
    TokenText,
    TurnDone,
    TurnStats,
)
from .prompt_cache import CacheSnapshot
from .protocol import EngineAPI
from .runtime import Engine
from .sampling import PRESETS, SamplingParams, preset
from .stream import EventStream, follow, follow_sync

__all__ = [
    "PRESETS", "AdapterChanged", "AdapterInfo", "AdapterState", "CacheSnapshot", "Engine",
    "EngineAPI", "EngineCore", "EngineError", "Error", "EventStream", "LoadProgress", "Memory",
    "MemoryReading", "ModelChanged", "ModelInfo", "ModelLoaded", "Notice", "PrefillProgress",
    "Result", "SamplingParams", "TokenText", "TurnDone", "TurnStats", "WorkbenchError",
    "follow", "follow_sync", "preset",
]
