"""Hot-swapping LoRA/DoRA adapters mid-conversation gives exactly what a fresh load gives.

Every reply is compared token for token with ``mlx_lm.load(model, adapter_path=...)`` run
on the same rendered conversation (greedy), on both demo architectures, full precision and
4-bit.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from adapter_fixtures import (
    FAMILY,
    chat_turn,
    reference_tokens,
    result,
    scaled_copy,
    use,
)

from engine import Engine, Error, ModelLoaded, PrefillProgress, SamplingParams, TurnDone

MODELS = ["llama", "qwen3", "llama-4bit", "qwen3-4bit"]
SEQUENCES = {
    "lora": ("none", "tone-a", "tone-b", "none", "tone-a"),
    "dora": ("none", "tone-d", "tone-a", "tone-d", "none"),
}


def model_path(kit, name: str) -> Path:
    return kit.root / name


def adapter_path(kit, model: str, name: str) -> Path | None:
    return None if name == "none" else kit.adapter(name, FAMILY[model])


def loaded(engine: Engine, path: Path, adapter: Path | None = None) -> Engine:
    final = engine.load(str(path), str(adapter) if adapter else None).wait(120)
    assert isinstance(final, ModelLoaded), final
    return engine


@pytest.mark.parametrize("kind", list(SEQUENCES))
@pytest.mark.parametrize("model", MODELS)
def test_swaps_mid_conversation_match_fresh_loads(engine, demo_kit, model, kind):
    path = model_path(demo_kit, model)
    loaded(engine, path)
    messages: list[dict[str, str]] = []
    last_prompt: dict[str, int] = {}  # choice -> length of its last prompt
    previous = None
    for i, choice in enumerate(SEQUENCES[kind]):
        adapter = adapter_path(demo_kit, model, choice)
        state = use(engine, adapter)
        assert state.name == (None if adapter is None else choice)
        assert engine.adapter is not None and engine.adapter.name == state.name
        messages.append({"role": "user", "content": f"Tell me about point {i} of the plan."})
        turn = chat_turn(engine, messages)
        assert turn.generated == reference_tokens(engine, path, adapter, turn.prompt), (
            f"turn {i} under {choice} differs from a fresh load")
        stats = turn.stats
        assert stats.adapter == state.name
        assert stats.scale == (None if adapter is None else 1.0)
        assert stats.adapter_identity == state.identity
        if choice in last_prompt:
            # Its own cache was kept while others ran: only the new part is prefilled.
            assert stats.reused_tokens >= last_prompt[choice]
        else:
            assert stats.reused_tokens == 0
        if previous is not None and choice != previous:
            assert stats.swap_ms is not None
        if i > 0 and choice not in last_prompt:
            # What was cached under the previous choice had to be computed again.
            assert stats.reprefill_tokens > 0
        last_prompt[choice] = len(turn.prompt)
        previous = choice
        messages.append({"role": "assistant", "content": turn.done.text})


def test_swapping_back_to_an_unchanged_conversation_costs_nothing(llama_engine, demo_kit):
    a, b = demo_kit.adapter("tone-a"), demo_kit.adapter("tone-b")
    first = use(llama_engine, a)
    messages = [{"role": "user", "content": "Describe the lighthouse."}]
    t1 = chat_turn(llama_engine, messages)
    use(llama_engine, b)
    back = use(llama_engine, a)
    assert back.identity == first.identity
    assert back.prepare_ms == 0.0  # still prepared: no file read, no new layers
    assert back.cached_tokens >= len(t1.prompt)
    assert set(back.prepared) == {"tone-a", "tone-b"}
    messages += [{"role": "assistant", "content": t1.done.text},
                 {"role": "user", "content": "And the harbour?"}]
    t2 = chat_turn(llama_engine, messages)
    assert t2.stats.reused_tokens >= len(t1.prompt)
    assert t2.stats.reprefill_tokens == 0
    assert t2.generated == reference_tokens(llama_engine, demo_kit.llama, a, t2.prompt)


def test_scale_changes_without_reload_and_matches_edited_config(llama_engine, demo_kit,
                                                                tmp_path):
    a = demo_kit.adapter("tone-a")
    messages = [{"role": "user", "content": "Name three colours."}]
    base = chat_turn(llama_engine, messages)

    half = use(llama_engine, a, 0.5)
    assert (half.scale, half.lora_scale) == (0.5, 5.0)
    assert half.identity.endswith("x0.5")
    t = chat_turn(llama_engine, messages)
    assert t.stats.scale == 0.5
    assert t.generated == reference_tokens(llama_engine, demo_kit.llama,
                                           scaled_copy(a, tmp_path / "half", 0.5), t.prompt)

    double = result(llama_engine.set_adapter_scale(2.0))
    assert double.identity != half.identity and double.prepare_ms == 0.0
    t = chat_turn(llama_engine, messages)
    assert t.stats.reused_tokens == 0  # K/V under scale 0.5 are not valid under 2
    assert t.generated == reference_tokens(llama_engine, demo_kit.llama,
                                           scaled_copy(a, tmp_path / "double", 2.0), t.prompt)

    result(llama_engine.set_adapter_scale(0))
    assert chat_turn(llama_engine, messages).generated == base.generated

    for bad in (2.5, -1):
        final = llama_engine.set_adapter_scale(bad).wait(60)
        assert isinstance(final, Error) and final.kind == "bad-setting", final
        assert "from 0 to 2" in final.message and "\n" not in final.message
    final = llama_engine.use_adapter(demo_kit.adapter("tone-b"), 3).wait(60)
    assert isinstance(final, Error) and final.kind == "bad-setting", final
    state = result(llama_engine.adapter_state())
    assert (state.name, state.scale) == ("tone-a", 0.0)

    use(llama_engine, None)
    final = llama_engine.set_adapter_scale(1.0).wait(60)
    assert isinstance(final, Error) and "no adapter is active" in final.message


def test_load_with_adapter_matches_mlx_lm_and_can_be_swapped_off(engine, demo_kit):
    b = demo_kit.adapter("tone-b")
    loaded(engine, demo_kit.llama_4bit, b)
    assert engine.info is not None and engine.info.adapter == str(b.resolve())
    assert engine.adapter is not None and engine.adapter.name == "tone-b"
    messages = [{"role": "user", "content": "Hello there."}]
    t = chat_turn(engine, messages)
    assert t.stats.adapter == "tone-b" and t.stats.swap_ms is None
    assert t.generated == reference_tokens(engine, demo_kit.llama_4bit, b, t.prompt)
    use(engine, None)
    assert engine.info.adapter is None
    t = chat_turn(engine, messages)
    assert t.generated == reference_tokens(engine, demo_kit.llama_4bit, None, t.prompt)


def test_prepared_adapters_are_bounded_least_recently_used_out(demo_kit):
    with Engine(max_prepared_adapters=2) as eng:
        loaded(eng, demo_kit.llama)
        a, b, d = (demo_kit.adapter(n) for n in ("tone-a", "tone-b", "tone-d"))
        messages = [{"role": "user", "content": "Count to five."}]
        use(eng, a)
        chat_turn(eng, messages)
        use(eng, b)
        state = use(eng, d)
        assert state.prepared == ("tone-b", "tone-d")
        again = use(eng, a)  # was dropped, with its cache: prepared and prefilled again
        assert again.prepare_ms > 0 and again.cached_tokens == 0
        assert again.prepared == ("tone-d", "tone-a")
        t = chat_turn(eng, messages)
        assert t.stats.reused_tokens == 0
        assert t.generated == reference_tokens(eng, demo_kit.llama, a, t.prompt)


def test_reprefill_after_swap_reports_progress_and_can_be_cancelled(demo_kit):
    with Engine(prefill_step_size=16) as eng:
        loaded(eng, demo_kit.qwen3)
        a, b = demo_kit.adapter("tone-a", "qwen3"), demo_kit.adapter("tone-b", "qwen3")
        use(eng, a)
        messages = [{"role": "user", "content": "Summarise: " + "the tide comes in. " * 40}]
        t1 = chat_turn(eng, messages, max_tokens=4)
        messages += [{"role": "assistant", "content": t1.done.text},
                     {"role": "user", "content": "Shorter, please."}]
        use(eng, b)

        # Hold the engine thread so the cancel lands before the re-prefill starts.
        release = threading.Event()
        blocker = eng.submit(lambda _core, _emit, _cancel: release.wait(60))
        stream = eng.chat(messages, SamplingParams(temperature=0.0, max_tokens=8))
        eng.cancel()
        release.set()
        blocker.wait(60)
        events = list(stream)
        done = events[-1]
        assert isinstance(done, TurnDone) and done.stats.finish_reason == "cancelled", done
        assert any(isinstance(ev, PrefillProgress) for ev in events)
        assert done.stats.adapter == "tone-b"

        t2 = chat_turn(eng, messages, max_tokens=8)
        assert t2.stats.prefill_tokens > 16  # the whole conversation, under tone-b
        assert t2.stats.swap_ms is not None and t2.stats.reprefill_tokens > 0
        assert t2.generated == reference_tokens(eng, demo_kit.qwen3, b, t2.prompt, 8)
