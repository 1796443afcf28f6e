"""``run_turn`` alone: one chat turn as a plain generator, no engine thread, no queue.

The library layer under the engine thread is tested here the way mlx-lm's ``generate_step``
would be: on a tiny local model, against fresh mlx-lm runs of the same rendered chat.
"""

from __future__ import annotations

import threading

import pytest

from engine import PrefillProgress, SamplingParams, TokenText, TurnDone
from engine.loaded import LoadedModel
from engine.prompt_cache import PromptCaches
from engine.turn import run_turn
from tests.helpers import reference_reply

MAX = 24


@pytest.fixture(scope="module")
def loaded(demo_kit) -> LoadedModel:
    return LoadedModel.load("qwen3", demo_kit.qwen3, lambda _e: None,
                            available=lambda: 1 << 40, context_hint=4096)


def caches_for(loaded: LoadedModel) -> PromptCaches:
    caches = PromptCaches(max_slots=2)
    caches.model = loaded.model
    return caches


def turn(loaded: LoadedModel, caches: PromptCaches, messages: list[dict[str, str]],
         params: SamplingParams, cancel: threading.Event | None = None) -> list[object]:
    return list(run_turn(loaded, caches, None, messages, params, cancel=cancel,
                         prefill_step=16))


def test_a_turn_streams_and_ends_in_turn_done(loaded, demo_kit) -> None:
    caches = caches_for(loaded)
    messages = [{"role": "user", "content": "What is a tuple? Explain it in detail."}]
    events = turn(loaded, caches, messages, SamplingParams(max_tokens=MAX))
    done = events[-1]
    assert isinstance(done, TurnDone)
    progress = [e for e in events if isinstance(e, PrefillProgress)]
    assert len(progress) >= 2 and progress[-1].done == progress[-1].total
    assert "".join(e.text for e in events if isinstance(e, TokenText)) == done.text
    assert done.text == reference_reply(demo_kit.qwen3, messages, MAX)
    # The cache holds exactly the prompt and the reply's tokens.
    assert len(caches.tokens(None)) == done.stats.context_tokens
    assert done.stats.context_tokens == done.stats.prompt_tokens + done.stats.generated_tokens


def test_cancel_between_prefill_chunks_keeps_what_was_read(loaded, demo_kit) -> None:
    caches = caches_for(loaded)
    cancel = threading.Event()
    messages = [{"role": "user", "content": "A long question " * 20}]
    seen: list[object] = []
    for event in run_turn(loaded, caches, None, messages, SamplingParams(max_tokens=MAX),
                          cancel=cancel, prefill_step=16):
        seen.append(event)
        if isinstance(event, PrefillProgress):
            cancel.set()
    done = seen[-1]
    assert isinstance(done, TurnDone) and done.stats.finish_reason == "cancelled"
    assert done.stats.generated_tokens == 0
    assert len(caches.tokens(None)) == 16 == caches.get(None).offset()  # type: ignore[union-attr]
    again = turn(loaded, caches, messages, SamplingParams(max_tokens=MAX))[-1]
    assert isinstance(again, TurnDone) and again.stats.reused_tokens == 16
    assert again.text == reference_reply(demo_kit.qwen3, messages, MAX)


def test_repetition_penalty_sees_the_cached_history(loaded, demo_kit) -> None:
    """Issue 10 #2: with the cache reused, the penalty's window must still cover the whole
    conversation (demo qwen3, penalty 1.5, hi / ok / go / yes: reply 4 used to differ)."""
    caches = caches_for(loaded)
    params = SamplingParams(max_tokens=MAX, repetition_penalty=1.5)
    messages: list[dict[str, str]] = []
    for line in ("hi", "ok", "go", "yes"):
        messages.append({"role": "user", "content": line})
        done = turn(loaded, caches, messages, params)[-1]
        assert isinstance(done, TurnDone)
        if len(messages) > 1:
            assert done.stats.reused_tokens > 0
        assert done.text == reference_reply(demo_kit.qwen3, messages, MAX,
                                            repetition_penalty=1.5), line
        messages.append({"role": "assistant", "content": done.text})


def test_prefill_chunks_are_sized_by_time() -> None:
    """Issue 10 #17 / 12: a slow chunk halves the next one (a cancel waits less), a fast one
    doubles it (a GPU is not starved), never more than twofold, within bounds."""
    from engine.turn import ChunkSizer

    sizer = ChunkSizer(first=512, target_s=0.25, smallest=32, largest=4096)
    sizer.measured(512, 3.0)  # 512 tokens took 3 s: far too long to wait for a cancel
    assert sizer.size == 256
    for _ in range(10):
        sizer.measured(sizer.size, 3.0)
    assert sizer.size == 32
    for _ in range(3):
        sizer.measured(sizer.size, 0.001)
    assert sizer.size == 256
    for _ in range(10):
        sizer.measured(sizer.size, 0.001)
    assert sizer.size == 4096
    sizer.measured(100, 10.0)  # a short last chunk says nothing about the rate
    assert sizer.size == 4096


def test_a_long_paste_writes_no_tokenizer_warning(loaded, capfd, caplog) -> None:
    """Issue 10 #17: transformers' "sequence length is longer than..." warning, printed on
    stderr, would be drawn over the app's screen."""
    ids = loaded.render([{"role": "user", "content": "a very long paste " * 1500}])
    assert len(ids) > loaded.tokenizer._tokenizer.model_max_length
    assert "Token indices sequence length" not in capfd.readouterr().err + caplog.text
