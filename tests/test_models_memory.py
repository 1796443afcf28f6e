"""Memory fit before a load, and memory given back when the model is switched."""

from __future__ import annotations

import pytest

from common.errors import ModelTooBig
from engine import Engine, Error, ModelLoaded, Result, SamplingParams, TurnDone
from engine.memory import check_fit
from models.fit import fit_report

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
HELLO = [{"role": "user", "content": "Tell me about lists."}]


def test_a_model_too_big_for_free_memory_is_refused_with_numbers(demo_kit):
    free = [1 << 40]
    engine = Engine(memory_probe=lambda: free[0])
    try:
        first = engine.load(str(demo_kit.llama_4bit)).wait(120)
        assert isinstance(first, ModelLoaded)
        free[0] = 1_000_000  # now pretend only 1 MB is free
        final = engine.load(str(demo_kit.qwen3)).wait(120)

        assert isinstance(final, Error) and final.kind == "too-big"
        # What is free counts the memory the loaded model would give back.
        available = 1_000_000 + first.info.weight_bytes
        assert "qwen3 needs about" in final.message
        assert f"only {available / 1e6:.0f} MB is free" in final.message
        assert "\n" not in final.message
        assert final.details["available"] == available
        assert final.details["need"] > final.details["available"]
        # The refused load did not cost the user the model they had.
        reply = engine.chat(HELLO, GREEDY).wait(120)
        assert isinstance(reply, TurnDone) and reply.stats.generated_tokens > 0
        assert engine.info is not None and engine.info.name == "llama-4bit"
    finally:
        engine.close()


def test_a_tight_fit_loads_with_a_warning(demo_kit):
    report = fit_report(demo_kit.llama, available=1 << 40)
    warnings: list[str] = []
    just_enough = int(report.need / 0.9)
    weights = check_fit(demo_kit.llama, lambda: just_enough, warn=warnings.append)
    assert weights == report.weights
    assert len(warnings) == 1 and "it fits, but little is left" in warnings[0]
    with pytest.raises(ModelTooBig, match="but only"):
        check_fit(demo_kit.llama, lambda: report.need - 1)
    assert check_fit(demo_kit.llama, lambda: report.need * 2, warn=warnings.append)
    assert len(warnings) == 1  # plenty free: no warning


def test_the_estimate_counts_the_kv_cache_for_the_context(demo_kit):
    short = fit_report(demo_kit.llama, available=1 << 40, context_tokens=256)
    long = fit_report(demo_kit.llama, available=1 << 40, context_tokens=4096)
    beyond = fit_report(demo_kit.llama, available=1 << 40, context_tokens=1 << 20)
    # llama demo: 4 layers x 2 KV heads x 64 dims x K and V x float32
    assert long.kv - short.kv == (4096 - 256) * 4 * 2 * 64 * 2 * 4
    assert beyond.kv == long.kv and beyond.context_tokens == 4096  # capped at the model's
    assert long.need == long.weights + long.kv + long.overhead


def _active(engine: Engine) -> int:
    final = engine.memory().wait(60)
    assert isinstance(final, Result), final
    return int(final.value.mlx_active)


def test_switching_models_gives_the_old_models_memory_back(engine, demo_kit):
    assert isinstance(engine.load(str(demo_kit.qwen3)).wait(120), ModelLoaded)
    first = engine.chat(HELLO, GREEDY).wait(120)
    assert isinstance(first, TurnDone)
    with_big = _active(engine)
    big_weights = engine.info.weight_bytes if engine.info else 0
    assert with_big >= big_weights  # the float32 model's weights are held by MLX

    assert isinstance(engine.load(str(demo_kit.llama_4bit)).wait(120), ModelLoaded)
    with_small = _active(engine)
    small_weights = engine.info.weight_bytes if engine.info else 0
    assert with_small < with_big
    assert with_small - small_weights < big_weights / 4  # the old weights are gone

    # The conversation carries over and is prefilled again on the new model.
    again = engine.chat(HELLO, GREEDY).wait(120)
    assert isinstance(again, TurnDone), again
    assert again.stats.reused_tokens == 0 and again.stats.prefill_tokens > 0
