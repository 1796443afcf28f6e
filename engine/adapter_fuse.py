"""The fused adapter mode: the active adapter merged into a copy of only the weights it touches.

Unfused LoRA pays two small matmuls and a few elementwise kernels per adapted layer on every
token: at batch 1 on a GPU those launches dominate (1B llama shape, rank 8 on every
projection, H200: 349 tok/s base, 106 with the adapter). Fusing removes them: each adapted
layer becomes a plain (or quantized) linear again, with the low-rank product added to its
weight, so decoding runs the base model's kernels at the base model's speed.

The fused copy of a layer is built by mlx-lm's own ``fuse()`` on the prepared wrapper (the
code ``mlx_lm fuse`` runs: dequantize, add ``scale * B^T A^T``, re-quantize with the layer's
group size, bits and mode; DoRA renormalises by its magnitude), so a fused reply equals what
``mlx_lm fuse`` output loaded with ``mlx_lm.load`` gives, token for token. The base layers
stay untouched: swapping to another adapter, or to none, is still a module-set swap.

The copies cost memory (about the bytes of the layers the adapter touches), so fusing is
decided per adapter against a memory probe: ``auto`` fuses when the copy takes at most
``AUTO_SHARE`` of what is free, ``fused`` whenever it fits in ``FUSED_SHARE`` of it; either
falls back to unfused, with a note saying why, when it does not. Engine thread only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.errors import BadSetting
from common.formats import fmt_bytes

ADAPTER_MODES = ("auto", "fused", "unfused")
AUTO_SHARE = 0.5
"""``auto`` fuses when the fused copies need at most this share of the free memory."""
FUSED_SHARE = 0.9
"""``fused`` fuses whenever the copies fit in this share of the free memory."""


def check_mode(mode: str | None) -> str:
    """The adapter mode to use (None = auto), or a one-line ``BadSetting``."""
    if mode is None:
        return "auto"
    value = str(mode).strip().lower()
    if value not in ADAPTER_MODES:
        raise BadSetting(f"adapter mode must be one of {', '.join(ADAPTER_MODES)} (auto: fused "
                         f"when it fits in memory, else unfused), not {mode!r}")
    return value


def can_fuse(modules: Mapping[str, Any]) -> bool:
    """Whether every wrapper has mlx-lm's ``fuse`` (LoRA and DoRA linears, switch layers and
    embeddings all do)."""
    return bool(modules) and all(callable(getattr(m, "fuse", None)) for m in modules.values())


def _nbytes(module: Any) -> int:
    from mlx.utils import tree_flatten

    leaves: list[tuple[str, Any]] = tree_flatten(module.parameters())
    return sum(int(v.nbytes) for _, v in leaves)


def fused_nbytes(modules: Mapping[str, Any]) -> int:
    """Bytes the fused copies of ``modules`` would hold, without computing them: ``fuse()``
    builds lazy arrays, whose shapes and dtypes are known before anything is evaluated."""
    total = 0
    for module in modules.values():
        total += _nbytes(module.fuse())
    return total


def fuse_modules(modules: Mapping[str, Any]) -> dict[str, Any]:
    """The fused copy of every wrapper (by module path), evaluated one layer at a time so
    that the dequantized intermediates of only one layer are alive at once."""
    import mlx.core as mx

    fused: dict[str, Any] = {}
    for path, module in modules.items():
        copy = module.fuse()
        copy.eval()
        mx.eval(copy.parameters())
        fused[path] = copy
    return fused


def fit_note(mode: str, need: int, available: int) -> str:
    """"" when fused copies of ``need`` bytes may be made with ``available`` bytes free under
    ``mode``; otherwise the one line that says why the adapter runs unfused."""
    share = AUTO_SHARE if mode == "auto" else FUSED_SHARE
    if need <= share * max(0, available):
        return ""
    return (f"fusing needs {fmt_bytes(need)} for a copy of the weights it touches and "
            f"{fmt_bytes(max(0, available))} is free (it may use {share:.0%} of that in "
            f"{mode} mode): running unfused")
