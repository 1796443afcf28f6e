"""Seeing inside a turn: token logprobs, a forced start of the reply, reasoning blocks and why
the cache missed; each against a fresh mlx-lm run of the same rendered conversation."""

from __future__ import annotations

import pytest

from engine import SamplingParams, TokenLogprob, TokenText, TurnDone, TurnOptions
from engine.loaded import LoadedModel
from engine.prompt_cache import PromptCaches
from engine.reasoning import ReasoningSplitter, split_reasoning
from engine.turn import run_turn
from tests.helpers import reference_reply

MAX = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX)


def load(path) -> LoadedModel:
    return LoadedModel.load(path.name, path, lambda _e: None, available=lambda: 1 << 40,
                            context_hint=4096)


@pytest.fixture(scope="module")
def llama(demo_kit) -> LoadedModel:
    return load(demo_kit.llama)


@pytest.fixture(scope="module")
def thinker(demo_kit) -> LoadedModel:
    return load(demo_kit.qwen3_think)


def caches_for(loaded: LoadedModel) -> PromptCaches:
    caches = PromptCaches(max_slots=2)
    caches.model = loaded.model
    return caches


def turn(loaded: LoadedModel, caches: PromptCaches, messages, options=None,
         params: SamplingParams = GREEDY) -> tuple[TurnDone, list[object]]:
    events = list(run_turn(loaded, caches, None, messages, params, prefill_step=16,
                           options=options))
    done = events[-1]
    assert isinstance(done, TurnDone)
    return done, events


def fresh_tokens(path, prompt: list[int], max_tokens: int = MAX) -> list[tuple[int, object]]:
    """(token, logprobs) from a fresh mlx_lm.load and stream_generate over ``prompt``."""
    from mlx_lm import load as mlx_load
    from mlx_lm import stream_generate

    model, tokenizer = mlx_load(str(path))
    return [(r.token, r.logprobs) for r in stream_generate(model, tokenizer, prompt,
                                                           max_tokens=max_tokens)]


def test_logprobs_are_mlx_lm_s(llama, demo_kit) -> None:
    import mlx.core as mx

    messages = [{"role": "user", "content": "Tell me about the for statement."}]
    done, events = turn(llama, caches_for(llama), messages, TurnOptions(logprobs=5))
    probs = [e for e in events if isinstance(e, TokenLogprob)]
    reference = fresh_tokens(demo_kit.llama, llama.render(messages))
    assert [p.token for p in probs] == [t for t, _ in reference]
    assert [p.index for p in probs] == list(range(len(probs)))
    for prob, (token, lp) in zip(probs, reference, strict=True):
        assert prob.logprob == pytest.approx(lp[token].item(), abs=1e-4)
        best = mx.argsort(-lp)[:5].tolist()
        assert [i for i, _t, _v in prob.top] == best
        assert [v for _i, _t, v in prob.top] == pytest.approx(lp[best].tolist(), abs=1e-4)
        assert prob.top[0][2] >= prob.logprob - 1e-6  # greedy: the chosen one is the best
        assert prob.entropy >= 0.0
    assert done.text == reference_reply(demo_kit.llama, messages, MAX)


def test_without_logprobs_no_token_events(llama) -> None:
    _done, events = turn(llama, caches_for(llama), [{"role": "user", "content": "hi"}])
    assert not any(isinstance(e, TokenLogprob) for e in events)


def test_a_forced_start_equals_a_fresh_run_forced_to_it(llama, demo_kit) -> None:
    messages = [{"role": "user", "content": "Say something."}]
    caches = caches_for(llama)
    first, _ = turn(llama, caches, messages, TurnOptions(logprobs=3))
    # "continue from here with this token instead": the first two tokens, then the
    # second-best alternative of the third
    tokens = llama.tokenizer.encode(first.text, add_special_tokens=False)
    prefix = tokens[:2]
    done, _ = turn(llama, caches, messages, TurnOptions(reply_prefix=tuple(prefix)))
    reference = fresh_tokens(demo_kit.llama, llama.render(messages) + prefix)
    tokenizer = llama.tokenizer
    expected = tokenizer.decode(prefix) + tokenizer.decode(
        [t for t, _ in reference if t not in tokenizer.eos_token_ids])
    assert done.text == expected
    assert done.stats.forced_tokens == 2
    assert done.stats.reused_tokens > 0  # the same prompt: its cache was reused


def test_reasoning_splits_across_every_token_boundary() -> None:
    reply = "<think>\nFirst, the user greets me.\n</think>\n\nHello there."
    for cut in range(len(reply) + 1):
        splitter = ReasoningSplitter()
        pieces = splitter.feed(reply[:cut]) + splitter.feed(reply[cut:]) + splitter.flush()
        reasoning = "".join(t for k, t in pieces if k == "reasoning")
        answer = "".join(t for k, t in pieces if k == "answer")
        assert (reasoning, answer) == ("First, the user greets me.\n", "Hello there."), cut
    assert split_reasoning("no block here") == ("", "no block here")
    assert split_reasoning("a quoted <think> tag") == ("", "a quoted <think> tag")
    assert split_reasoning("still thinking", inside=True) == ("still thinking", "")


def test_a_streamed_reasoning_reply_splits_into_kinds(thinker) -> None:
    tokenizer = thinker.tokenizer
    forced = tokenizer.encode("<think>\nLet me see.</think>\n\n", add_special_tokens=False)
    messages = [{"role": "user", "content": "Hello"}]
    done, events = turn(thinker, caches_for(thinker), messages,
                        TurnOptions(reply_prefix=tuple(forced)))
    texts = [e for e in events if isinstance(e, TokenText)]
    kinds = [e.kind for e in texts]
    assert kinds[0] == "reasoning" and "answer" in kinds
    assert kinds.index("answer") > kinds.index("reasoning")
    assert "".join(e.text for e in texts if e.kind == "reasoning") == "Let me see."
    assert done.text.startswith("<think>\nLet me see.</think>")
    assert "<think>" not in "".join(e.text for e in texts)
    # a reply that never closes its block is all reasoning, counted as such
    open_only = tokenizer.encode("<think>\n", add_special_tokens=False)
    done, events = turn(thinker, caches_for(thinker), messages,
                        TurnOptions(reply_prefix=tuple(open_only)))
    assert {e.kind for e in events if isinstance(e, TokenText)} == {"reasoning"}
    assert done.stats.reasoning_tokens == done.stats.generated_tokens > 0


def test_enable_thinking_reaches_the_template(thinker) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    done, _ = turn(thinker, caches_for(thinker), messages,
                   TurnOptions(template_args={"enable_thinking": False}))
    prompt = thinker.render(messages, template_args={"enable_thinking": False})
    assert thinker.tokenizer.decode(prompt).endswith("<think>\n\n</think>\n\n")
    assert done.stats.prompt_tokens == len(prompt)
    assert thinker.info.reasoning and thinker.info.thinking_switch


def test_a_template_that_drops_reasoning_stays_exact_and_names_the_seam(
        thinker, demo_kit) -> None:
    """Three turns on a Qwen3-style template: the first reply holds a <think> block, which
    the template drops when the conversation is rendered again; every reply equals a fresh
    mlx-lm run of the rendered conversation, and the second turn says why it reused less."""
    tokenizer = thinker.tokenizer
    caches = caches_for(thinker)
    messages = [{"role": "user", "content": "What is a list?"}]
    forced = tokenizer.encode("<think>\nA short answer.</think>\n\n", add_special_tokens=False)
    first, _ = turn(thinker, caches, messages, TurnOptions(reply_prefix=tuple(forced)))
    reference = fresh_tokens(demo_kit.qwen3_think, thinker.render(messages) + forced)
    assert first.text == tokenizer.decode(forced) + tokenizer.decode(
        [t for t, _ in reference if t not in tokenizer.eos_token_ids])
    assert first.stats.cache_miss == ""  # nothing was cached before

    messages += [{"role": "assistant", "content": first.text},
                 {"role": "user", "content": "And a tuple?"}]
    second, _ = turn(thinker, caches, messages)
    assert second.text == reference_reply(demo_kit.qwen3_think, messages, MAX)
    assert second.stats.reused_tokens < second.stats.cached_before
    assert "the template rendered the last reply differently" in second.stats.cache_miss
    assert "first difference at token" in second.stats.cache_miss

    messages += [{"role": "assistant", "content": second.text},
                 {"role": "user", "content": "Thanks."}]
    third, _ = turn(thinker, caches, messages)
    assert third.text == reference_reply(demo_kit.qwen3_think, messages, MAX)
    assert third.stats.reused_tokens > second.stats.reused_tokens


def test_a_changed_system_prompt_is_named(llama) -> None:
    caches = caches_for(llama)
    messages = [{"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Hello"}]
    first, _ = turn(llama, caches, messages)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}]
    second, _ = turn(llama, caches, messages)
    assert second.stats.cached_before == first.stats.context_tokens
    assert "the system prompt changed" in second.stats.cache_miss


def test_an_edited_earlier_message_is_named(llama) -> None:
    caches = caches_for(llama)
    history = [{"role": "user", "content": "One"}]
    first, _ = turn(llama, caches, history)
    history += [{"role": "assistant", "content": first.text},
                {"role": "user", "content": "Two"}]
    turn(llama, caches, history)
    edited = [{"role": "user", "content": "Uno"}, *history[1:]]
    third, _ = turn(llama, caches, edited)
    assert "an earlier message differs" in third.stats.cache_miss


def test_going_back_to_a_branch_reuses_its_own_turns(llama, demo_kit) -> None:
    """Branch A (two turns), then branch B (the first message edited), then A again: A's
    cache was kept, so its whole history is reused, and every reply is exact."""
    caches = PromptCaches(max_slots=2, shelf_bytes=1 << 30)
    caches.model = llama.model
    a = [{"role": "user", "content": "Tell me about modules."}]
    first, _ = turn(llama, caches, a)
    a += [{"role": "assistant", "content": first.text},
          {"role": "user", "content": "And packages?"}]
    second, _ = turn(llama, caches, a)
    a += [{"role": "assistant", "content": second.text}]
    b = [{"role": "user", "content": "Tell me about classes."}]
    other, _ = turn(llama, caches, b)
    assert "kept for it" in other.stats.reuse_note
    assert other.text == reference_reply(demo_kit.llama, b, MAX)
    a += [{"role": "user", "content": "Thanks."}]
    back, _ = turn(llama, caches, a)
    assert back.text == reference_reply(demo_kit.llama, a, MAX)
    assert "from the cache kept for this branch" in back.stats.reuse_note
    assert back.stats.cache_miss == ""
    # as much reused as if branch B had never been visited
    straight = caches_for(llama)
    for messages in (a[:1], a[:3]):
        turn(llama, straight, messages)
    uninterrupted, _ = turn(llama, straight, a)
    assert back.stats.reused_tokens == uninterrupted.stats.reused_tokens
    # without a shelf, the same turn re-prefills all but the shared start
    plain = caches_for(llama)
    for messages in (a[:1], a[:3], b):
        turn(llama, plain, messages)
    again, _ = turn(llama, plain, a)
    assert again.text == back.text
    assert again.stats.reused_tokens < back.stats.reused_tokens // 2


def test_the_end_of_sequence_token_is_marked_not_text(demo_kit) -> None:
    chat = load(demo_kit.chat)
    done, events = turn(chat, caches_for(chat), [{"role": "user", "content": "Hello!"}],
                        TurnOptions(logprobs=2), SamplingParams(temperature=0.0,
                                                                max_tokens=64))
    probs = [e for e in events if isinstance(e, TokenLogprob)]
    assert done.stats.finish_reason == "stop"  # the demo chat model ends its replies
    assert probs[-1].eos and not any(p.eos for p in probs[:-1])
    assert chat.tokenizer.decode([p.token for p in probs if not p.eos]) == done.text
