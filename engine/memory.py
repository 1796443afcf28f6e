"""Memory readings and the fit check made before a model is loaded.

``read_memory``, ``available_memory`` and ``device_total_memory`` call into MLX
(``mx.device_info``) and so run on the engine thread. ``system_available_memory`` and
``fit_report`` given an ``available`` figure only read files and the OS and may run anywhere
(the models screen asks them for every model it lists).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import ModelTooBig
from models.fit import fit_report

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
    import psutil  # ~0.1 s to import: only when memory is read

    info = _device_info()
    for key in ("max_recommended_working_set_size", "total_memory", "memory_size"):
        value = info.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return int(psutil.virtual_memory().total)


def available_memory() -> int:
    """Bytes a model load can still count on now. Calls ``mx.device_info()``: engine thread
    only (``Engine.memory()`` returns it as ``MemoryReading.load_available``).

    On Apple silicon and on CPU, weights live in system memory, so that is what is free.
    On CUDA the device's free memory is the limit.
    """
    import psutil  # ~0.1 s to import: only when memory is read

    info = _device_info()
    free = info.get("free_memory")
    if isinstance(free, int) and free > 0 and sys.platform != "darwin":
        return free
    return int(psutil.virtual_memory().available)


def read_memory(weight_bytes: int = 0, kv_bytes: int = 0) -> MemoryReading:
    import mlx.core as mx
    import psutil  # ~0.1 s to import: only when memory is read

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
        load_available=available_memory(),
    )


def check_fit(path: Path, probe: MemoryProbe, context_tokens: int | None = 4096,
              warn: Callable[[str], None] | None = None, **counted: Any) -> int:
    """Refuse, with the numbers, a model that cannot fit; return its weight bytes.

    A model that fits only just is loaded, and ``warn`` (if given) gets one line about it.
    ``counted``: ``fit_report``'s keywords (KV bits, adapters, a draft model).
    """
    report = fit_report(path, probe(), context_tokens, **counted)
    if report.verdict == "too-big":
        raise ModelTooBig(report.message(), need=report.need, available=report.available)
    if report.verdict == "tight" and warn is not None:
        warn(report.message())
    return report.weights


