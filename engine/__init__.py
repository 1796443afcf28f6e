"""The UI-free MLX engine of MLX Workbench.

Nothing here imports textual, rich or prompt_toolkit, and mlx-lm is imported only on the
engine thread, so importing this package is cheap.
"""

from .engine import Engine, EngineCore
from .errors import WorkbenchError
from .events import (
    Error,
    LoadProgress,
    Memory,
    MemoryReading,
    ModelInfo,
    ModelLoaded,
    Notice,
    PrefillProgress,
    Result,
    TokenText,
    TurnDone,
    TurnStats,
)
from .sampling import PRESETS, SamplingParams, preset

__all__ = [
    "PRESETS", "Engine", "EngineCore", "Error", "LoadProgress", "Memory", "MemoryReading",
    "ModelInfo", "ModelLoaded", "Notice", "PrefillProgress", "Result", "SamplingParams",
    "TokenText", "TurnDone", "TurnStats", "WorkbenchError", "preset",
]
