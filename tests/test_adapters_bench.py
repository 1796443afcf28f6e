"""The adapter benchmark runs end to end (with small settings) and reports every number.

No speed is asserted here (speed goals live in the benchmark's output); this checks that
each number was measured and is consistent with what the engine reported.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.adapters import BIG_SPEC, run_adapter_bench

pytestmark = pytest.mark.slow

PER_MODEL = ("swap_ms", "swap_install_ms", "prepare_ms", "reload_ms", "speedup",
             "decode_tps_base", "decode_tps_adapter", "ttft_after_swap_s", "ttft_swap_back_s")


def test_adapter_bench_reports_every_number(tmp_path):
    small = replace(BIG_SPEC, hidden_size=128, num_hidden_layers=2, intermediate_size=256,
                    num_attention_heads=4, num_key_value_heads=2, dtype="float32")
    work = tmp_path / "work"
    work.mkdir()
    out = run_adapter_bench(rounds=1, big_spec=small, conversation_tokens=200, gen_tokens=8,
                            workdir=work)
    for prefix in ("demo", "big"):
        for key in PER_MODEL:
            assert out[f"{prefix}_{key}"] > 0, key
        assert out[f"{prefix}_adapter"] == "bench-lora"
        assert out[f"{prefix}_conversation_tokens"] >= 200
        # After the swap the whole conversation was prefilled again under the adapter.
        assert out[f"{prefix}_reprefill_tokens"] == out[f"{prefix}_conversation_tokens"] - 1
        assert out[f"{prefix}_speedup"] == pytest.approx(
            out[f"{prefix}_reload_ms"] / out[f"{prefix}_swap_ms"])
    assert out["big_dtype"] == "float32"
    assert list(work.iterdir()) == []  # the built models are cleaned up
