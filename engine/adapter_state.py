"""The data of adapter swapping: cache keys, the state a swap reports, a prepared adapter.

Why a module of its own: ``AdapterKey`` and ``AdapterState`` are what the rest of the
workbench sees of an adapter swap (cache keys, events, the UI's adapter details), and
``PreparedAdapter`` is what ``engine.adapter_swap.AdapterManager`` keeps per adapter; none of
them touch the model, so they live apart from the manager that prepares and installs the
modules. ``check_scale`` is the one check on the scale multiplier (0 to ``MAX_SCALE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import BadSetting

from .adapters import AdapterInfo

MAX_SCALE = 2.0


@dataclass(frozen=True)
class AdapterKey:
    """The cache key for K/V computed under an adapter at a scale.

    Two keys are equal when the adapter's settings and weights (``digest``) and the scale are
    equal, whatever the folder is called, and the mode is the same (fused and unfused K/V
    differ numerically); ``str(key)`` is the identity sessions store with a cache file, e.g.
    ``tone-a@3f2a9c01b4de x1`` (unfused) or ``tone-a@3f2a9c01b4de fused x1``.
    """

    name: str = field(compare=False)
    digest: str
    scale: float
    mode: str = "unfused"  # fused | unfused: the same adapter's K/V differ between the two

    def __str__(self) -> str:
        fused = " fused" if self.mode == "fused" else ""
        return f"{self.name}@{self.digest[:12]}{fused} x{self.scale:g}"


@dataclass(frozen=True)
class AdapterState:
    """Which adapter is active after a swap, and what the swap cost.

    ``info`` is None for "no adapter" (the base model). ``scale`` is the multiplier of the
    trained scale (None for the base model) and ``lora_scale`` the value the layers use.
    ``identity`` is ``str`` of the cache key ("" for the base model). ``swap_ms`` is the time
    to install the adapter's layers; ``prepare_ms`` the time to read and prepare it when it
    was not ready yet (0 when it came from the prepared set). ``cached_tokens`` is how many
    tokens of K/V are already cached under this adapter and scale: the next reply reuses what
    it shares with them and re-prefills the rest. ``prepared`` names the adapters kept ready.

    ``mode`` is how the adapter runs: "fused" (merged into a copy of the weights it touches,
    ``fused_bytes`` of memory) or "unfused" (None for the base model); ``adapter_mode`` is
    the setting (auto | fused | unfused) and ``mode_note`` says why it runs unfused when the
    setting asked for fused (it did not fit in memory, or its layers cannot be fused).
    """

    info: AdapterInfo | None
    scale: float | None
    lora_scale: float | None
    identity: str
    swap_ms: float = 0.0
    prepare_ms: float = 0.0
    cached_tokens: int = 0
    prepared: tuple[str, ...] = ()
    mode: str | None = None
    adapter_mode: str = "unfused"
    fused_bytes: int = 0
    mode_note: str = ""

    @property
    def name(self) -> str | None:
        """The adapter's display name, None for the base model."""
        return self.info.name if self.info else None

    @property
    def path(self) -> str | None:
        return self.info.path if self.info else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.name, "path": self.path, "scale": self.scale,
            "lora_scale": self.lora_scale, "identity": self.identity,
            "swap_ms": self.swap_ms, "prepare_ms": self.prepare_ms,
            "cached_tokens": self.cached_tokens, "prepared": list(self.prepared),
            "mode": self.mode, "adapter_mode": self.adapter_mode,
            "fused_bytes": self.fused_bytes, "mode_note": self.mode_note,
            "info": self.info.to_dict() if self.info else None,
        }


@dataclass
class PreparedAdapter:
    """One adapter's wrapper modules, by module path, with its weights loaded; and, in fused
    mode, the fused copies of the same layers (made at ``fused_scale``)."""

    info: AdapterInfo
    digest: str
    modules: dict[str, Any]
    signature: tuple[int, int, int, int]  # sizes and mtimes of its two files
    fused: dict[str, Any] | None = None
    fused_scale: float | None = None  # the lora scale the fused copies hold
    fused_bytes: int = 0
    use_fused: bool = False  # which set ``installed`` gives
    note: str = ""  # why it runs unfused although the setting asked for fused

    @property
    def mode(self) -> str:
        return "fused" if self.use_fused and self.fused is not None else "unfused"

    def installed(self) -> dict[str, Any]:
        """The module set to put in the model: the fused copies or the wrappers."""
        return self.fused if self.use_fused and self.fused is not None else self.modules

    def drop_fused(self) -> int:
        """Forget the fused copies; returns the bytes they held."""
        freed = self.fused_bytes if self.fused is not None else 0
        self.fused, self.fused_scale, self.fused_bytes, self.use_fused = None, None, 0, False
        return freed

    def key(self, scale: float) -> AdapterKey:
        return AdapterKey(self.info.name, self.digest, scale, self.mode)

    def set_scale(self, scale: float) -> float:
        lora_scale = self.info.scale * scale
        for module in self.modules.values():
            if hasattr(module, "scale"):
                module.scale = lora_scale
        return lora_scale


def check_scale(scale: float | None) -> float:
    """The scale multiplier to use (None = 1, as trained), or a one-line ``BadSetting``."""
    if scale is None:
        return 1.0
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise BadSetting(f"adapter scale must be a number from 0 to {MAX_SCALE:g} (times the "
                         f"trained scale), not {scale!r}") from None
    if not 0.0 <= value <= MAX_SCALE:
        raise BadSetting(f"adapter scale must be from 0 to {MAX_SCALE:g} (times the trained "
                         f"scale; 1 = as trained), not {value:g}")
    return value

