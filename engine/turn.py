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
from dataclasses import replace
from typing import Any

from common.errors import ContextOverflow

from .cache_miss import explain as explain_miss
from .events import (
    Memory,
    MemoryReading,
    Notice,
    PrefillProgress,
    TokenLogprob,
    TokenText,
    TurnDone,
    TurnStats,
)
from .loaded import LoadedModel
from .prompt_cache import CacheKey, CacheSlot, PromptCaches, common_prefix
from .sampling import SamplingParams, TurnOptions, make_sampler_and_processors, mask_tokens
from .speculative import (
    MLX_PREFILL_STEP,
    MLX_SPECULATIVE_PREFILL_STEP,
    DecodingSettings,
    DraftModel,
    KVSettings,
    kv_boundaries,
    maybe_quantize,
    speculation_blocker,
)
from .text_state import TextSegments, parse_tool_calls

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
            step: int | ChunkSizer, kv: KVSettings | None = None,
            kv_step: int = MLX_PREFILL_STEP) -> Iterator[int]:
    """Evaluate ``tokens`` into ``slot``'s cache a chunk at a time (mlx-lm's prefill loop),
    chunks of ``step`` tokens or as a ``ChunkSizer`` decides; yield the running count after
    each chunk. Stop iterating to stop between chunks: the slot then holds exactly what was
    evaluated.

    With KV quantization (``kv``), the cache is converted where mlx-lm's own prefill (chunks
    of ``kv_step``, counted from here) would convert it, and chunks end there (see
    engine/speculative.py): the same tokens then attend to full-precision keys as in mlx-lm.
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    sizer = step if isinstance(step, ChunkSizer) else None
    first = len(slot.tokens)
    points = kv_boundaries(first, len(tokens), kv_step) if kv is not None and kv.on else []
    done = 0
    while done < len(tokens):
        size = sizer.size if sizer is not None else int(step)  # type: ignore[arg-type]
        upcoming = next((p for p in points if p > first + done), None)
        if upcoming is not None:
            size = min(size, upcoming - first - done)
        chunk = list(tokens[done: done + size])
        start = time.perf_counter()
        with mx.stream(generation_stream):
            model(mx.array(chunk)[None], cache=slot.cache)
            if first + done + len(chunk) == upcoming:
                maybe_quantize(slot.cache, kv)
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


def _top_logprobs(logprobs: Any, token: int, k: int, decode: Callable[[list[int]], str],
                  index: int) -> TokenLogprob:
    """The chosen token's logprob, the distribution's entropy and its top ``k``."""
    import mlx.core as mx

    lp = logprobs.reshape(-1)
    top = mx.argpartition(-lp, kth=k - 1)[:k] if k < lp.size else mx.arange(lp.size)
    entropy = -mx.sum(mx.exp(lp) * mx.where(mx.isinf(lp), 0.0, lp))
    chosen, top_values, ent = lp[token], lp[top], entropy
    mx.eval(chosen, top_values, ent)
    ids: list[int] = top.tolist()  # type: ignore[assignment]
    values: list[float] = top_values.tolist()  # type: ignore[assignment]
    pairs = sorted(zip(ids, values, strict=True), key=lambda p: -p[1])
    return TokenLogprob(index=index, token=token, text=decode([token]),
                        logprob=float(chosen.item()), entropy=float(ent.item()),  # type: ignore[arg-type]
                        top=tuple((int(i), decode([int(i)]), float(v)) for i, v in pairs))


def run_turn(loaded: LoadedModel, caches: PromptCaches, key: CacheKey,
             messages: Sequence[Mapping[str, str]], params: SamplingParams, *,
             cancel: threading.Event | None = None, limit: int | None = None,
             prefill_step: int | ChunkSizer = DEFAULT_PREFILL_STEP, ignore_eos: bool = False,
             submitted: float | None = None,
             memory: Callable[[], MemoryReading] | None = None,
             options: TurnOptions | None = None, draft: DraftModel | None = None,
             decoding: DecodingSettings | None = None) -> Iterator[Any]:
    """Generate the assistant's reply to ``messages`` with the cache of ``key``.

    ``limit`` is the context (tokens); ``submitted`` (perf_counter) is when the user sent
    the message, for the time to first token; ``memory`` gives a reading for ``Memory``
    events; ``options`` asks for logprobs (``TokenLogprob`` events), a forced start of the
    reply, chat-template arguments. Raises ``ContextOverflow`` before doing anything when
    the prompt cannot fit.

    ``decoding`` (engine/speculative.py): KV-cache quantization, prompt lookup; with
    ``draft``, mlx-lm's speculative decoding with that draft model (its cache lives in the
    slot's ``draft``). Every one of them gives the tokens plain decoding gives at
    temperature 0, and the same distribution when sampling.
    """
    import mlx.core as mx

    options = options or TurnOptions(ignore_eos=ignore_eos)
    cancel = cancel or threading.Event()
    submitted = time.perf_counter() if submitted is None else submitted
    limit = limit or loaded.context_limit(None)
    template_args = options.template_args or None
    forced = list(options.reply_prefix)
    rendered = loaded.render(messages, template_args=template_args)
    prompt = rendered + forced
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

    held = list(caches.tokens(key))
    reused = caches.reuse_prefix(key, prompt)
    tokenizer = loaded.tokenizer
    reuse_note = caches.last_reuse
    miss = "" if reuse_note.startswith(f"{reused} tokens from") else explain_miss(
        held, prompt, reused, messages, lambda msgs: loaded.render(msgs, False, template_args),
        tokenizer.decode)
    slot = caches.slot(key)
    sampler, processors = make_sampler_and_processors(params)
    if options.ignore_eos:
        processors = [*processors, mask_tokens(tokenizer.eos_token_ids)]
    processors = with_history(processors, prompt[:-1])
    if params.seed is not None:
        mx.random.seed(params.seed)
    mx.reset_peak_memory()

    forced_text = tokenizer.decode(forced) if forced else ""
    segments = TextSegments.for_turn(tokenizer, rendered)
    todo = prompt[reused:-1]  # the last prompt token starts the decode
    decoding = decoding or DecodingSettings()
    kv = decoding.kv if decoding.kv.on else None
    mode = "draft" if draft is not None else "lookup" if decoding.prompt_lookup else "plain"
    blocker = _speculation_blocker(mode, slot, draft, decoding, len(prompt) + max_tokens)
    if blocker:
        yield Notice(blocker)
        mode = "plain"
    kv_step = MLX_SPECULATIVE_PREFILL_STEP if mode == "draft" else MLX_PREFILL_STEP
    dslot = _draft_slot(slot, draft, prompt) if mode == "draft" and draft else None
    lookup_counts = {"proposed": 0}
    from_draft = 0
    generated: list[int] = []
    pieces: list[str] = [forced_text]
    finish = "cancelled"
    decode_tps = ttft = prefill_s = reasoning_s = 0.0
    reasoning_tokens = 0
    decode_start = 0.0

    def split(text: str, count: int, drafted: int = 0) -> Iterator[TokenText]:
        nonlocal reasoning_tokens, reasoning_s
        was_inside = segments.state == "reasoning"
        for kind, piece in segments.feed(text):
            yield TokenText(piece, count, decode_tps, kind, drafted)
        if was_inside and segments.state != "reasoning":
            reasoning_tokens, reasoning_s = count, time.perf_counter() - decode_start

    prefill_start = time.perf_counter()
    try:
        for done in prefill(loaded.model, slot, todo, prefill_step, kv, kv_step):
            yield PrefillProgress(done, len(todo) + 1)
            if cancel.is_set():
                break
        if dslot is not None and draft is not None and not cancel.is_set():
            for _done in prefill(draft.model, dslot, prompt[len(dslot.tokens):-1],
                                 prefill_step, kv, kv_step):
                if cancel.is_set():
                    break
        if not cancel.is_set():
            slot.mark()  # where the next prompt will most likely part from this one
            last_memory = 0.0
            decode_start = time.perf_counter()
            if forced_text:
                yield from split(forced_text, 0)
            for resp in _responses(mode, loaded, slot, dslot, draft, prompt, max_tokens,
                                   sampler, processors or None, decoding, lookup_counts):
                if not generated:
                    now = time.perf_counter()
                    ttft, prefill_s = now - submitted, now - prefill_start
                    yield PrefillProgress(len(todo) + 1, len(todo) + 1)
                if options.logprobs:
                    prob = _top_logprobs(resp.logprobs, resp.token, options.logprobs,
                                         tokenizer.decode, len(generated))
                    if resp.finish_reason == "stop" and resp.token in tokenizer.eos_token_ids:
                        prob = replace(prob, eos=True)
                    yield prob
                generated.append(resp.token)
                decode_tps = resp.generation_tps
                from_draft += bool(resp.from_draft)
                if resp.text:
                    pieces.append(resp.text)
                    yield from split(resp.text, resp.generation_tokens, from_draft)
                if resp.finish_reason is not None:
                    finish = resp.finish_reason
                    break
                now = time.perf_counter()
                if memory is not None and now - last_memory > MEMORY_EVENT_INTERVAL_S:
                    last_memory = now
                    yield Memory(memory())
                if cancel.is_set():
                    break
            for kind, piece in segments.flush():
                yield TokenText(piece, len(generated), decode_tps, kind)
            if generated:
                slot.tokens = prompt + generated
                if dslot is not None:
                    dslot.tokens = prompt + generated
    except BaseException:
        caches.drop(key)  # unknown state: rebuild next turn
        raise
    slot.reconcile()
    if dslot is not None:
        dslot.reconcile()
    if segments.state == "reasoning":  # the reply ended inside its reasoning
        reasoning_tokens, reasoning_s = len(generated), time.perf_counter() - decode_start
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
        cached_before=len(held),
        cache_miss=miss,
        reuse_note=reuse_note,
        reasoning_tokens=reasoning_tokens,
        reasoning_s=round(reasoning_s, 4),
        forced_tokens=len(forced),
        **_decoding_stats(mode, draft, decoding, generated, from_draft,
                          lookup_counts["proposed"], decode_tps),
    )
    if memory is not None:
        yield Memory(memory())
    yield TurnDone("".join(pieces), stats, parse_tool_calls(tokenizer, segments.tool_texts))


def _speculation_blocker(mode: str, slot: CacheSlot, draft: DraftModel | None,
                         decoding: DecodingSettings, longest: int) -> str:
    """Why the turn's drafting mode would not be exact ("" when it would, or is plain): its
    caches must stay cut-back-able up to ``longest`` tokens (prompt and reply) and one
    draft more."""
    if mode == "plain":
        return ""
    from mlx_lm.models.cache import make_prompt_cache

    if mode == "draft" and draft is not None:
        caches = {"the model": slot.cache, "the draft model": make_prompt_cache(draft.model)}
        return speculation_blocker(caches, longest + decoding.num_draft_tokens,
                                   "the draft model")
    return speculation_blocker({"the model": slot.cache}, longest + decoding.prompt_lookup,
                               "prompt lookup")


def _draft_slot(slot: CacheSlot, draft: DraftModel, prompt: list[int]) -> CacheSlot:
    """The draft model's cache for this slot, cut to its longest prefix shared with
    ``prompt`` (at least the last prompt token left out); a new one if the slot has none
    or it was made by another draft."""
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    dslot = slot.draft
    if dslot is None or slot.draft_of != draft.identity or not dslot.cache:
        dslot = CacheSlot(make_prompt_cache(draft.model))
        slot.draft, slot.draft_of = dslot, draft.identity
    keep = min(common_prefix(dslot.tokens, prompt), len(prompt) - 1)
    if dslot.offset() > keep:
        trim_prompt_cache(dslot.cache, dslot.offset() - keep)
    del dslot.tokens[keep:]
    return dslot


def _responses(mode: str, loaded: LoadedModel, slot: CacheSlot, dslot: CacheSlot | None,
               draft: DraftModel | None, prompt: list[int], max_tokens: int, sampler: Any,
               processors: list[Any] | None, decoding: DecodingSettings,
               counts: dict[str, int]) -> Iterator[Any]:
    """mlx-lm ``GenerationResponse``s from the last prompt token on: plain
    ``stream_generate``, with the draft model, or with prompt lookup."""
    import mlx.core as mx
    from mlx_lm import stream_generate

    from .prompt_lookup import prompt_lookup_generate_step
    from .speculative import draft_stream, stream_tokens

    kv = decoding.kv if decoding.kv.on else None
    if mode == "draft" and draft is not None and dslot is not None:
        return draft_stream(loaded.model, draft, loaded.tokenizer, prompt[-1:], slot.cache,
                            dslot.cache, max_tokens=max_tokens,
                            num_draft_tokens=decoding.num_draft_tokens, sampler=sampler,
                            logits_processors=processors, kv=kv)
    if mode == "lookup":
        steps = prompt_lookup_generate_step(
            mx.array(prompt[-1:]), loaded.model, context=prompt, max_tokens=max_tokens,
            sampler=sampler, logits_processors=processors, prompt_cache=slot.cache,
            max_draft=decoding.prompt_lookup, ngram=decoding.lookup_ngram, kv=kv,
            counts=counts)
        return stream_tokens(steps, loaded.model, loaded.tokenizer, 1, max_tokens)
    extra: dict[str, Any] = {} if kv is None else {
        "kv_bits": kv.bits, "kv_group_size": kv.group_size, "quantized_kv_start": kv.start}
    return stream_generate(loaded.model, loaded.tokenizer, mx.array(prompt[-1:]),
                           max_tokens=max_tokens, sampler=sampler,
                           logits_processors=processors, prompt_cache=slot.cache, **extra)


def _decoding_stats(mode: str, draft: DraftModel | None, decoding: DecodingSettings,
                    generated: list[int], from_draft: int, proposed: int,
                    decode_tps: float) -> dict[str, Any]:
    """TurnStats' decoding fields: which decoder, draft tokens accepted of those proposed."""
    kv = decoding.kv.identity()
    if mode == "plain":
        return {"kv_cache": kv}
    if mode == "draft":
        # mlx-lm drafts num_draft_tokens per verify step (fewer only near max_tokens);
        # each step ends with one token of the main model's own.
        steps = max(0, len(generated) - from_draft)
        proposed = steps * decoding.num_draft_tokens
    name = f"draft {draft.name}" if mode == "draft" and draft else "prompt lookup"
    return {"kv_cache": kv, "decoder": name, "draft_tokens": from_draft,
            "draft_proposed": proposed,
            "acceptance_rate": round(from_draft / proposed, 4) if proposed else None,
            "effective_tps": float(decode_tps)}
