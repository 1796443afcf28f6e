"""KV settings a model's cache cannot take are refused at load, not late in a chat (issue 19 #25).

mlx-lm quantizes the cache once it holds ``quantized_kv_start`` tokens (5000 by default);
with a head size the group size does not divide (head 32, group 64) every turn from then on
ended in "unexpected ValueError: [quantize] ...", and a sliding-window cache failed there
too. Now the load (and a settings change on a loaded model) says so in one line, naming the
group size that would work, and a group size that fits still equals mlx-lm.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, Error, ModelLoaded, SamplingParams
from engine.speculative import DecodingSettings, KVSettings
from models.demo import LLAMA, DemoSpec, build_model

MAX = 8
PROMPT = [{"role": "user", "content": "Tell me about the for statement."}]


@pytest.fixture(scope="module")
def head32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = DemoSpec(name="head32", model_type="llama", seed=4, num_attention_heads=8,
                    num_key_value_heads=2)  # 256 wide, 8 heads: 32 values a head
    return build_model(tmp_path_factory.mktemp("head32") / "model", spec)


@pytest.fixture(scope="module")
def sliding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = DemoSpec(name="sliding", model_type="llama", seed=3, extra={
        "layer_types": ["sliding_attention", "full_attention"] * 2, "sliding_window": 24})
    return build_model(tmp_path_factory.mktemp("sliding") / "model", spec)


def generate(model: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench", "generate", "--model", str(model), "--prompt",
         "Hello", "--max-tokens", str(MAX), "--quiet", *flags],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})


def test_a_group_size_larger_than_the_head_is_refused_at_load(head32) -> None:
    run = generate(head32, "--kv-bits", "4")  # the default start: quantizing comes late
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("workbench:")]
    assert len(lines) == 1, run.stderr
    assert "--kv-group-size 32" in lines[0] and "32 values" in lines[0]
    assert "Traceback" not in run.stderr and "unexpected" not in run.stderr
    assert run.stdout == ""


def test_a_sliding_window_model_is_refused_at_load(sliding) -> None:
    with Engine(decoding=DecodingSettings(kv=KVSettings(bits=8))) as engine:
        final = engine.load(str(sliding)).wait(120)
    assert isinstance(final, Error)
    assert "sliding-window cache cannot be quantized" in final.message
    assert "--kv-bits" in final.message


def test_a_settings_change_that_does_not_fit_leaves_the_chat_as_it_was(head32) -> None:
    with Engine() as engine:
        assert isinstance(engine.load(str(head32)).wait(120), ModelLoaded)
        refused = engine.set_decoding(DecodingSettings(kv=KVSettings(bits=4))).wait(60)
        assert isinstance(refused, Error) and "--kv-group-size 32" in refused.message
        assert not engine.decoding.kv.on
        done = engine.chat(PROMPT, SamplingParams(max_tokens=MAX)).result_sync(120)
    assert done.stats.kv_cache == ""


def test_a_group_size_that_fits_equals_mlx_lm(head32) -> None:
    from mlx_lm import load, stream_generate

    kv = KVSettings(bits=4, group_size=32, start=0)
    with Engine(decoding=DecodingSettings(kv=kv)) as engine:
        assert isinstance(engine.load(str(head32)).wait(120), ModelLoaded)
        done = engine.chat(PROMPT, SamplingParams(max_tokens=MAX)).result_sync(120)
    model, tokenizer = load(str(head32))[:2]
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    want = "".join(r.text for r in stream_generate(
        model, tokenizer, prompt, max_tokens=MAX, kv_bits=4, kv_group_size=32,
        quantized_kv_start=0))
    assert done.text == want


def test_a_draft_whose_heads_do_not_fit_is_refused(head32, tmp_path) -> None:
    main = build_model(tmp_path / "llama", LLAMA)  # 64 values a head: group 64 fits
    with Engine(decoding=DecodingSettings(kv=KVSettings(bits=4))) as engine:
        assert isinstance(engine.load(str(main)).wait(120), ModelLoaded)
        final = engine.load_draft(str(head32)).wait(120)
        assert isinstance(final, Error)
        assert final.message.startswith("the draft ") and "--kv-group-size 32" in final.message
        done = engine.chat(PROMPT, SamplingParams(max_tokens=MAX)).result_sync(120)
    assert done.stats.decoder == ""
