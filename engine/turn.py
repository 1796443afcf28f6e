"""One chat turn as a plain generator: ``run_turn(...) -> Iterator[event]``.

This is the engine's library layer, in mlx-lm's own style (``generate_step`` ->
``stream_generate``): no thread, no queue, testable alone on a tiny model. The engine
thread is only plumbing that puts what it yields on a stream.

A turn renders the conversation with the chat template, keeps the longest prefix the cache
already holds, prefills the rest in chunks (yielding ``PrefillProgress`` between them, so a
cancel stops there), then decodes with mlx-lm's ``stream_generate`` from the last prompt
token, yielding ``TokenText`` per token, ``Memory`` a few times a second, and finally one
``TurnDone``. Afterwards the cache holds exactly the tokens it says it holds.

Exactness: the prefill loop is mlx-lm's own (``generate_step``'s: the model over a chunk,
eval the cache, clear the buffer cache), and logits processors see the whole conversation's
tokens, as they would in a fresh ``stream_generate`` over the full prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .errors import ContextOverflow
from .events import Memory, MemoryReading, Notice, PrefillProgress, TokenText, TurnDone, TurnStats
from .loaded import LoadedModel
from .prompt_cache import CacheKey, CacheSlot, PromptCaches
from .sampling import SamplingParams, make_sampler_and_processors, mask_tokens

MEMORY_EVENT_INTERVAL_S = 0.25
DEFAULT_PREFILL_STEP = 512  # the first chunk; later ones are sized by time (ChunkSizer)


class ChunkSizer:
    """Prefill chunk sizes chosen by time: each chunk should take about ``target_s``, short
    enough that a cancel is felt at once, long enough not to starve a fast GPU (on the H200 a
    2048-token 4-bit prompt ran 6x faster in one chunk than in 512-token ones). Sizes are
    powers of two and change at most twofold per chunk, so a slow first chunk (kernels
    compiling) does not throw the estimate far off. One sizer lives as long as the model."""

    def __init__(self, first: int = DEFAULT_PREFILL_STEP, target_s: float = 0.25,
                 smallest: int = 32, largest: int = 4096) -> None:
        self.size = first
        self.target_s, self.smallest, self.largest = target_s, smallest, largest

    def measured(self, tokens: int, seconds: float) -> None:
        if tokens < self.size or seconds <= 0:
            return  # a short last chunk says little about the rate
        ideal = tokens * self.target_s / seconds
        if ideal >= 2 * self.size and 2 * self.size <= self.largest:
            self.size *= 2
        elif ideal < self.size and self.size // 2 >= self.smallest:
            self.size //= 2


def prefill(model: Any, slot: CacheSlot, tokens: Sequence[int],
            step: int | ChunkSizer) -> Iterator[int]:
    """Evaluate ``tokens`` into ``slot``'s cache a chunk at a time (mlx-lm's prefill loop),
    chunks of ``step`` tokens or as a ``ChunkSizer`` decides; yield the running count after
    each chunk. Stop iterating to stop between chunks: the slot then holds exactly what was
    evaluated."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    sizer = step if isinstance(step, ChunkSizer) else None
    done = 0
    while done < len(tokens):
        size = sizer.size if sizer is not None else int(step)  # type: ignore[arg-type]
        chunk = list(tokens[done: done + size])
        start = time.perf_counter()
        with mx.stream(generation_stream):
            model(mx.array(chunk)[None], cache=slot.cache)
            mx.eval([c.state for c in slot.cache])
        if sizer is not None:
            sizer.measured(len(chunk), time.perf_counter() - start)
        slot.tokens.extend(chunk)
        done += len(chunk)
        mx.clear_cache()
        yield done


def with_history(processors: list[Any], history: Sequence[int]) -> list[Any]:
    """Logits processors that see ``history`` before the tokens ``generate_step`` gives them
    (it only knows the tokens it was passed: the cached conversation would be forgotten)."""
    if not processors or not history:
        return processors
    import mlx.core as mx

    before = mx.array(list(history))

    def wrap(processor: Any) -> Any:
        def seen_all(tokens: Any, logits: Any) -> Any:
            return processor(mx.concatenate([before, tokens]), logits)
        return seen_all

    return [wrap(p) for p in processors]


def run_turn(loaded: LoadedModel, caches: PromptCaches, key: CacheKey,
             messages: Sequence[Mapping[str, str]], params: SamplingParams, *,
             cancel: threading.Event | None = None, limit: int | None = None,
             prefill_step: int | ChunkSizer = DEFAULT_PREFILL_STEP, ignore_eos: bool = False,
             submitted: float | None = None,
             memory: Callable[[], MemoryReading] | None = None) -> Iterator[Any]:
    """Generate the assistant's reply to ``messages`` with the cache of ``key``.

    ``limit`` is the context (tokens); ``submitted`` (perf_counter) is when the user sent
    the message, for the time to first token; ``memory`` gives a reading for ``Memory``
    events. Raises ``ContextOverflow`` before doing anything when the prompt cannot fit.
    """
    import mlx.core as mx
    from mlx_lm import stream_generate

    cancel = cancel or threading.Event()
    submitted = time.perf_counter() if submitted is None else submitted
    limit = limit or loaded.context_limit(None)
    prompt = loaded.render(messages)
    if len(prompt) >= limit:
        raise ContextOverflow(
            f"the conversation is {len(prompt)} tokens and the context holds {limit}: "
            "start a new conversation (/reset) or shorten it",
            prompt_tokens=len(prompt), limit=limit)
    max_tokens, context_cut = params.max_tokens, False
    if len(prompt) + max_tokens > limit:
        max_tokens, context_cut = limit - len(prompt), True
        yield Notice(f"this reply can use only {max_tokens} tokens before the context "
                     f"({limit}) is full: start a new conversation for longer replies")

    reused = caches.reuse_prefix(key, prompt)
    slot = caches.slot(key)
    sampler, processors = make_sampler_and_processors(params)
    if ignore_eos:
        processors = [*processors, mask_tokens(loaded.tokenizer.eos_token_ids)]
    processors = with_history(processors, prompt[:-1])
    if params.seed is not None:
        mx.random.seed(params.seed)
    mx.reset_peak_memory()

    todo = prompt[reused:-1]  # the last prompt token starts the decode
    generated: list[int] = []
    pieces: list[str] = []
    finish = "cancelled"
    decode_tps = ttft = prefill_s = 0.0
    prefill_start = time.perf_counter()
    try:
        for done in prefill(loaded.model, slot, todo, prefill_step):
            yield PrefillProgress(done, len(todo) + 1)
            if cancel.is_set():
                break
        if not cancel.is_set():
            slot.mark()  # where the next prompt will most likely part from this one
            last_memory = 0.0
            for resp in stream_generate(
                loaded.model, loaded.tokenizer, mx.array(prompt[-1:]), max_tokens=max_tokens,
                sampler=sampler, logits_processors=processors or None, prompt_cache=slot.cache,
            ):
                if not generated:
                    now = time.perf_counter()
                    ttft, prefill_s = now - submitted, now - prefill_start
                    yield PrefillProgress(len(todo) + 1, len(todo) + 1)
                generated.append(resp.token)
                decode_tps = resp.generation_tps
                if resp.text:
                    pieces.append(resp.text)
                    yield TokenText(resp.text, resp.generation_tokens, decode_tps)
                if resp.finish_reason is not None:
                    finish = resp.finish_reason
                    break
                now = time.perf_counter()
                if memory is not None and now - last_memory > MEMORY_EVENT_INTERVAL_S:
                    last_memory = now
                    yield Memory(memory())
                if cancel.is_set():
                    break
            if generated:
                slot.tokens = prompt + generated
    except BaseException:
        caches.drop(key)  # unknown state: rebuild next turn
        raise
    slot.reconcile()
    if finish == "length" and context_cut:
        finish = "context"
    prefilled = len(todo) + 1 if generated else len(slot.tokens) - reused
    stats = TurnStats(
        prompt_tokens=len(prompt),
        reused_tokens=reused,
        prefill_tokens=max(0, prefilled),
        prefill_tps=float(prefilled / prefill_s) if prefill_s > 0 else 0.0,
        ttft_s=float(ttft),
        decode_tps=float(decode_tps),
        generated_tokens=len(generated),
        finish_reason=finish,
        peak_memory=int(mx.get_peak_memory()),
        kv_bytes=slot.nbytes,
        context_tokens=len(slot.tokens),
    )
    if memory is not None:
        yield Memory(memory())
    yield TurnDone("".join(pieces), stats)
