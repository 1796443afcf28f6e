"""Warming the model's kernels up while it loads, so the first reply does not seem to hang.

MLX's CUDA backend compiles kernels the first time each one is used (its own fused kernels
through NVRTC, and the driver turns PTX into machine code): the first 256-token prefill of a
fresh 4-bit 1B model took 52.5 s on an H200, the next one 0.02 s. A load therefore ends
with a visible "warm-up" stage (``LoadProgress``): prefills of the chunk sizes a
conversation uses, one after another on one throwaway cache, and two decode steps with the
greedy sampler. Compiled kernels are kept on disk across processes: MLX's own
(``MLX_PTX_CACHE_DIR``, by default ``<system temp>/mlx/<version>/ptx``) and the CUDA
driver's (``CUDA_CACHE_PATH``, by default ``~/.nv/ComputeCache``). Measured on an H200
(4-bit 1B): a fresh machine's load took 17 s plus 60 s of warm-up; a second process with
both caches kept 17 s plus 0.6 s, its first reply 0.21 s to the first token.

On Metal, kernels ship precompiled: a 7-token prefill and a decode step are enough. On the
CPU backend there is nothing to compile ahead (a forced warm-up took 3-9 s on the demo
models on this project's 2-core machines and saved nothing measurable), so it is skipped.
Engine thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from common.progress import LoadProgress

CUDA_SIZES = (512, 1024, 300, 7)
"""CUDA: prefill chunks run one after another on one cache, as a long prompt runs: the first
prefill chunk (``DEFAULT_PREFILL_STEP``), the next size the chunk sizer takes on a fast GPU,
then chunks that attend to a non-empty cache and make it grow, of sizes that are not
multiples of a tile. (Fresh H200, 4-bit 1B, 1174-token first prompt: 61 s to the first
token without a warm-up; 13 s after a warm-up of 512, 64 and 7 tokens each on an empty
cache; 9.9 s after 512, 300 and 7 on one growing cache.)"""
METAL_SIZES = (7,)
"""Metal ships its kernels precompiled: one short prefill and a decode step are enough."""


def on_gpu() -> bool:
    import mlx.core as mx

    return bool(mx.default_device().type == mx.DeviceType.gpu)


def default_sizes() -> tuple[int, ...]:
    import mlx.core as mx

    return CUDA_SIZES if mx.cuda.is_available() else METAL_SIZES


def warm_up(model: Any, emit: Callable[[Any], None], enabled: bool | None = None,
            sizes: tuple[int, ...] | None = None) -> float:
    """Run the warm-up on ``model`` unless disabled (None: on GPU backends only); returns the
    seconds it took (0 when skipped). ``sizes``: the prefill chunks (default: by backend).
    Changes no state of the model."""
    if enabled is None:
        enabled = on_gpu()
    if not enabled:
        return 0.0
    if sizes is None:
        sizes = default_sizes()
    import mlx.core as mx
    from mlx_lm.generate import generation_stream
    from mlx_lm.models.cache import make_prompt_cache

    emit(LoadProgress("warm-up", "warming up: compiling the GPU kernels a reply needs "
                                 "(the first time on this machine this can take a minute)"))
    start = time.perf_counter()
    try:
        with mx.stream(generation_stream):
            cache = make_prompt_cache(model)
            for size in sizes:
                mx.eval(model(mx.zeros((1, size), dtype=mx.int32), cache=cache))
            for _ in range(2):  # decode steps as generate_step runs them: logprobs, argmax
                logits = model(mx.zeros((1, 1), dtype=mx.int32), cache=cache)[:, -1, :]
                logprobs = logits - mx.logsumexp(logits, keepdims=True)
                mx.eval(mx.argmax(logprobs, axis=-1), logprobs)
    except Exception:  # noqa: BLE001 - a warm-up that fails (memory?) must not fail the load
        pass
    cache = []
    mx.clear_cache()
    return time.perf_counter() - start
