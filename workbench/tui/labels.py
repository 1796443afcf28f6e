"""How adapters are named on screen (plain functions, cheap to import before the first frame).

``adapter_label`` names what wrote a reply (``tone-a ×1`` or ``no adapter``); the pane, the
turns' borders, compare and the command palette all use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine import TurnStats

__all__ = ["NO_ADAPTER", "adapter_label", "scale_label", "turn_adapter_label"]

NO_ADAPTER = "No adapter"


def scale_label(scale: float | None) -> str:
    return f"×{scale:g}" if scale is not None else ""


def adapter_label(name: str | None, scale: float | None) -> str:
    """How a reply's producer is named: ``tone-a ×1`` or ``no adapter``."""
    return f"{name} {scale_label(scale)}".strip() if name else "no adapter"


def turn_adapter_label(stats: TurnStats) -> str:
    """The adapter and scale that produced a reply, for the turn's bottom border."""
    return adapter_label(stats.adapter, stats.scale)
