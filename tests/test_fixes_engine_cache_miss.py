"""The cache-miss line after an adapter change names every reason (issue 19 #14).

When the adapter changed and the system prompt changed too, the line said only "the adapter
changed, so N tokens were prefilled again": true for those N, silent about the rest of the
cached conversation, which no adapter could have reused. Now it names the system prompt too;
a swap in an unchanged conversation still reads as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Engine, SamplingParams
from models.demo import ADAPTERS, LLAMA, build_adapter, build_model

PARAMS = SamplingParams(max_tokens=8)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo llama and its tone-a adapter (built here: the whole kit is not needed)."""
    root = tmp_path_factory.mktemp("miss")
    model = build_model(root / "llama", LLAMA)
    return model, build_adapter(model, root / "tone-a", ADAPTERS[0])


def test_a_swap_with_a_new_system_prompt_names_both(llama) -> None:
    with Engine() as engine:
        engine.load(str(llama[0])).result_sync(120)
        first = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
        engine.chat(first, PARAMS).result_sync(120)
        engine.use_adapter(str(llama[1])).result_sync(120)
        second = [{"role": "system", "content": "Be brief and curt."},
                  {"role": "user", "content": "Hi"}]
        done = engine.chat(second, PARAMS).result_sync(120)
    line = done.stats.cache_miss
    assert "the adapter changed" in line
    assert "the system prompt changed" in line
    assert f"so {done.stats.reprefill_tokens} tokens were prefilled again" in line


def test_a_swap_in_the_same_conversation_blames_the_adapter_alone(llama) -> None:
    with Engine() as engine:
        engine.load(str(llama[0])).result_sync(120)
        messages = [{"role": "system", "content": "Be kind."},
                    {"role": "user", "content": "Hi"}]
        done = engine.chat(messages, PARAMS).result_sync(120)
        engine.use_adapter(str(llama[1])).result_sync(120)
        messages += [{"role": "assistant", "content": done.text},
                     {"role": "user", "content": "And then?"}]
        after = engine.chat(messages, PARAMS).result_sync(120)
    assert after.stats.reprefill_tokens > 0
    assert after.stats.cache_miss == (
        f"reused 0 of {after.stats.cached_before} cached tokens: the adapter changed, so "
        f"{after.stats.reprefill_tokens} tokens were prefilled again under it")


def test_a_cache_that_went_back_to_its_checkpoint_is_not_called_sliding_window_alone() -> None:
    """A hybrid model's recurrent layers go back to the checkpoint too (issue 19 #1): the
    line names both kinds of layer and says where the cache went back to."""
    from engine.cache_miss import explain

    held, prompt = list(range(1, 21)), [*range(1, 16), 99, 100]
    line = explain(held, prompt, 10, [{"role": "user", "content": "x"}],
                   lambda _msgs: prompt, lambda tokens: " ".join(map(str, tokens)))
    assert line.startswith("reused 10 of 20 cached tokens: the prompts agree on 15 tokens")
    assert "sliding-window or recurrent layers" in line
    assert "where the last prompt ended" in line
