"""Sliding-window models keep what is valid of their cache (issue 10 #4).

A llama with ``layer_types`` (sliding and full attention layers) and a 24-token window: its
sliding layers' ``RotatingKVCache`` cannot be trimmed once the window is full. Before, any
mismatch with the cached tokens then threw the whole cache away, and a resumed session was
never reused. Now the slot goes back to the checkpoint taken where the prompt ended, and a
save keeps only the part that agrees with the transcript. Every reply is compared with a
fresh mlx-lm run of the same conversation.
"""

from __future__ import annotations

import pytest

from engine import Engine, Notice, SamplingParams, TurnDone
from models.demo import DemoSpec, build_model
from sessions import SessionStore, submit_autosave, submit_resume
from tests.helpers import reference_reply

MAX = 16
PARAMS = SamplingParams(max_tokens=MAX)
WINDOW = 24


@pytest.fixture(scope="module")
def sliding_model(tmp_path_factory):
    spec = DemoSpec(name="sliding", model_type="llama", seed=3, extra={
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "sliding_window": WINDOW,
    })
    return build_model(tmp_path_factory.mktemp("sliding") / "model", spec)


def test_an_edited_reply_reuses_the_prompt_not_nothing(sliding_model) -> None:
    first = [{"role": "user", "content": "Tell me everything about the import statement."}]
    with Engine() as engine:
        engine.load(str(sliding_model)).result_sync(120)
        done = engine.chat(first, PARAMS).result_sync(120)
        assert done.stats.prompt_tokens > WINDOW  # the window is full
        # The user edits the reply: the cache disagrees right after the first prompt.
        edited = [*first, {"role": "assistant", "content": "Something else entirely."},
                  {"role": "user", "content": "Go on."}]
        again = engine.chat(edited, PARAMS).result_sync(120)
    assert isinstance(again, TurnDone)
    assert again.stats.reused_tokens == done.stats.prompt_tokens - 1
    assert again.text == reference_reply(sliding_model, edited, MAX)


def test_three_turns_stay_exact_and_reuse(sliding_model) -> None:
    messages: list[dict[str, str]] = []
    reused = []
    with Engine() as engine:
        engine.load(str(sliding_model)).result_sync(120)
        for question in ("What is a tuple, in many words?", "And a list?", "Compare them."):
            messages.append({"role": "user", "content": question})
            done = engine.chat(messages, PARAMS).result_sync(120)
            assert done.text == reference_reply(sliding_model, messages, MAX)
            reused.append(done.stats.reused_tokens)
            messages.append({"role": "assistant", "content": done.text})
    assert reused[0] == 0 and reused[1] > WINDOW and reused[2] > reused[1]


def test_a_resumed_session_reuses_its_cache_and_says_nothing_false(sliding_model,
                                                                    tmp_path) -> None:
    with Engine() as engine, SessionStore(tmp_path) as store:
        engine.load(str(sliding_model)).result_sync(120)
        session = store.new("chat", model=str(sliding_model), sampling=PARAMS)
        session.add_user("Explain the import statement at length, please.")
        done = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
        session.add_reply(done.text, done.stats.to_dict())
        saved = submit_autosave(engine, store, session).result_sync(120)
        assert saved.cache.tokens > WINDOW
        session.add_user("And then?")
        uninterrupted = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
        session.messages.pop()

        engine.reset().result_sync(60)
        events = list(submit_resume(engine, store, session))
        report = events[-1].value
        assert report.reused and report.cached_tokens == saved.cache.tokens
        assert not [e for e in events if isinstance(e, Notice)]
        session.add_user("And then?")
        resumed = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
    assert resumed.text == uninterrupted.text
    assert resumed.stats.reused_tokens >= report.cached_tokens


def test_a_session_whose_reply_renders_differently_still_resumes_from_its_cache(
        sliding_model, tmp_path) -> None:
    """The tokens generated and the transcript's rendering part after the prompt (here: the
    reply was edited before the save): the save keeps the prompt's part, the resume uses it
    without claiming anything changed, and the next reply is exact."""
    with Engine() as engine, SessionStore(tmp_path) as store:
        engine.load(str(sliding_model)).result_sync(120)
        session = store.new("chat", model=str(sliding_model), sampling=PARAMS)
        session.add_user("Explain the import statement at length, please.")
        done = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
        session.add_reply("An edited reply.", done.stats.to_dict())
        saved = submit_autosave(engine, store, session).result_sync(120)
        assert saved.cache.tokens == done.stats.prompt_tokens - 1

        engine.reset().result_sync(60)
        events = list(submit_resume(engine, store, session))
        report = events[-1].value
        assert report.reused and report.cached_tokens == saved.cache.tokens
        assert not [e for e in events if isinstance(e, Notice)]
        session.add_user("And then?")
        resumed = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
    assert resumed.stats.reused_tokens == report.cached_tokens
    assert resumed.text == reference_reply(sliding_model, session.chat_messages(), MAX)
