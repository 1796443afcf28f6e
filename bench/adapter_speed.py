"""``python -m bench.adapter_speed --model M``: decode speed with an adapter in use, against the
base model, for each way the engine can run the adapter.

Variants, measured in alternating rounds in one process (base, unfused, ..., base, ...):

- ``base``: no adapter.
- ``unfused``: mlx-lm's LoRA/DoRA wrappers (``--adapter-mode unfused``): two small matmuls
  and a few elementwise kernels per adapted layer.
- ``scale0``: the same wrappers at scale 0: the arithmetic of the low-rank branch changes
  nothing, so what it still costs is the kernels it launches.
- ``compiled``: an experiment, not an engine mode: each LoRA linear's forward (base matmul,
  low-rank branch, add) as one ``mx.compile``'d function, which fuses its elementwise ops.
- ``fused``: the adapter merged into a copy of the weights it touches
  (``--adapter-mode fused``, engine/adapter_fuse.py); its memory cost is printed.

Each figure is the median over rounds of greedy decode tokens/s after a short prompt, timed
from the first generated token to the last. Warm-up is excluded: every variant decodes once
before the timed rounds (on CUDA that compiles its kernels), and the engine's own load
warm-up (engine/warmup.py) is not part of any figure. Without ``--adapter`` the bench writes
a random rank-8 LoRA on all seven projections of every block (the shape of MLX-FACTS'
"349 -> 106 tok/s" measurement). Every MLX call runs on the engine thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.formats import fmt_count
from engine import Engine, EngineCore

VARIANTS = ("base", "unfused", "scale0", "compiled", "fused")
PROMPT = [1 + (i * 7919) % 200 for i in range(24)]


def _decode(model: Any, tokens: int) -> tuple[float, list[int]]:
    """Greedy decode of ``tokens`` tokens after ``PROMPT``: (tokens/s, token ids)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    out: list[int] = []
    start = 0.0
    for i, (token, _) in enumerate(generate_step(mx.array(PROMPT), model, prompt_cache=cache,
                                                 max_tokens=tokens + 1)):
        if i == 0:
            start = time.perf_counter()
        out.append(int(token))
    elapsed = time.perf_counter() - start
    return (len(out) - 1) / elapsed if elapsed > 0 else 0.0, out


# -- the compiled experiment -----------------------------------------------------------------
def _compiled_modules(modules: dict[str, Any]) -> dict[str, Any] | None:
    """Each LoRALinear in ``modules`` as a module whose forward is one compiled function;
    None when the adapter has other layer types (DoRA, switch, embedding)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.tuner.lora import LoRALinear

    if not all(type(m) is LoRALinear for m in modules.values()):
        return None
    funcs: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def plain(x: Any, w: Any, a: Any, b: Any, s: Any) -> Any:
        return x @ w.T + (s * ((x @ a) @ b)).astype(x.dtype)

    def quantized_fn(group_size: int, bits: int, mode: str) -> Callable[..., Any]:
        def fn(x: Any, w: Any, scales: Any, biases: Any, a: Any, b: Any, s: Any) -> Any:
            y = mx.quantized_matmul(x, w, scales, biases, transpose=True,
                                    group_size=group_size, bits=bits, mode=mode)
            return y + (s * ((x @ a) @ b)).astype(x.dtype)
        return fn

    class CompiledLoRA(nn.Module):
        def __init__(self, lora: Any) -> None:
            super().__init__()
            self.lora = lora
            linear = lora.linear
            self.quantized = isinstance(linear, nn.QuantizedLinear)
            key: tuple[Any, ...]
            if self.quantized:
                key = ("q", linear.group_size, linear.bits, linear.mode)
                if key not in funcs:
                    funcs[key] = mx.compile(quantized_fn(*key[1:]))
            else:
                key = ("f",)
                if key not in funcs:
                    funcs[key] = mx.compile(plain)
            self.fn = funcs[key]
            self.has_bias = "bias" in linear

        def __call__(self, x: Any) -> Any:
            lora, linear = self.lora, self.lora.linear
            s = mx.array(lora.scale, dtype=x.dtype)
            if self.quantized:
                y = self.fn(x, linear.weight, linear.scales, linear.biases, lora.lora_a,
                            lora.lora_b, s)
            else:
                y = self.fn(x, linear.weight, lora.lora_a, lora.lora_b, s)
            return y + linear.bias if self.has_bias else y

    return {p: CompiledLoRA(m) for p, m in modules.items()}


# -- the bench ---------------------------------------------------------------------------------
def _bench_model(core: EngineCore, model: str, adapter: str, rounds: int, tokens: int,
                 variants: tuple[str, ...], log: Callable[[str], None]) -> dict[str, Any]:
    import mlx.core as mx

    core.load(model, None, lambda _e: None)
    info = core.require().info
    log(f"{info.name}: {fmt_count(info.num_parameters)} parameters, "
        f"{info.bits_per_weight:g} bits/weight; load {info.load_time_s:.2f} s "
        "(load warm-up excluded)")
    compiled: dict[str, Any] | None = None
    fused_bytes = 0
    fuse_ms = 0.0

    def install(variant: str) -> None:
        nonlocal compiled, fused_bytes, fuse_ms
        manager = core.adapters
        if variant == "base":
            core.use_adapter(None)
            return
        mode = "fused" if variant == "fused" else "unfused"
        start = time.perf_counter()
        if manager.mode != mode:
            core.set_adapter_mode(mode)
        state = core.use_adapter(adapter, 0.0 if variant == "scale0" else 1.0)
        if variant == "fused":
            mx.synchronize()
            if state.mode != "fused":
                raise RuntimeError(f"the adapter could not be fused: {state.mode_note}")
            fused_bytes = state.fused_bytes
            fuse_ms = max(fuse_ms, (time.perf_counter() - start) * 1000)
        if variant == "compiled":
            assert manager.active is not None
            if compiled is None:
                compiled = _compiled_modules(manager.active.modules)
            if compiled is None:
                raise RuntimeError("compiled: only plain LoRA linears are compiled")
            manager._set_modules(list(compiled.items()))  # a bench experiment, not a mode

    speeds: dict[str, list[float]] = {v: [] for v in variants}
    outputs: dict[str, list[int]] = {}
    for variant in variants:  # warm-up, not timed
        install(variant)
        _tps, outputs[variant] = _decode(core.model, tokens)
    for _ in range(rounds):
        for variant in variants:
            install(variant)
            tps, _out = _decode(core.model, tokens)
            speeds[variant].append(tps)
    core.use_adapter(None)
    base = statistics.median(speeds["base"]) if "base" in speeds else 0.0
    result: dict[str, Any] = {
        "model": info.name, "path": model, "adapter": adapter,
        "bits_per_weight": info.bits_per_weight, "backend": str(mx.default_device()),
        "tokens": tokens, "rounds": rounds, "fused_bytes": fused_bytes,
        "fuse_ms": round(fuse_ms, 1), "variants": {},
    }
    for variant in variants:
        median = statistics.median(speeds[variant])
        result["variants"][variant] = {
            "decode_tps": round(median, 1),
            "vs_base": round(median / base, 3) if base else None,
            "all_tps": [round(s, 1) for s in speeds[variant]],
            "same_tokens_as_unfused": (outputs[variant] == outputs["unfused"]
                                       if "unfused" in outputs else None),
        }
    return result


def _write_adapter(model: str, folder: Path) -> str:
    from bench.adapters import BENCH_ADAPTER
    from models.demo import build_adapter

    return str(build_adapter(model, folder / "bench-lora", BENCH_ADAPTER))


def run(models: list[str], adapter: str | None, rounds: int, tokens: int,
        variants: tuple[str, ...], log: Callable[[str], None]) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp, Engine(warm_up=False) as engine:
        for model in models:
            def job(core: EngineCore, _emit: Any, _cancel: Any, model: str = model) -> Any:
                path = adapter or _write_adapter(model, Path(tmp) / Path(model).name)
                return _bench_model(core, model, path, rounds, tokens, variants, log)

            results.append(engine.submit(job).result_sync(3600))
    return results


def format_result(result: dict[str, Any]) -> str:
    lines = [f"{result['model']} ({result['bits_per_weight']:g} bits/weight, "
             f"{result['backend']}), {result['tokens']} tokens x {result['rounds']} rounds; "
             f"fused copy {result['fused_bytes'] / 1e6:.1f} MB, made in "
             f"{result['fuse_ms']:.0f} ms (switching from unfused)"]
    lines.append(f"  {'variant':<10}{'decode tok/s':>14}{'vs base':>10}  same tokens as unfused")
    for name, v in result["variants"].items():
        ratio = f"{v['vs_base']:.3f}" if v["vs_base"] is not None else "-"
        same = {True: "yes", False: "no", None: "-"}[v["same_tokens_as_unfused"]]
        lines.append(f"  {name:<10}{v['decode_tps']:>14.1f}{ratio:>10}  {same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adapter_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True,
                        help="a model folder (repeat for several)")
    parser.add_argument("--adapter", help="an adapter folder (default: a random rank-8 LoRA "
                                          "on every projection, written for each model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "base" not in variants:
        parser.error(f"variants must include base and be among {', '.join(VARIANTS)}")
    print("warm-up excluded: each variant decodes once before the timed rounds; the "
          "engine's load warm-up is not in any figure", flush=True)
    results = run(args.model, args.adapter, args.rounds, args.tokens, variants,
                  lambda line: print(line, flush=True))
    for result in results:
        print(format_result(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
