"""Memory readings and the fit check made before a model is loaded.

``read_memory`` calls into MLX and so runs on the engine thread; ``available_memory`` and
``estimate_model_bytes`` only read files and the OS and may run anywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

from .errors import ModelTooBig
from .events import MemoryReading

MemoryProbe = Callable[[], int]


def _device_info() -> dict[str, object]:
    import mlx.core as mx

    try:
        return dict(mx.device_info())
    except Exception:  # noqa: BLE001 - older mlx or a backend without the call
        return {}


def device_total_memory() -> int:
    """What the model can use: Metal's recommended working set, CUDA's memory, else RAM."""
    info = _device_info()
    for key in ("max_recommended_working_set_size", "total_memory", "memory_size"):
        value = info.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return int(psutil.virtual_memory().total)


def available_memory() -> int:
    """Bytes a model load can still count on now.

    On Apple silicon and on CPU, weights live in system memory, so that is what is free.
    On CUDA the device's free memory is the limit.
    """
    info = _device_info()
    free = info.get("free_memory")
    if isinstance(free, int) and free > 0 and sys.platform != "darwin":
        return free
    return int(psutil.virtual_memory().available)


def read_memory(weight_bytes: int = 0, kv_bytes: int = 0) -> MemoryReading:
    import mlx.core as mx

    vm = psutil.virtual_memory()
    return MemoryReading(
        mlx_active=int(mx.get_active_memory()),
        mlx_peak=int(mx.get_peak_memory()),
        mlx_cache=int(mx.get_cache_memory()),
        process_rss=int(psutil.Process().memory_info().rss),
        system_available=int(vm.available),
        system_total=int(vm.total),
        device_total=device_total_memory(),
        weight_bytes=weight_bytes,
        kv_bytes=kv_bytes,
    )


def weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def estimate_kv_bytes(config: dict[str, object], tokens: int) -> int:
    """K and V for ``tokens`` positions in every layer, at the model's activation width."""
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
    return 2 * layers * kv_heads * head_dim * tokens * bytes_per


def estimate_model_bytes(path: Path, context_tokens: int = 4096) -> tuple[int, int]:
    """(weight bytes on disk, estimated bytes needed to run with ``context_tokens``)."""
    weights = sum(f.stat().st_size for f in weight_files(path))
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    kv = estimate_kv_bytes(config, context_tokens) if isinstance(config, dict) else 0
    # Activations and MLX's buffers: a tenth of the weights, at least 64 MiB.
    overhead = max(weights // 10, 64 << 20)
    return weights, weights + kv + overhead


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_fit(path: Path, probe: MemoryProbe, context_tokens: int = 4096) -> int:
    """Refuse, with the numbers, a model that cannot fit; return its weight bytes."""
    weights, need = estimate_model_bytes(path, context_tokens)
    have = probe()
    if need > have:
        raise ModelTooBig(
            f"{path.name} needs about {gb(need)} (weights {gb(weights)} + cache for "
            f"{context_tokens} tokens) but only {gb(have)} is free: close other programs "
            "or choose a smaller or more quantized model",
            need=need,
            available=have,
        )
    return weights
