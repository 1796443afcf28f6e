"""Will a model fit: its weights, its KV cache for a context, and the memory free
now, from the folder's files and the OS alone (no MLX), so any thread may ask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.formats import gb


def system_available_memory() -> int:
    """The system's free memory now, from the OS alone (no MLX): safe on any thread. On
    Apple silicon and on CPU this is what a load can count on; on CUDA the device's free
    memory (``available_memory``, engine thread) is the limit."""
    import psutil  # ~0.1 s to import: only when memory is read

    return int(psutil.virtual_memory().available)


def weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def estimate_kv_bytes(config: dict[str, object], tokens: int, kv_bits: int | None = None,
                      kv_group_size: int = 64) -> int:
    """K and V for ``tokens`` positions in every layer, at the model's activation width, or
    quantized to ``kv_bits`` (mlx-lm's ``QuantizedKVCache``: the packed values plus a scale
    and a bias per group of ``kv_group_size``, at the activation width)."""
    text = config.get("text_config")
    cfg = text if isinstance(text, dict) else config

    def num(key: str, default: int) -> int:
        value = cfg.get(key, default)
        return value if isinstance(value, int) else default

    layers = num("num_hidden_layers", 0)
    heads = num("num_attention_heads", 1)
    kv_heads = num("num_key_value_heads", heads)
    head_dim = num("head_dim", num("hidden_size", 0) // max(heads, 1))
    bytes_per = 4 if cfg.get("torch_dtype") == "float32" else 2
    elements = 2 * layers * kv_heads * head_dim * tokens
    if kv_bits:
        return int(elements * kv_bits / 8 + elements // kv_group_size * 2 * bytes_per)
    return elements * bytes_per


def model_context_length(config: dict[str, Any]) -> int:
    """The longest context the model was built for, from its config.json (0 if unknown)."""
    text = config.get("text_config")
    for cfg in (text if isinstance(text, dict) else {}, config):
        for key in ("max_position_embeddings", "max_seq_len", "seq_length", "n_positions",
                    "max_sequence_length"):
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 0


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


UNCHOSEN_FLOOR = 4096
"""Without --max-kv-size, a model is refused only if this much context does not fit."""


TIGHT_FRACTION = 0.85
"""A model needing more than this share of the free memory gets a warning (it still loads)."""


@dataclass(frozen=True)
class FitReport:
    """A model's estimated memory need against what is free now, with the numbers."""

    name: str
    weights: int  # bytes of weights on disk (what MLX will hold)
    kv: int  # K and V for ``context_tokens`` positions
    overhead: int  # activations and MLX's buffers
    available: int
    context_tokens: int
    # Also counted: adapters prepared, a draft model (its weights and cache), in bytes; and
    # the KV quantization the cache is counted at ("" = full precision).
    extra: int = 0
    extra_label: str = ""
    kv_label: str = ""
    # The context was not chosen (no --max-kv-size): a cache that fits for the first
    # UNCHOSEN_FLOOR tokens (``floor_kv`` bytes) but not for the model's whole context is a
    # warning with the numbers, not a refusal (most chats never get there).
    context_chosen: bool = True
    floor_kv: int = 0

    @property
    def need(self) -> int:
        return self.weights + self.kv + self.overhead + self.extra

    @property
    def need_at_floor(self) -> int:
        return self.weights + self.overhead + self.extra + min(self.kv, self.floor_kv)

    @property
    def verdict(self) -> str:
        """fits | tight (loads, but leaves little) | too-big (refused)."""
        if self.need > self.available and (self.context_chosen
                                           or self.need_at_floor > self.available):
            return "too-big"
        if self.need > TIGHT_FRACTION * self.available:
            return "tight"
        return "fits"

    def message(self) -> str:
        kv = f", {self.kv_label}" if self.kv_label else ""
        extra = f" + {self.extra_label} {gb(self.extra)}" if self.extra else ""
        parts = (f"{self.name} needs about {gb(self.need)} (weights {gb(self.weights)} + cache "
                 f"{gb(self.kv)} for {self.context_tokens} tokens{kv}{extra})")
        if self.need > self.available and self.verdict != "too-big":
            return (f"{parts} but only {gb(self.available)} is free: it loads, but the "
                    "conversation cannot grow to the whole context; choose a smaller "
                    "--max-kv-size or --kv-bits 8")
        if self.verdict == "too-big":
            return (f"{parts} but only {gb(self.available)} is free: close other programs "
                    "or choose a smaller or more quantized model")
        if self.verdict == "tight":
            return (f"{parts} of the {gb(self.available)} free: it fits, but little is left "
                    "for other programs or a longer context")
        return f"{parts}; {gb(self.available)} is free"


def fit_report(path: Path, available: int | None = None, context_tokens: int | None = 4096,
               name: str | None = None, *, kv_bits: int | None = None,
               kv_group_size: int = 64, extra: int = 0, extra_label: str = "",
               context_chosen: bool = True) -> FitReport:
    """Estimate what the model at ``path`` needs with ``context_tokens`` of context (None:
    the model's own), its cache at ``kv_bits`` (None: full precision), plus ``extra`` bytes
    (adapters, a draft model: ``extra_label`` names them).

    The context is capped at the model's own maximum; ``available`` defaults to
    ``system_available_memory()`` (no MLX, so any thread may call this).
    """
    weights = sum(f.stat().st_size for f in weight_files(path))
    config = _read_config(path)
    longest = model_context_length(config)
    if context_tokens is None:
        context_tokens = longest or 4096
    tokens = min(context_tokens, longest) if longest else context_tokens
    kv = estimate_kv_bytes(config, tokens, kv_bits, kv_group_size)
    # Activations and MLX's buffers: a tenth of the weights, at least 64 MiB.
    overhead = max(weights // 10, 64 << 20)
    have = system_available_memory() if available is None else available
    floor = estimate_kv_bytes(config, min(tokens, UNCHOSEN_FLOOR), kv_bits, kv_group_size)
    return FitReport(name or path.name, weights, kv, overhead, have, tokens, extra,
                     extra_label, f"{kv_bits}-bit" if kv_bits else "", context_chosen, floor)


def adapter_bytes(path: str | Path | None) -> int:
    """What an adapter adds once prepared: its weight files (LoRA matrices)."""
    if not path:
        return 0
    folder = Path(path).expanduser()
    try:
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    except OSError:
        return 0


def context_cost(path: Path, context_tokens: int | None, kv_bits: int | None = None,
                 kv_group_size: int = 64) -> tuple[int, int]:
    """(tokens, KV bytes) of the chosen context (None: the model's own) for the model at
    ``path``: what the model pane shows before the conversation gets there."""
    report = fit_report(path, 1 << 62, context_tokens, kv_bits=kv_bits,
                        kv_group_size=kv_group_size)
    return report.context_tokens, report.kv
