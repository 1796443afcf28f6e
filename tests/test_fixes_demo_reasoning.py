"""Issue 19 #14: the reasoning demo writes a ``<think>`` block, so the reasoning view can be
tried offline: a greedy reply streams reasoning pieces, then answer pieces, and the reply
equals a fresh mlx-lm run; with thinking switched off it answers at once."""

from __future__ import annotations

from engine import SamplingParams, TokenText, TurnDone, TurnOptions
from engine.loaded import LoadedModel
from engine.prompt_cache import PromptCaches
from engine.reasoning import ANSWER, REASONING
from engine.turn import run_turn
from tests.helpers import reference_reply

GREEDY = SamplingParams(temperature=0.0, max_tokens=64)


def _turn(loaded: LoadedModel, messages, thinking: bool) -> tuple[TurnDone, dict[str, str]]:
    caches = PromptCaches(max_slots=1)
    caches.model = loaded.model
    options = TurnOptions(template_args={"enable_thinking": thinking})
    events = list(run_turn(loaded, caches, None, messages, GREEDY, options=options))
    kinds: dict[str, str] = {REASONING: "", ANSWER: ""}
    for e in events:
        if isinstance(e, TokenText):
            kinds[e.kind] += e.text
    assert isinstance(events[-1], TurnDone)
    return events[-1], kinds


def test_the_reasoning_demo_thinks_then_answers(demo_kit) -> None:
    path = demo_kit.qwen3_think
    loaded = LoadedModel.load(path.name, path, lambda _e: None, available=lambda: 1 << 40,
                              context_hint=4096)
    assert loaded.info.reasoning and loaded.info.thinking_switch
    messages = [{"role": "user", "content": "Tell me about volcanoes"}]
    done, kinds = _turn(loaded, messages, thinking=True)
    assert kinds[REASONING].strip() and kinds[ANSWER].strip(), kinds
    assert "<think>" not in kinds[ANSWER] and "</think>" not in kinds[ANSWER]
    assert done.text == reference_reply(path, messages, GREEDY.max_tokens)
    assert done.text.startswith("<think>") and "</think>" in done.text

    messages += [{"role": "assistant", "content": done.text},
                 {"role": "user", "content": "And then?"}]
    second, kinds = _turn(loaded, messages, thinking=True)
    assert kinds[REASONING].strip() and kinds[ANSWER].strip(), kinds
    assert second.text == reference_reply(path, messages, GREEDY.max_tokens)

    _, kinds = _turn(loaded, messages[:1], thinking=False)
    assert not kinds[REASONING] and kinds[ANSWER].strip(), kinds


def test_the_shipped_reasoning_demo_is_small() -> None:
    from models.demo import THINK_ASSETS as ASSETS

    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    assert files and sum(p.stat().st_size for p in files) < 400_000
