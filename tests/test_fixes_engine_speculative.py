"""Drafts and prompt lookup on sliding-window models equal plain greedy (issue 19 #21).

A sliding-window layer's ``RotatingKVCache`` can be cut back only until its window is
full; after that it is written over in place and a cut leaves the rejected drafts in it.
The engine chose the decoding mode from the cache before the prompt was read, so a window
that filled during the prompt or the reply made prompt lookup drift and mlx-lm's draft step
end in "Speculative decoding requires a trimmable prompt cache". Now the turn asks whether
every cache (the model's, the draft's) stays below its window through the prompt, the
longest reply and one draft; if not, it says so in one line and decodes plainly. Each reply
is compared with a fresh mlx-lm run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import Engine, Error, Notice, SamplingParams, TurnDone
from engine.speculative import DecodingSettings
from models.demo import LLAMA, DemoSpec, build_model
from tests.helpers import reference_reply

MAX = 40
PARAMS = SamplingParams(max_tokens=MAX)
WINDOW = 24
QUESTIONS = ("Hi", "Tell me about the for statement and lists in Python, at length.")

SLIDING = {
    "llama": DemoSpec(name="sliding", model_type="llama", seed=3, extra={
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "sliding_window": WINDOW}),
    "gemma3": DemoSpec(name="gemma3", model_type="gemma3_text", seed=12,
                       num_attention_heads=4, num_key_value_heads=2, extra={
        "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": WINDOW,
        "sliding_window_pattern": 2, "rms_norm_eps": 1e-6}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sliding")
    built = {name: build_model(root / name, spec) for name, spec in SLIDING.items()}
    built["wide"] = build_model(root / "wide", DemoSpec(
        name="wide", model_type="llama", seed=3,
        extra={"layer_types": ["sliding_attention", "full_attention"] * 2,
               "sliding_window": 1024}))
    built["full"] = build_model(root / "full", LLAMA)  # full attention: a draft for them
    return built


def chat(main: Path, decoding: DecodingSettings, draft: Path | None = None
         ) -> list[tuple[list[dict[str, str]], TurnDone, list[str]]]:
    """Two turns; per turn: the conversation it answered, its TurnDone, its notices."""
    turns: list[tuple[list[dict[str, str]], Any, list[str]]] = []
    messages: list[dict[str, str]] = []
    with Engine(decoding=decoding) as engine:
        engine.load(str(main)).result_sync(120)
        if draft is not None:
            engine.load_draft(str(draft)).result_sync(120)
        for question in QUESTIONS:
            messages.append({"role": "user", "content": question})
            events = list(engine.chat(messages, PARAMS))
            final = getattr(events[-1], "value", events[-1])
            assert not isinstance(final, Error), final.message
            assert isinstance(final, TurnDone), final
            notices = [e.message for e in events if isinstance(e, Notice)]
            turns.append((list(messages), final, notices))
            messages.append({"role": "assistant", "content": final.text})
    return turns


@pytest.mark.parametrize("arch", list(SLIDING))
@pytest.mark.parametrize("how", ["lookup", "draft", "sliding draft"])
def test_a_window_that_fills_decodes_plainly_and_exactly(models, arch, how) -> None:
    main, draft = models[arch], None
    decoding = DecodingSettings(prompt_lookup=4 if how == "lookup" else 0)
    if how == "draft":
        draft = models["full"]  # only the model's window fills
    elif how == "sliding draft":
        main, draft = models["full"], models[arch]  # the draft's window fills
    for messages, done, notices in chat(main, decoding, draft):
        assert done.text == reference_reply(main, messages, MAX)
        assert done.stats.decoder == ""
        assert len(notices) == 1 and "sliding window (24)" in notices[0], notices
        assert "decoded plainly" in notices[0]


def test_a_window_that_never_fills_still_drafts_exactly(models) -> None:
    wide = models["wide"]
    for messages, done, notices in chat(wide, DecodingSettings(prompt_lookup=4)):
        assert done.text == reference_reply(wide, messages, MAX)
        assert done.stats.decoder == "prompt lookup"
        assert notices == []
