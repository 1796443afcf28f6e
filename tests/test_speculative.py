"""Speculative decoding (a draft model, mlx-lm's own step) and prompt lookup (drafts from the
conversation): at temperature 0 their replies equal plain greedy replies and fresh mlx-lm runs,
across turns that reuse the caches and an adapter swap; with sampling, prompt lookup's
acceptance rule keeps the sampler's distribution."""

from __future__ import annotations

import math
from typing import Any

import pytest

from engine import Engine, Error, ModelLoaded, SamplingParams, TurnDone
from engine.prompt_lookup import DraftLength, NgramIndex, accept_lookup_token
from engine.speculative import DecodingSettings
from tests.helpers import reference_reply

MAX = 20
PROMPTS = ("Repeat after me: the for statement iterates over a sequence.",
           "Tell me about the while statement.", "and again, please")


def _draft_of(core: Any) -> Any:
    """The draft model's cache slot of the active cache (engine thread)."""
    return core.caches.get(core.cache_key).draft


_REFERENCES: dict[tuple[object, ...], str] = {}


def reference(demo_kit, messages: list[dict[str, str]], adapter: str | None) -> str:
    """A fresh mlx-lm run's reply (kept: every test here walks the same conversation)."""
    key = (adapter, *(tuple(m.items()) for m in messages))
    if key not in _REFERENCES:
        _REFERENCES[key] = reference_reply(
            demo_kit.llama, messages, MAX,
            adapter=demo_kit.adapter(adapter) if adapter else None)
    return _REFERENCES[key]


def converse(engine: Engine, demo_kit, check_draft_cache: bool = False) -> list[TurnDone]:
    """Two turns on the base model, one under the tone-a adapter, one back on the base:
    each reply against a fresh mlx-lm run of the same conversation."""
    messages: list[dict[str, str]] = []
    replies = []
    for i, (text, adapter) in enumerate([(PROMPTS[0], None), (PROMPTS[1], None),
                                         (PROMPTS[2], "tone-a"), (PROMPTS[1], None)]):
        if i >= 2:  # a swap mid-conversation (and back)
            path = str(demo_kit.adapter(adapter)) if adapter else None
            engine.use_adapter(path).result_sync()
        messages.append({"role": "user", "content": text})
        done = engine.chat(messages, SamplingParams(max_tokens=MAX)).wait(120)
        assert isinstance(done, TurnDone), done
        assert done.text == reference(demo_kit, messages, adapter), (i, done.stats.decoder)
        if i in (1, 3):
            assert done.stats.reused_tokens > 0
        if check_draft_cache:
            main, drafted = engine.submit(lambda core, _e, _c: (
                len(core.cached_tokens()), len(_draft_of(core).tokens))).result_sync()
            # The draft's cache follows the main one (a few unverified tokens apart at most).
            assert abs(main - drafted) <= 4 and drafted > done.stats.prompt_tokens - 2
        messages.append({"role": "assistant", "content": done.text})
        replies.append(done)
    return replies


@pytest.mark.parametrize("draft", ["llama", "llama_4bit"])
def test_a_draft_model_gives_the_greedy_replies(llama_engine, demo_kit, draft) -> None:
    info = llama_engine.load_draft(str(getattr(demo_kit, draft))).result_sync()
    assert info is not None and info.draft == draft.replace("_", "-")
    replies = converse(llama_engine, demo_kit, check_draft_cache=True)
    for done in replies:
        assert done.stats.decoder.startswith("draft ")
        assert done.stats.acceptance_rate is not None and done.stats.effective_tps
    assert sum(d.stats.draft_tokens for d in replies) > 0
    if draft == "llama":  # its own draft agrees on every token it drafts on the base model
        assert replies[0].stats.draft_tokens >= MAX // 2


def test_prompt_lookup_gives_the_greedy_replies(engine, demo_kit) -> None:
    assert isinstance(engine.load(str(demo_kit.llama)).wait(120), ModelLoaded)
    engine.set_decoding(DecodingSettings(prompt_lookup=8)).result_sync()
    replies = converse(engine, demo_kit)
    assert all(d.stats.decoder == "prompt lookup" for d in replies)
    assert sum(d.stats.draft_tokens for d in replies) > 0  # the demo model repeats itself


def test_a_draft_with_another_vocabulary_is_refused_in_one_line(llama_engine,
                                                                 demo_kit) -> None:
    final = llama_engine.load_draft(str(demo_kit.qwen3_think)).wait(120)
    assert isinstance(final, Error) and final.kind == "draft"
    assert "another vocabulary" in final.message and "\n" not in final.message
    assert llama_engine.info is not None and llama_engine.info.draft is None


# -- prompt lookup, unit level ------------------------------------------------------------
def test_lookup_proposes_what_followed_the_last_ngram() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 9, 2, 3], longest=3, shortest=2)
    assert index.propose(3) == [4, 5, 9]  # "2 3" was followed by 4 5 9
    index.extend([4])
    assert index.propose(2) == [5, 9]  # "2 3 4" now
    assert NgramIndex([1, 2, 3]).propose(4) == []


def test_the_draft_length_follows_what_drafting_is_worth() -> None:
    """Accepted drafts on a machine where drafted tokens ride along (a GPU) lengthen the
    draft to the most; failures switch drafting off for pauses that double, with one
    probing draft after each; where each drafted token costs a step (a slow CPU), a draft
    that is accepted half the time is not worth making."""
    lengths = DraftLength(10)
    assert lengths.take() == 1  # nothing measured yet: a cautious start
    lengths.update(0, 0, 0.010)  # a plain step: 10 ms
    for _ in range(6):
        k = lengths.take()
        lengths.update(k, k, 0.010 + 0.0002 * k)  # each drafted token adds 2%
    assert lengths.take() == 10
    drafted_at = []  # text it cannot predict from here on: every draft fails
    for step in range(200):
        k = lengths.take()
        if k:
            drafted_at.append(step)
            lengths.update(k, 0, 0.012)
    gaps = [b - a for a, b in zip(drafted_at[-4:], drafted_at[-3:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] >= 2 * gaps[0] >= 16  # pauses that double
    assert len(drafted_at) < 16
    cpu = DraftLength(10)
    cpu.update(0, 0, 0.010)
    for accepted in (1, 0, 1, 0, 1, 0):
        cpu.update(1, accepted, 0.020)  # a drafted token costs a whole step
    assert cpu.best() == 0


def _chi_square(counts: list[int], probs: list[float]) -> float:
    total = sum(counts)
    return sum((c - total * p) ** 2 / (total * p) for c, p in zip(counts, probs, strict=True)
               if p > 0)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_lookup_acceptance_keeps_the_distribution(top_p: float) -> None:
    """The standard speculative rule for a point-mass draft: accept t with probability p(t),
    else a draw from p without t. Over many draws the emitted tokens follow p (the
    sampler's, top-p included), acceptances happen at rate p(t), and rejected draws follow
    the residual."""
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(7)
    logits = mx.array([[2.0, 1.0, 0.5, 0.0, -1.0]])
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    p: list[float] = mx.softmax(logits, axis=-1)[0].tolist()  # type: ignore[assignment]
    if top_p < 1.0:  # the nucleus: the likeliest tokens up to top_p, renormalised
        order = sorted(range(5), key=lambda i: -p[i])
        kept, mass = [], 0.0
        for i in order:
            kept.append(i)
            mass += p[i]
            if mass >= top_p:
                break
        p = [p[i] / mass if i in kept else 0.0 for i in range(5)]
    sampler = make_sampler(temp=1.0, top_p=top_p)
    draft, n = 1, 20000
    emitted = [0] * 5
    residual = [0] * 5
    oks, tokens = accept_lookup_token(mx.repeat(logprobs, n, axis=0), [draft] * n, sampler)
    accepted = sum(oks)
    for ok, token in zip(oks, tokens, strict=True):
        emitted[token] += 1
        if not ok:
            residual[token] += 1
    assert all(c == 0 for c, q in zip(emitted, p, strict=True) if q == 0)
    # chi-square with 4 degrees of freedom (fewer with top-p): 18.5 is its 0.999 quantile.
    assert _chi_square(emitted, p) < 18.5
    rest = [0.0 if i == draft else v / (1 - p[draft]) for i, v in enumerate(p)]
    assert residual[draft] == 0 and _chi_square(residual, rest) < 18.5
    sd = math.sqrt(n * p[draft] * (1 - p[draft]))
    assert abs(accepted - n * p[draft]) < 4 * sd


def test_prompt_lookup_samples_with_a_seed(llama_engine) -> None:
    """With sampling the reply is still a reply (the rule is tested above); a seed repeats it."""
    llama_engine.set_decoding(DecodingSettings(prompt_lookup=6)).result_sync()
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=MAX)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    first = llama_engine.chat(messages, params).wait(120)
    llama_engine.reset().result_sync()
    second = llama_engine.chat(messages, params).wait(120)
    assert isinstance(first, TurnDone) and isinstance(second, TurnDone)
    assert first.stats.generated_tokens > 0 and first.text == second.text
