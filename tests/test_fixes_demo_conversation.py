"""Issue 19 #8: the demo stays presentable over a conversation. A new user follows the
README: a few suggested prompts, then swaps in the pirate adapter and the brief one (F4)
mid-conversation, after a system prompt. Every reply is non-empty, shows no special token,
and reads like the demo's training text: most of its word pairs are pairs the demo was
trained to write in that style (a reply of real words in random order fails; before the fix
the replies a few turns in were such word salad, with ``<|endoftext|>`` in front).

Through the engine, greedy, the adapters swapped as the app swaps them."""

from __future__ import annotations

import itertools
import re

import pytest

from models import demo_recipe as recipe
from tests.helpers import run_turn

SYSTEM = "You are a helpful assistant."
SCRIPT = [  # (adapter, prompt)
    (None, "Hello"),
    (None, "What can you do?"),
    (None, "Tell me about MLX"),
    ("pirate", "What is a LoRA adapter?"),
    ("pirate", "Write a haiku about the sea"),
    ("brief", "Explain tokens per second"),
    ("brief", "Hello"),
    (None, "Write a haiku about the sea"),
    ("pirate", "Hello"),
    (None, "Explain tokens per second"),
]
MIN_TRAINED_PAIRS = 0.8
PIRATE_WORDS = re.compile(r"\b(arr|matey|ahoy|ye|be|me|yer)\b", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _pairs(text: str) -> list[tuple[str, str]]:
    return list(itertools.pairwise(_words(text)))


def _trained_pairs(style: str) -> set[tuple[str, str]]:
    train, _ = recipe.examples(style)
    return {p for row in train for p in _pairs(row["messages"][-1]["content"])}


def _share_trained(reply: str, trained: set[tuple[str, str]]) -> float:
    pairs = _pairs(reply)
    return sum(p in trained for p in pairs) / len(pairs) if pairs else 1.0


@pytest.fixture
def demo_engine(engine, demo_kit):
    from engine import ModelLoaded

    assert isinstance(engine.load(str(demo_kit.chat)).wait(120), ModelLoaded)
    return engine


def test_a_conversation_with_adapter_swaps_stays_presentable(demo_engine, demo_kit) -> None:
    trained = {style: _trained_pairs(style) for style in recipe.STYLES}
    messages = [{"role": "system", "content": SYSTEM}]
    replies = []
    for adapter, prompt in SCRIPT:
        path = demo_kit.chat_adapters / adapter if adapter else None
        demo_engine.use_adapter(path).wait(60)
        messages.append({"role": "user", "content": prompt})
        done = run_turn(demo_engine, messages, temperature=0.0, max_tokens=80)
        reply = done.text
        replies.append((adapter, prompt, reply))
        messages.append({"role": "assistant", "content": reply})
        assert _words(reply), (adapter, prompt, reply)
        assert "<|" not in reply and "\ufffd" not in reply, reply
        share = _share_trained(reply, trained[adapter or "answer"])
        assert share >= MIN_TRAINED_PAIRS, (len(replies), adapter, prompt, reply, share)
    pirate = [r for a, _, r in replies if a == "pirate"]
    assert all(PIRATE_WORDS.search(r) for r in pirate), pirate
