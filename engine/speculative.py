"""Faster decoding that gives the same tokens: a draft model, prompt lookup, a quantized KV cache.

Three settings, each exact in the sense the rest of the engine is (greedy output equals what
mlx-lm gives for the same configuration):

- **A draft model** (``--draft-model``): mlx-lm's own speculative step
  (``speculative_generate_step`` through ``stream_generate(draft_model=...)``). The draft
  keeps its own prompt cache per main cache key (``CacheSlot.draft``), prefilled with the
  same tokens and trimmed with the main one, so a second turn reuses it too. A draft whose
  tokenizer has another vocabulary is refused in one line.
- **Prompt lookup** (``--prompt-lookup N``): drafts taken from the conversation itself
  (``engine/prompt_lookup.py``); no second model.
- **KV-cache quantization** (``--kv-bits``, ``--kv-group-size``, ``--quantized-kv-start``,
  mlx-lm's names and defaults): the cache becomes mlx-lm's ``QuantizedKVCache`` once it
  holds ``quantized_kv_start`` tokens. Where that happens matters (tokens read before it
  attend to full-precision keys, later ones to quantized keys), so the engine converts at
  the points mlx-lm would: after a prefill chunk of mlx-lm's size, counted from the first
  token a turn reads (``kv_boundaries``), or after a decode step. A turn that reuses the
  cache therefore equals mlx-lm carrying its prompt cache from turn to turn (what
  ``mlx_lm.chat`` and a prompt-cache file do) and fed the same new tokens.

Module level imports no MLX: the settings are read by the faces (CLI flags, config).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import BadSetting, ModelTooBig, WorkbenchError

DEFAULT_QUANTIZED_KV_START = 5000  # mlx_lm.generate's
DEFAULT_NUM_DRAFT_TOKENS = 3  # mlx_lm generate's --num-draft-tokens
DEFAULT_LOOKUP_TOKENS = 10  # --prompt-lookup without a number
DEFAULT_LOOKUP_NGRAM = 3
KV_BITS = (2, 3, 4, 5, 6, 8)
KV_GROUP_SIZES = (32, 64, 128)
# mlx-lm's prefill chunk (DEFAULT_PREFILL_STEP_SIZE in generate_step, 512 in
# speculative_generate_step): where a fresh mlx-lm run would check for KV quantization.
MLX_PREFILL_STEP = 2048
MLX_SPECULATIVE_PREFILL_STEP = 512


class DraftMismatch(WorkbenchError):
    kind = "draft"


@dataclass(frozen=True)
class KVSettings:
    """mlx-lm's KV-cache quantization: ``bits`` None = off."""

    bits: int | None = None
    group_size: int = 64
    start: int = DEFAULT_QUANTIZED_KV_START

    def __post_init__(self) -> None:
        if self.bits is not None and (isinstance(self.bits, bool) or self.bits not in KV_BITS):
            raise BadSetting(f"--kv-bits {self.bits} is not supported: use one of "
                             f"{', '.join(map(str, KV_BITS))} (or leave it out for none)")
        if self.group_size not in KV_GROUP_SIZES:
            raise BadSetting(f"--kv-group-size {self.group_size} is not supported: use "
                             f"{', '.join(map(str, KV_GROUP_SIZES))}")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise BadSetting(f"--quantized-kv-start {self.start!r} must be a whole number "
                             "from 0 up")

    @property
    def on(self) -> bool:
        return self.bits is not None

    def identity(self) -> str:
        """Names what a cache made under these settings holds ("" = full precision). A saved
        cache may be used again only under the same identity."""
        return "" if self.bits is None else \
            f"kv{self.bits}:g{self.group_size}:s{self.start}"

    def label(self) -> str:
        return "full precision" if self.bits is None else f"{self.bits}-bit"

    def to_dict(self) -> dict[str, int]:
        if self.bits is None:
            return {}
        return {"bits": self.bits, "group_size": self.group_size, "start": self.start}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVSettings:
        return cls(bits=data.get("bits"), group_size=int(data.get("group_size", 64)),
                   start=int(data.get("start", DEFAULT_QUANTIZED_KV_START)))


@dataclass(frozen=True)
class DecodingSettings:
    """How replies are decoded, beyond sampling: draft tokens per step for a draft model
    (mlx-lm's ``num_draft_tokens``), prompt lookup's longest draft (0 = off) and n-gram,
    and the KV cache's quantization."""

    num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS
    prompt_lookup: int = 0
    lookup_ngram: int = DEFAULT_LOOKUP_NGRAM
    kv: KVSettings = field(default_factory=KVSettings)

    def __post_init__(self) -> None:
        if isinstance(self.num_draft_tokens, bool) or not 1 <= self.num_draft_tokens <= 64:
            raise BadSetting(f"--num-draft-tokens {self.num_draft_tokens} is out of range: "
                             "use a whole number from 1 to 64")
        if isinstance(self.prompt_lookup, bool) or not 0 <= self.prompt_lookup <= 64:
            raise BadSetting(f"--prompt-lookup {self.prompt_lookup} is out of range: use a "
                             "whole number from 1 to 64 (draft tokens per step), or 0 for off")
        if isinstance(self.lookup_ngram, bool) or not 1 <= self.lookup_ngram <= 8:
            raise BadSetting(f"--prompt-lookup-ngram {self.lookup_ngram} is out of range: use "
                             "a whole number from 1 to 8")


# -- KV quantization --------------------------------------------------------------------
def maybe_quantize(cache: list[Any], kv: KVSettings | None) -> None:
    """mlx-lm's ``maybe_quantize_kv_cache``: layers holding ``kv.start`` tokens or more become
    ``QuantizedKVCache`` (in place in ``cache``)."""
    if kv is None or kv.bits is None:
        return
    from mlx_lm.generate import maybe_quantize_kv_cache

    try:
        maybe_quantize_kv_cache(cache, kv.start, kv.group_size, kv.bits)
    except NotImplementedError:
        raise BadSetting("this model's sliding-window cache cannot be quantized: start "
                         "without --kv-bits") from None


def _kv_layers(cache: list[Any]) -> Iterator[Any]:
    """The layer caches of ``cache`` that mlx-lm would try to quantize (those of a
    ``CacheList`` included)."""
    for layer in cache:
        inner = getattr(layer, "caches", None)
        if inner is not None:
            yield from _kv_layers(list(inner))
        elif hasattr(layer, "to_quantized"):
            yield layer


def check_kv_quantizable(model: Any, kv: KVSettings | None, which: str = "") -> None:
    """Refuse, before any turn, KV settings the model's cache cannot take (mlx-lm would fail
    only once the cache holds ``kv.start`` tokens, late in a chat): a sliding-window layer,
    or a head size the group size does not divide. Reads one token into a cache of its own
    (nothing else is touched) and quantizes it as mlx-lm would. ``which`` names the model
    in the line (a draft)."""
    if kv is None or kv.bits is None:
        return
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = list(make_prompt_cache(model))
    model(mx.array([[0]]), cache=cache)
    for layer in _kv_layers(cache):
        if getattr(layer, "keys", None) is None:
            continue
        try:
            mx.eval(layer.to_quantized(group_size=kv.group_size, bits=kv.bits).state)
        except NotImplementedError:
            raise BadSetting(f"{which or 'this model'}'s sliding-window cache cannot be "
                             "quantized: start without --kv-bits") from None
        except ValueError:
            line = _group_size_advice(layer, kv.group_size)
            raise BadSetting(f"{which}: {line}" if which else line) from None


def _group_size_advice(layer: Any, group_size: int) -> str:
    """One line: the head size, and the group sizes that divide it (if any)."""
    heads = sorted({int(layer.keys.shape[-1]), int(layer.values.shape[-1])})
    size = " and ".join(map(str, heads))
    fits = [g for g in KV_GROUP_SIZES if all(h % g == 0 for h in heads)]
    if not fits:
        return (f"--kv-bits cannot be used with this model: its attention heads hold {size} "
                f"values, which no group size ({', '.join(map(str, KV_GROUP_SIZES))}) "
                "divides; start without --kv-bits")
    return (f"--kv-group-size {group_size} does not fit this model: its attention heads hold "
            f"{size} values; use --kv-group-size {max(fits)} (or start without --kv-bits)")


def kv_boundaries(first: int, todo: int, step: int = MLX_PREFILL_STEP) -> list[int]:
    """Cache offsets after which a fresh mlx-lm run given the tokens from offset ``first`` on
    would check for quantization while reading ``todo`` of them (all but its last): the ends
    of its prefill chunks of ``step`` tokens."""
    points = list(range(first + step, first + todo, step))
    if todo > 0:
        points.append(first + todo)
    return points


# -- the draft model ----------------------------------------------------------------------
@dataclass
class DraftModel:
    """A loaded draft model: weights, tokenizer, and what names it."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    weight_bytes: int

    @property
    def identity(self) -> str:
        return self.path


def vocabulary(tokenizer: Any) -> dict[str, int]:
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    return dict(inner.get_vocab())


def check_vocabulary(main: Any, draft: Any, draft_name: str, main_name: str) -> None:
    """Refuse a draft whose tokenizer maps text to other ids than the main model's."""
    a, b = vocabulary(main), vocabulary(draft)
    if a == b:
        return
    differ = len(set(a.items()) ^ set(b.items()))
    raise DraftMismatch(
        f"the draft model {draft_name} has another vocabulary than {main_name} ({len(b)} vs "
        f"{len(a)} tokens, {differ} entries differ): choose a draft of the same model family "
        "(the same tokenizer)")


def load_draft(spec: str, path: Path, main_tokenizer: Any, main_name: str,
               available: Callable[[], int], context_tokens: int,
               kv: KVSettings | None = None) -> DraftModel:
    """Load the draft at ``path`` once it fits and its vocabulary matches (engine thread)."""
    from mlx_lm import load

    from models import fit
    from models.resolve import display_name

    from .loaded import first_line

    report = fit.fit_report(path, available(), context_tokens, kv_bits=kv.bits if kv else None,
                            kv_group_size=kv.group_size if kv else 64)
    if report.verdict == "too-big":
        raise ModelTooBig(f"as a draft model, {report.message()}", need=report.need,
                              available=report.available)
    try:
        model, tokenizer = load(str(path))[:2]
    except ValueError as exc:
        raise WorkbenchError(f"the draft model {path.name} cannot be loaded: "
                             f"{first_line(exc)}") from None
    name = display_name(spec, path)
    check_vocabulary(main_tokenizer, tokenizer, name, main_name)
    from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache

    if not can_trim_prompt_cache(make_prompt_cache(model)):
        raise DraftMismatch(f"the draft model {name} keeps a cache that cannot be cut back "
                            "(sliding window or recurrent layers): choose another draft")
    check_kv_quantizable(model, kv, f"the draft {name}")
    return DraftModel(name, str(path), model, tokenizer, report.weights)


def _window_of(layer: Any, upto: int) -> int:
    """0 when ``layer`` can be cut back at any point while it grows to ``upto`` tokens; its
    window when a sliding-window layer would reach it first (a full ``RotatingKVCache`` is
    written over in place: cutting it back leaves rejected drafts in it); -1 when it never
    can (a recurrent layer)."""
    inner = getattr(layer, "caches", None)
    if inner is not None:  # a CacheList: the tightest of its parts
        found = [_window_of(c, upto) for c in inner]
        return -1 if -1 in found else max(found, default=0)
    window = getattr(layer, "max_size", None)
    if isinstance(window, int):
        return 0 if upto < window else window
    return 0 if layer.is_trimmable() else -1


def speculation_blocker(caches: Mapping[str, list[Any]], upto: int, what: str) -> str:
    """Why drafting (``what``: the draft model, prompt lookup) would not be exact in a turn
    whose caches (by whose they are: "the model", "the draft model") grow to at most
    ``upto`` tokens (the prompt, the longest reply and one draft), in one line; "" when it
    would be. Asked before the turn: a window that fills during the prompt or the reply
    would make it drift."""
    for whose, cache in caches.items():
        found = [_window_of(layer, upto) for layer in cache]
        if -1 in found:
            return (f"{whose}'s cache cannot be cut back (recurrent layers), so {what} is "
                    "not used: replies are decoded plainly")
        window = min((w for w in found if w > 0), default=0)
        if window:
            return (f"this reply could reach {upto} tokens of context, past {whose}'s "
                    f"sliding window ({window}), where its cache can no longer be cut back: "
                    f"{what} is not used for it, it is decoded plainly (the same tokens)")
    return ""


class _Halves(list):  # type: ignore[type-arg]
    """The main and the draft layer caches as one list, for ``speculative_generate_step``,
    which slices it in two and then replaces layers in the halves (KV quantization): the
    halves it gets are our own lists, so those replacements reach the cache slots."""

    def __init__(self, main: list[Any], draft: list[Any]) -> None:
        super().__init__([*main, *draft])
        self._main, self._draft = main, draft

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice) and index.step is None:
            n = len(self._main)
            if index.start in (None, 0) and index.stop == n:
                return self._main
            if index.start == n and index.stop is None:
                return self._draft
        return super().__getitem__(index)


def draft_stream(model: Any, draft: DraftModel, tokenizer: Any, last: Sequence[int],
                 main_cache: list[Any], draft_cache: list[Any], *, max_tokens: int,
                 num_draft_tokens: int, sampler: Any, logits_processors: Any,
                 kv: KVSettings | None) -> Iterator[Any]:
    """mlx-lm's ``stream_generate`` with ``draft_model``: both caches hold the prompt but its
    last token (``last``); they are extended in place."""
    import mlx.core as mx
    from mlx_lm import stream_generate

    extra: dict[str, Any] = {}
    if kv is not None and kv.bits is not None:
        extra = {"kv_bits": kv.bits, "kv_group_size": kv.group_size,
                 "quantized_kv_start": kv.start}
    yield from stream_generate(
        model, tokenizer, mx.array(list(last)), max_tokens=max_tokens,
        draft_model=draft.model, num_draft_tokens=num_draft_tokens, sampler=sampler,
        logits_processors=logits_processors, prompt_cache=_Halves(main_cache, draft_cache),
        **extra)


def stream_tokens(token_generator: Iterator[tuple[int, Any, bool]], model: Any,
                  tokenizer: Any, prompt_size: int, max_tokens: int) -> Iterator[Any]:
    """``stream_generate``'s loop over any token generator yielding ``(token, logprobs,
    from_draft)``: text through the streaming detokenizer, stop at an end-of-sequence token,
    ``GenerationResponse`` per token, the last one with its ``finish_reason``."""
    import mlx.core as mx
    from mlx_lm.generate import GenerationResponse, generation_stream, wired_limit
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    if not isinstance(tokenizer, TokenizerWrapper):
        tokenizer = TokenizerWrapper(tokenizer)
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    token, logprobs, from_draft, n = -1, None, False, 0
    prompt_tps = 0.0
    with wired_limit(model, [generation_stream]):
        tic = time.perf_counter()
        for n, (token, logprobs, from_draft) in enumerate(token_generator):
            if n == 0:
                prompt_tps = prompt_size / (time.perf_counter() - tic)
                tic = time.perf_counter()
            if token in tokenizer.eos_token_ids:
                break
            detokenizer.add_token(token)
            if (n + 1) == max_tokens:
                break
            yield GenerationResponse(
                text=detokenizer.last_segment, token=token, logprobs=logprobs,
                from_draft=from_draft, prompt_tokens=prompt_size, prompt_tps=prompt_tps,
                generation_tokens=n + 1,
                generation_tps=(n + 1) / (time.perf_counter() - tic),
                peak_memory=mx.get_peak_memory() / 1e9, finish_reason=None)
        detokenizer.finalize()
        yield GenerationResponse(
            text=detokenizer.last_segment, token=token, logprobs=logprobs,
            from_draft=from_draft, prompt_tokens=prompt_size, prompt_tps=prompt_tps,
            generation_tokens=n + 1, generation_tps=(n + 1) / (time.perf_counter() - tic),
            peak_memory=mx.get_peak_memory() / 1e9,
            finish_reason="stop" if token in tokenizer.eos_token_ids else "length")
