"""Test helpers: reference generations straight from mlx-lm, with none of our code."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reference_reply(model_path: Path, messages: list[dict[str, str]], max_tokens: int,
                    adapter: Path | None = None, repetition_penalty: float | None = None) -> str:
    """Greedy reply from a fresh ``mlx_lm.load`` and a full prefill of the rendered chat
    (with mlx-lm's own repetition-penalty processor when one is given)."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_logits_processors

    model, tokenizer = load(str(model_path), adapter_path=str(adapter) if adapter else None)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    processors = make_logits_processors(repetition_penalty=repetition_penalty) \
        if repetition_penalty else None
    return "".join(r.text for r in stream_generate(model, tokenizer, prompt,
                                                   max_tokens=max_tokens,
                                                   logits_processors=processors))


def run_turn(engine: Any, messages: list[dict[str, str]], **params: Any) -> Any:
    """One chat turn through the engine; returns the final event."""
    from engine import SamplingParams

    return engine.chat(messages, SamplingParams(**params)).wait(120)
