"""Quantizing a model: the same result as mlx-lm's convert, with progress, then load and chat."""

from __future__ import annotations

import threading

import pytest
from safetensors.numpy import load_file

from engine import Error, ModelLoaded, Result, SamplingParams, TurnDone
from models.catalog import scan_models
from models.model_facts import describe_model
from models.quantize import (
    QuantizeError,
    QuantizeProgress,
    quantize,
    quantize_job,
)

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def test_quantize_then_load_then_chat(engine, demo_kit, tmp_path):
    dst = tmp_path / "models" / "llama-q4"
    events = list(engine.submit(quantize_job(demo_kit.llama, dst, bits=4, group_size=64)))

    final = events[-1]
    assert isinstance(final, Result) and final.value == dst, final
    progress = [e for e in events if isinstance(e, QuantizeProgress)]
    assert progress[0].stage == "load" and progress[-1].stage == "done"
    done = [p.done for p in progress if p.total]
    assert done == sorted(done) and done[-1] == progress[-1].total > 0

    # Same tensors as mlx-lm's own convert (the demo kit's 4-bit twin was made with it).
    ours, theirs = load_file(dst / "model.safetensors"), load_file(
        demo_kit.llama_4bit / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all((ours[k] == theirs[k]).all() for k in ours)

    loaded = engine.load(str(dst)).wait(120)
    assert isinstance(loaded, ModelLoaded), loaded
    assert 4 < loaded.info.bits_per_weight < 6
    reply = engine.chat([{"role": "user", "content": "hello"}], GREEDY).wait(120)
    assert isinstance(reply, TurnDone) and reply.stats.generated_tokens > 0
    # And the new folder is a model the picker lists.
    (entry,) = scan_models([tmp_path / "models"], include_cache=False, available=1 << 40)
    assert (entry.name, entry.quant_bits, entry.group_size) == ("llama-q4", 4, 64)


def test_eight_bits_with_another_group_size(demo_kit, tmp_path, engine):
    dst = tmp_path / "qwen3-q8"
    final = engine.submit(quantize_job(demo_kit.qwen3, dst, bits=8, group_size=32)).wait(120)
    assert isinstance(final, Result), final
    facts = describe_model(dst)
    assert (facts.quant_bits, facts.group_size) == (8, 32)
    assert facts.num_parameters == describe_model(demo_kit.qwen3).num_parameters
    assert 8 < facts.bits_per_weight < 12  # 8 bits plus a scale and bias per 32 weights


@pytest.mark.parametrize(("src", "bits", "group", "words"), [
    ("llama_4bit", 4, 64, "already quantized"),
    ("llama", 7, 64, "cannot quantize to 7 bits"),
    ("llama", 4, 100, "group size 100"),
])
def test_refusals_are_one_line_and_write_nothing(demo_kit, tmp_path, src, bits, group, words):
    dst = tmp_path / "out"
    with pytest.raises(QuantizeError, match=words) as err:
        quantize(getattr(demo_kit, src), dst, bits, group)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_and_uncached_repo_are_refused(demo_kit, tmp_path, engine):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    final = engine.submit(quantize_job(demo_kit.llama, taken, 4)).wait(60)
    assert isinstance(final, Error) and "already exists" in final.message
    assert (taken / "notes.txt").read_text() == "mine"
    with pytest.raises(QuantizeError, match="workbench download"):
        quantize("someone/not-downloaded", tmp_path / "x", 4)


def test_cancel_leaves_nothing_behind(demo_kit, tmp_path, engine):
    def job(_core, emit, cancel: threading.Event):
        def on_progress(p: QuantizeProgress) -> None:
            emit(p)
            if p.stage == "quantize":
                cancel.set()  # what engine.cancel() does, at a known point

        return quantize(demo_kit.llama, tmp_path / "q", 4, progress=on_progress, cancel=cancel)

    final = engine.submit(job).wait(120)
    assert isinstance(final, Error) and final.kind == "cancelled", final
    assert "nothing was written" in final.message
    assert list(tmp_path.iterdir()) == []
