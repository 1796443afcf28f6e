"""``workbench bench --adapters``: what a hot swap costs against reloading with the adapter.

Measured on the demo model (or ``--model``) and on a random llama of about 0.5B parameters
that the bench builds itself (with the demo kit's builders, into a temporary folder), each
with a random LoRA adapter on every projection of every block:

- ``*_swap_ms``: median time of ``Engine.use_adapter`` as its caller sees it (request to
  result, the adapter's files re-checked for changes included), alternating adapter and none;
  ``*_swap_install_ms`` the module swap alone; ``*_prepare_ms`` the first, preparing, swap.
- ``*_reload_ms``: median time of a fresh ``mlx_lm.load(model, adapter_path=...)``, what a
  tool without hot swap pays; ``*_speedup`` is reload over swap.
- ``*_decode_tps_base`` / ``*_decode_tps_adapter``: median decode speed without and with it.
- ``*_ttft_after_swap_s``: time to first token of the first reply after a swap on a
  conversation of about 1000 tokens (the whole conversation is prefilled again under the
  adapter); ``*_ttft_swap_back_s`` the same after swapping back to an unchanged
  conversation (its cache was kept).

Every MLX call, building the models included, runs on the engine thread. Prints nothing.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine import (
    Engine,
    EngineCore,
    Error,
    ModelLoaded,
    Result,
    SamplingParams,
    TurnDone,
    TurnStats,
)
from models.demo import AdapterSpec, DemoSpec

BIG_SPEC = DemoSpec(
    name="bench-0.5b", model_type="llama", hidden_size=1024, num_hidden_layers=32,
    intermediate_size=4096, num_attention_heads=16, num_key_value_heads=8, vocab_size=1024,
    dtype="bfloat16", seed=5,
)
"""About 0.5B parameters (32 blocks of 15.7M, plus embeddings): 1 GB in bfloat16 on a GPU,
2 GB in float32 on the CPU backend (where bfloat16 matmuls are several times slower)."""

BENCH_ADAPTER = AdapterSpec(
    "bench-lora", "lora", rank=8, num_layers=-1,
    keys=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    seed=21,
)


class BenchError(RuntimeError):
    """The bench could not run (the message says why, in one line)."""


def _final(stream: Any, timeout: float = 3600) -> Any:
    final = stream.wait(timeout)
    if isinstance(final, Error):
        raise BenchError(final.message)
    return final.value if isinstance(final, Result) else final


def _on_engine(engine: Engine, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the engine thread (all MLX work happens there)."""
    return _final(engine.submit(lambda _core, _emit, _cancel: fn()))


def _cpu_backend() -> bool:
    import mlx.core as mx

    return bool(mx.default_device() == mx.cpu)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _chat(engine: Engine, messages: list[dict[str, str]], max_tokens: int) -> TurnStats:
    done = _final(engine.chat(messages, SamplingParams(temperature=0.0, max_tokens=max_tokens),
                              ignore_eos=True))
    assert isinstance(done, TurnDone)
    return done.stats


def _conversation(engine: Engine, tokens: int) -> list[dict[str, str]]:
    """A chat of at least ``tokens`` rendered tokens, ending with a user message."""
    from pydoc_data import topics

    texts = [topics.topics[k] for k in sorted(topics.topics) if len(topics.topics[k]) > 400]
    messages: list[dict[str, str]] = []
    for i, text in enumerate(texts):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": text[:500]})
        if role == "user" and _rendered_length(engine, messages) >= tokens:
            return messages
    return messages


def _rendered_length(engine: Engine, messages: list[dict[str, str]]) -> int:
    msgs = list(messages)

    def render(core: EngineCore, _emit: Any, _cancel: Any) -> int:
        return len(core.render(msgs))

    return int(_final(engine.submit(render)))


def _reload_ms(engine: Engine, model: str, adapter: str) -> float:
    def load() -> float:
        import mlx.core as mx
        from mlx_lm import load as mlx_load

        start = time.perf_counter()
        loaded = mlx_load(model, adapter_path=adapter)
        elapsed = time.perf_counter() - start
        del loaded
        gc.collect()
        mx.clear_cache()
        return elapsed * 1000

    return float(_on_engine(engine, load))


def measure_model(engine: Engine, model: str, adapter: str, rounds: int,
                  conversation_tokens: int, gen_tokens: int, ttft_rounds: int
                  ) -> dict[str, Any]:
    """All numbers for one model and one adapter (the model is loaded here)."""
    loaded = engine.load(model).wait(3600)
    if not isinstance(loaded, ModelLoaded):
        raise BenchError(getattr(loaded, "message", "the model did not load"))
    out: dict[str, Any] = {"model": loaded.info.name,
                           "params": loaded.info.num_parameters,
                           "adapter": Path(adapter).name}

    first = _final(engine.use_adapter(adapter))
    out["prepare_ms"] = first.prepare_ms
    swaps, installs = [], []
    for _ in range(rounds):
        for target in (None, adapter):
            start = time.perf_counter()
            state = _final(engine.use_adapter(target))
            swaps.append((time.perf_counter() - start) * 1000)
            installs.append(state.swap_ms)
    out["swap_ms"] = _median(swaps)
    out["swap_install_ms"] = _median(installs)
    out["reload_ms"] = _median([_reload_ms(engine, model, adapter) for _ in range(rounds)])
    out["speedup"] = out["reload_ms"] / out["swap_ms"] if out["swap_ms"] else 0.0

    short = [{"role": "user", "content": "Write a long story about the sea."}]
    base_tps, adapter_tps = [], []
    for _ in range(rounds):
        _final(engine.use_adapter(None))
        base_tps.append(_chat(engine, short, gen_tokens).decode_tps)
        _final(engine.use_adapter(adapter))
        adapter_tps.append(_chat(engine, short, gen_tokens).decode_tps)
    out["decode_tps_base"] = _median(base_tps)
    out["decode_tps_adapter"] = _median(adapter_tps)

    conversation = _conversation(engine, conversation_tokens)
    after_swap, swap_back, reprefill = [], [], []
    prompt_tokens = 0
    for _ in range(ttft_rounds):
        _final(engine.reset())
        _final(engine.use_adapter(None))
        _chat(engine, conversation, 1)  # the conversation is cached under the base model
        _final(engine.use_adapter(adapter))
        stats = _chat(engine, conversation, 1)
        after_swap.append(stats.ttft_s)
        reprefill.append(stats.reprefill_tokens)
        prompt_tokens = stats.prompt_tokens
        _final(engine.use_adapter(None))
        swap_back.append(_chat(engine, conversation, 1).ttft_s)
    out["conversation_tokens"] = prompt_tokens
    out["ttft_after_swap_s"] = _median(after_swap)
    out["reprefill_tokens"] = int(_median([float(r) for r in reprefill]))
    out["ttft_swap_back_s"] = _median(swap_back)
    return out


def run_adapter_bench(model: str | None = None, rounds: int = 5, *, big: bool = True,
                      big_spec: DemoSpec = BIG_SPEC, conversation_tokens: int = 1000,
                      gen_tokens: int = 64, workdir: str | Path | None = None
                      ) -> dict[str, Any]:
    """Measure adapter swaps on the demo model (or ``model``) and a built ~0.5B model.

    Returns a flat dict: ``demo_*`` keys for the demo model (``model_*`` when ``model`` is
    given), ``big_*`` keys for the built model (when ``big``), each with ``swap_ms``,
    ``swap_install_ms``, ``prepare_ms``, ``reload_ms``, ``speedup``, ``decode_tps_base``,
    ``decode_tps_adapter``, ``ttft_after_swap_s``, ``ttft_swap_back_s``,
    ``reprefill_tokens``, ``conversation_tokens``, ``params``; plus ``rounds`` and
    ``big_build_s``. ``big_spec``, ``conversation_tokens`` and ``gen_tokens`` exist to run
    it small (tests, a quick look). Raises ``BenchError`` with one line if it cannot run.
    """
    from models.demo import build_adapter, build_model, ensure_demo
    from workbench import paths

    rounds = max(1, int(rounds))
    results: dict[str, Any] = {"rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="wb-adapter-bench-",
                                     dir=str(workdir) if workdir else None) as tmp_name:
        tmp = Path(tmp_name)
        with Engine() as engine:
            if model is None:
                kit = _on_engine(engine, lambda: ensure_demo(paths.demo_dir()))
                label, model_path = "demo", str(kit.llama)
                adapter_path = str(_on_engine(engine, lambda: build_adapter(
                    kit.llama, tmp / "demo-adapter" / BENCH_ADAPTER.name, BENCH_ADAPTER)))
            else:
                label = "model"
                loaded = engine.load(model).wait(3600)
                if not isinstance(loaded, ModelLoaded):
                    raise BenchError(getattr(loaded, "message", f"{model} did not load"))
                model_path = loaded.info.path
                adapter_path = str(_on_engine(engine, lambda: build_adapter(
                    model_path, tmp / "model-adapter" / BENCH_ADAPTER.name, BENCH_ADAPTER)))
            numbers = measure_model(engine, model_path, adapter_path, rounds,
                                    conversation_tokens, gen_tokens, ttft_rounds=rounds)
            results.update({f"{label}_{k}": v for k, v in numbers.items()})
        if big:
            with Engine() as engine:
                start = time.perf_counter()
                big_path = tmp / big_spec.name
                spec = big_spec
                if big_spec is BIG_SPEC and _on_engine(engine, _cpu_backend):
                    spec = replace(big_spec, dtype="float32")
                _on_engine(engine, lambda: build_model(big_path, spec))
                big_adapter = _on_engine(engine, lambda: build_adapter(
                    big_path, tmp / "big-adapter" / BENCH_ADAPTER.name, BENCH_ADAPTER))
                results["big_build_s"] = time.perf_counter() - start
                results["big_dtype"] = spec.dtype
                numbers = measure_model(engine, str(big_path), str(big_adapter), rounds,
                                        conversation_tokens, gen_tokens, ttft_rounds=1)
                results.update({f"big_{k}": v for k, v in numbers.items()})
    return results
