"""Sampling settings: validated values, mlx-lm's defaults, and named presets."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from common.errors import BadSetting

# mlx-lm's own defaults (mlx_lm/generate.py DEFAULT_*), except max_tokens: a chat reply
# needs more room than mlx_lm generate's 100.
DEFAULT_MAX_TOKENS = 512

_INT_FIELDS = frozenset({"top_k", "max_tokens", "seed"})

# name -> (allowed range text, check)
_RULES: dict[str, tuple[str, Any]] = {
    "temperature": ("a number from 0 to 5 (0 = always the most likely token)",
                    lambda v: 0.0 <= v <= 5.0),
    "top_p": ("a number above 0 and at most 1 (1 = off)", lambda v: 0.0 < v <= 1.0),
    "min_p": ("a number from 0 to 1 (0 = off)", lambda v: 0.0 <= v <= 1.0),
    "top_k": ("a whole number from 0 (off) up", lambda v: v >= 0),
    "repetition_penalty": ("a number from 1 (off) to 3", lambda v: 1.0 <= v <= 3.0),
    "max_tokens": ("a whole number from 1 to 1000000", lambda v: 1 <= v <= 1_000_000),
    "seed": ("a whole number from 0 up, or none", lambda v: v is None or v >= 0),
}


@dataclass(frozen=True)
class TurnOptions:
    """How one turn runs, beyond sampling: ``logprobs`` asks for each token's logprob and
    its top K alternatives (0: none, and no cost); ``reply_prefix`` makes the reply start
    with these token ids (a branch that continues from a chosen token); ``template_args``
    go to the chat template (e.g. ``enable_thinking``); ``ignore_eos`` keeps generating
    past the end-of-sequence token (benchmarks)."""

    ignore_eos: bool = False
    logprobs: int = 0
    reply_prefix: tuple[int, ...] = ()
    template_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.logprobs <= 100:
            raise BadSetting(f"logprobs must be a whole number from 0 to 100, not "
                             f"{self.logprobs}")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            allowed, ok = _RULES[f.name]
            if value is None and f.name == "seed":
                continue
            if f.name in _INT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise BadSetting(f"{f.name} = {value!r} is not allowed: use {allowed}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and math.isnan(value)
            ):
                raise BadSetting(f"{f.name} = {value!r} is not allowed: use {allowed}")
            if not ok(value):
                raise BadSetting(f"{f.name} = {value!r} is out of range: use {allowed}")

    def with_values(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` applied; raises ``BadSetting`` and leaves self as it was."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise BadSetting(
                f"unknown setting {sorted(unknown)[0]!r}: known are "
                + ", ".join(f.name for f in fields(self))
            )
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        return cls().with_values(**data)


def parse_value(name: str, text: str) -> Any:
    """Turn user text (``/set temperature 0.7``, a settings field) into a typed value."""
    names = {f.name: f for f in fields(SamplingParams)}
    if name not in names:
        raise BadSetting(f"unknown setting {name!r}: known are {', '.join(names)}")
    text = text.strip()
    allowed = _RULES[name][0]
    if name == "seed" and text.lower() in ("", "none", "off"):
        return None
    try:
        if name in _INT_FIELDS:
            return int(text)
        return float(text)
    except ValueError:
        raise BadSetting(f"{name} = {text!r} is not a number: use {allowed}") from None


PRESETS: dict[str, SamplingParams] = {
    "precise": SamplingParams(temperature=0.0),
    "balanced": SamplingParams(temperature=0.7, top_p=0.9),
    "creative": SamplingParams(temperature=1.0, top_p=0.95, min_p=0.05),
    "code": SamplingParams(temperature=0.2, top_p=0.95, repetition_penalty=1.05),
}


def preset(name: str, max_tokens: int | None = None) -> SamplingParams:
    try:
        params = PRESETS[name]
    except KeyError:
        raise BadSetting(
            f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}"
        ) from None
    return params if max_tokens is None else params.with_values(max_tokens=max_tokens)


def make_sampler_and_processors(params: SamplingParams) -> tuple[Any, list[Any]]:
    """mlx-lm's sampler and logits processors for ``params`` (engine thread only)."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    sampler = make_sampler(
        params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k
    )
    processors = make_logits_processors(
        repetition_penalty=params.repetition_penalty
        if params.repetition_penalty != 1.0
        else None
    )
    return sampler, processors


def mask_tokens(token_ids: Iterable[int]) -> Callable[[Any, Any], Any]:
    """A logits processor that never lets ``token_ids`` be chosen (benchmarks use it on the
    end-of-sequence ids, to keep a reply going to ``max_tokens``)."""
    ids = sorted(set(token_ids))

    def mask(_tokens: Any, logits: Any) -> Any:
        import mlx.core as mx

        if ids:
            logits[:, mx.array(ids)] = -float("inf")
        return logits

    return mask
