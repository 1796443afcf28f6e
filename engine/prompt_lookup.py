"""Prompt-lookup decoding: draft tokens taken from the conversation itself (no draft model).

When a reply repeats what the context holds (code being edited, a text quoted back, a list
carried on), the tokens that followed the last n-gram's earlier occurrence are a good guess
at what comes next. ``prompt_lookup_generate_step`` is a generator in the style of mlx-lm's
``speculative_generate_step``: it proposes those tokens, verifies them in one forward pass,
keeps the longest prefix the model agrees with plus the model's own next token, and rewinds
the cache (``trim``) over the rest.

Exact: with temperature 0 the tokens are the model's greedy tokens. With sampling, each
drafted token is accepted by the standard speculative rule for a draft that is a point mass
(q(t) = 1): accept t with probability min(1, p(t)/q(t)) = p(t), otherwise draw from the
residual, p with t removed and renormalised. ``accept_lookup_token`` does this by drawing
x from p with the turn's own sampler and accepting when x == t: P(accept) = p(t), and a
rejected draw is distributed as p given x != t, which is that residual. So the reply's
distribution is the sampler's, top-p/min-p/top-k included.

It costs little where it cannot help: a lookup is a dictionary probe, a step without a
draft is a plain step (its forward pass queued before the previous token is handed out,
as ``generate_step`` does), and the draft length follows what drafting has been worth,
measured as the reply goes (acceptance, and what a drafted token costs on this machine),
down to off for a pause that doubles each time (``DraftLength``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from .speculative import KVSettings, maybe_quantize

PAUSE_FIRST = 8  # tokens without drafting after drafts keep failing; doubles each time
PAUSE_MOST = 256


class NgramIndex:
    """Where each n-gram (n from ``longest`` down to ``shortest``) last ended in the tokens,
    updated as tokens arrive, so that a lookup is a dictionary probe, not a scan."""

    def __init__(self, tokens: Sequence[int], longest: int = 3, shortest: int = 2) -> None:
        self.tokens: list[int] = []
        self.sizes = list(range(longest, max(1, min(shortest, longest)) - 1, -1))
        # n-gram -> (the end of its latest occurrence, the end of the one before it)
        self._ends: dict[tuple[int, ...], int] = {}
        self._previous: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens)
            for n in self.sizes:
                if end >= n:
                    gram = tuple(self.tokens[end - n:end])
                    last = self._ends.get(gram)
                    if last is not None:
                        self._previous[gram] = last
                    self._ends[gram] = end

    def propose(self, most: int) -> list[int]:
        """``most`` tokens that followed the latest earlier occurrence of the context's last
        n-gram (the longest n that has one), the span from there to the end repeated if it
        is shorter; [] when no n-gram has occurred before."""
        if most <= 0:
            return []
        end = len(self.tokens)
        for n in self.sizes:
            if end < n:
                continue
            gram = tuple(self.tokens[end - n:end])
            # The latest occurrence is the context's own tail: take the one before it.
            start = self._previous.get(gram) if self._ends.get(gram) == end else \
                self._ends.get(gram)
            if start is not None and start < end:
                # Past the end of the context a repeat goes on repeating (a loop, a list).
                period = end - start
                return [self.tokens[start + i % period] for i in range(most)]
        return []


class DraftLength:
    """How many tokens to draft next, from what drafting has been worth so far.

    Two things are measured as the reply goes: how often a drafted token is accepted (a
    rate ``alpha``, from recent verify steps, older ones fading) and what each drafted
    token adds to the time of a step (``beta``, a share of a plain step: near 0 on a GPU,
    where a few more tokens ride along in the same pass; about 0.5 for a tiny model on a
    CPU). A draft of k tokens yields (1 - alpha^(k+1)) / (1 - alpha) tokens for 1 + beta*k
    steps' time; the length chosen is the best k, 0 (no draft) when none beats a plain
    step. Then drafting pauses (8 tokens, doubling up to 256), and after the pause one
    token is drafted to look again: on text it cannot predict it costs one slightly longer
    step now and then."""

    FADE = 0.8  # weight of the past in the acceptance counts, per verify step
    MARGIN = 1.03  # a draft must promise this much more than a plain step
    BETA_UNKNOWN = 0.25  # until a plain step and a drafted one have been timed

    def __init__(self, most: int) -> None:
        self.most = most
        # Lengths are powers of two (and ``most``): a few shapes of the verify pass, so that
        # a GPU backend compiles and caches few kernels and graphs (1B model on an H200:
        # drafts of every length from 1 to 10 made lookup slower despite full acceptance).
        self.lengths = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k < most} | {most})
        self.hits, self.misses = 1.0, 1.0  # accepted drafted tokens, rejections (faded)
        self.step_s: float | None = None  # a step without a draft
        self.extra_s: float | None = None  # what each drafted token adds to a step
        self.pause = 0
        self.next_pause = PAUSE_FIRST
        self.probe = False

    @property
    def alpha(self) -> float:
        return self.hits / (self.hits + self.misses)

    @property
    def beta(self) -> float:
        if self.step_s is None or self.extra_s is None or self.step_s <= 0:
            return self.BETA_UNKNOWN
        return max(0.0, self.extra_s / self.step_s)

    def best(self) -> int:
        alpha, beta = min(self.alpha, 0.999), self.beta
        best_k, best = 0, self.MARGIN
        for k in self.lengths:
            value = (1 - alpha ** (k + 1)) / (1 - alpha) / (1 + beta * k)
            if value > best:
                best_k, best = k, value
        return best_k

    def take(self) -> int:
        """The draft length for this step (0: no draft)."""
        if self.pause > 0:
            self.pause -= 1
            self.probe = self.pause == 0
            return 0
        k = self.best()
        if k == 0:
            if self.probe:
                self.probe = False
                return 1
            self.pause = self.next_pause
            self.next_pause = min(PAUSE_MOST, 2 * self.next_pause)
        return k

    def update(self, drafted: int, accepted: int, seconds: float = 0.0) -> None:
        """A step drafted ``drafted`` tokens (0: none) and kept ``accepted``; it took
        ``seconds`` (0: not timed)."""
        if seconds > 0:
            if drafted == 0:
                self.step_s = seconds if self.step_s is None else \
                    0.8 * self.step_s + 0.2 * seconds
            elif self.step_s is not None:
                extra = max(0.0, seconds - self.step_s) / drafted
                self.extra_s = extra if self.extra_s is None else \
                    0.8 * self.extra_s + 0.2 * extra
        if drafted == 0:
            return
        # A draft rejected outright says the text has moved on: the past fades faster.
        fade = self.FADE if accepted else self.FADE * self.FADE
        self.hits = fade * self.hits + accepted
        self.misses = fade * self.misses + (1 if accepted < drafted else 0)
        if accepted:
            self.next_pause = PAUSE_FIRST


def accept_lookup_token(logprobs: Any, drafts: Sequence[int], sampler: Any
                        ) -> tuple[list[bool], list[int]]:
    """The speculative acceptance rule for drafted tokens that are point masses: row i of
    the model's ``logprobs`` (N, V) against ``drafts[i]``, as ``sampler`` draws from them.
    Returns (accepted, the token to emit) per row. Equal in distribution to "accept with
    probability p(draft), else draw from p without the draft" (see the module docstring);
    the generator below applies it to its verify rows (the sampling is queued with the
    forward pass, the comparison made when the result is read)."""
    chosen: list[int] = sampler(logprobs).tolist()
    return [c == d for c, d in zip(chosen, drafts, strict=True)], chosen


def prompt_lookup_generate_step(
    prompt: Any, model: Any, *, context: Sequence[int], max_tokens: int = 256,
    sampler: Any = None, logits_processors: list[Any] | None = None,
    prompt_cache: list[Any], max_draft: int = 10, ngram: int = 3,
    kv: KVSettings | None = None, stream: Any = None, counts: dict[str, int] | None = None,
) -> Iterator[tuple[int, Any, bool]]:
    """Yield ``(token, logprobs, from_draft)`` like ``speculative_generate_step``.

    ``prompt`` is the one token not in ``prompt_cache`` yet (the prompt's last); ``context``
    is every token so far, that one included (where drafts are looked up). The cache is
    extended in place; when the generator is closed it holds at least every token yielded
    (and perhaps accepted tokens not yet yielded: ``CacheSlot.reconcile`` cuts them).
    ``counts["proposed"]`` (if given) adds up the draft tokens proposed.

    While nothing is drafted it runs as ``generate_step`` does: the next step is queued,
    fed the token still being computed, before that token is read and handed out, so the
    device never waits for Python. A step that drafts is queued once the token before it
    is known.
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream
    from mlx_lm.models.cache import trim_prompt_cache

    stream = stream or generation_stream
    sampler = sampler or (lambda x: mx.argmax(x, axis=-1))
    index = NgramIndex(context, longest=ngram, shortest=min(2, ngram))
    lengths = DraftLength(max_draft)
    first = int(prompt.reshape(-1)[-1].item()) if hasattr(prompt, "reshape") \
        else int(list(prompt)[-1])
    history: Any = None  # the tokens the logits processors have seen (an mx array)
    ntoks = 0
    unverified = 0  # draft tokens in the cache whose verdict is not known yet
    last_sync = time.perf_counter()

    class Step:
        """One forward pass in flight: fed ``head`` (an id or a lazy token) and ``draft``."""

        def __init__(self, head: Any, draft: list[int]) -> None:
            nonlocal history
            self.draft, self.began = draft, time.perf_counter()
            head_arr = head.reshape(1).astype(mx.uint32) if isinstance(head, mx.array) \
                else mx.array([head], mx.uint32)
            fed = mx.concatenate([head_arr, mx.array(draft, mx.uint32)]) if draft \
                else head_arr
            logits = model(fed[None], cache=prompt_cache)
            maybe_quantize(prompt_cache, kv)
            logits = logits[0, -fed.size:, :]
            if logits_processors:
                rows = []
                for i in range(fed.size):
                    seen = fed[i:i + 1] if history is None else \
                        mx.concatenate([history, fed[i:i + 1]])
                    row = logits[i:i + 1]
                    for processor in logits_processors:
                        row = processor(seen, row)
                    rows.append(row)
                    history = seen
                logits = mx.concatenate(rows, axis=0)
            self.logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            self.sampled = sampler(self.logprobs)
            mx.async_eval(self.sampled, self.logprobs)

        def seconds(self) -> float:
            nonlocal last_sync
            now = time.perf_counter()
            spent, last_sync = now - max(self.began, last_sync), now
            return spent

    with mx.stream(stream):
        try:
            step = Step(first, [])
            while True:
                length = lengths.take()  # once per step
                if not step.draft and ntoks + 1 < max_tokens \
                        and not (length > 0 and index.propose(1)):
                    # Plain, pipelined: queue the next step on the lazy token, then read it.
                    following = Step(step.sampled, [])
                    token = int(step.sampled.item())
                    lengths.update(0, 0, step.seconds())
                    index.extend([token])
                    ntoks += 1
                    yield token, step.logprobs[0], False
                    step = following
                    continue
                chosen: list[int] = step.sampled.tolist()  # type: ignore[assignment]
                draft = step.draft
                accepted = 0
                while accepted < len(draft) and chosen[accepted] == draft[accepted]:
                    accepted += 1
                if accepted < len(draft):  # the rejected drafts' entries go
                    trim_prompt_cache(prompt_cache, len(draft) - accepted)
                    if history is not None and logits_processors:
                        history = history[: history.size - (len(draft) - accepted)]
                unverified = 0
                lengths.update(len(draft), accepted, step.seconds())
                bonus = chosen[accepted]
                index.extend([*draft[:accepted], bonus])
                for i in range(accepted):
                    ntoks += 1
                    yield draft[i], step.logprobs[i], True
                if ntoks + 1 >= max_tokens:
                    yield bonus, step.logprobs[accepted], False
                    break
                proposal = index.propose(min(length, max_tokens - ntoks - 2))
                if counts is not None:
                    counts["proposed"] = counts.get("proposed", 0) + len(proposal)
                bonus_logprobs = step.logprobs[accepted]
                step = Step(bonus, proposal)
                unverified = len(proposal)
                ntoks += 1
                yield bonus, bonus_logprobs, False  # handed out while the step runs
        finally:
            if unverified:
                trim_prompt_cache(prompt_cache, unverified)
