"""The loaded model: weights, tokenizer and config from mlx-lm, and what they say about it.

``LoadedModel.load`` resolves a folder or repo id (``models.resolve``, downloading when
needed), checks the memory fit first and loads with ``mlx_lm.load``; ``render`` turns a
conversation into the token ids the model reads, through the tokenizer's chat template.
Engine thread only.

The streaming detokenizer is made to skip special tokens (``hide_special_tokens``): a model
that writes its pad token (``<|endoftext|>``) would otherwise show it as text in the reply,
and from there in sessions, exports and the branch list. Only the text changes: the token
ids, and so the exactness against mlx-lm, stay as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import formats
from common.errors import WorkbenchError
from common.progress import LoadProgress
from models.resolve import display_name

from . import memory as mem
from .events import ModelInfo, Notice

Message = Mapping[str, str]
Emit = Callable[[Any], None]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _kept_marker_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokens the reasoning and tool-call markers are made of: they carry meaning
    in the text (engine/text_state.py splits on them), even a marker of several tokens
    (``<|channel>thought``) or one whose tokens are special."""
    names = ("think_start_tokens", "think_end_tokens", "tool_call_start_tokens",
             "tool_call_end_tokens")
    return {int(i) for n in names for i in getattr(tokenizer, n, None) or ()}


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens (pad, eos, bos, chat markers...) that never
    belong in a reply's text; reasoning and tool-call markers are kept."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", None) or ()}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, tok in added.items() if getattr(tok, "special", False))
    return frozenset(ids - _kept_marker_ids(tokenizer))


def hide_special_tokens(tokenizer: Any) -> None:
    """Make ``tokenizer.detokenizer`` (mlx-lm's ``TokenizerWrapper``) skip special tokens.

    mlx-lm copies one detokenizer per reply (``copy.copy``), so its class is swapped for a
    subclass whose ``add_token`` drops the ids of ``special_token_ids``: every copy filters.
    """
    detokenizer = getattr(tokenizer, "_detokenizer", None)
    if detokenizer is None or getattr(detokenizer, "hidden_ids", None) is not None:
        return
    hidden = special_token_ids(tokenizer)
    if not hidden:
        return
    base: type = type(detokenizer)

    class Quiet(base):  # type: ignore[valid-type,misc]
        hidden_ids = hidden

        def add_token(self, token: int) -> None:
            if token not in self.hidden_ids:
                super().add_token(token)

    Quiet.__name__ = f"Quiet{base.__name__}"
    detokenizer.__class__ = Quiet


def describe(name: str, path: Path, model: Any, config: dict[str, Any], weight_bytes: int,
             load_time_s: float, tokenizer: Any = None) -> ModelInfo:
    """The facts the UI shows about a loaded model (parameters, bits, context...). Whether
    it reasons or calls tools is what mlx-lm's tokenizer says (its markers, found in the
    vocabulary and the template: engine/text_state.py splits replies on them)."""
    from mlx_lm.utils import compute_bits_per_weight, get_total_parameters

    from models.demo import is_demo_model

    text = config.get("text_config")
    cfg = text if isinstance(text, dict) else config
    context = cfg.get("max_position_embeddings") or config.get("max_position_embeddings") or 0
    return ModelInfo(
        name=name,
        path=str(path),
        architecture=str(config.get("model_type", "?")),
        num_parameters=int(get_total_parameters(model)),
        bits_per_weight=round(float(compute_bits_per_weight(model)), 2),
        weight_bytes=weight_bytes,
        context_length=int(context),
        load_time_s=round(load_time_s, 3),
        is_demo=is_demo_model(path),
        reasoning=bool(getattr(tokenizer, "has_thinking", False)),
        thinking_switch="enable_thinking" in _template(tokenizer),
        tool_calls=bool(getattr(tokenizer, "has_tool_calling", False)),
    )


def _template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else ""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    info: ModelInfo

    @classmethod
    def load(cls, spec: str, path: Path, emit: Emit, *, available: Callable[[], int],
             context_hint: int | None, before_load: Callable[[], None] = lambda: None,
             loader: Callable[[Path], tuple[Any, Any, dict[str, Any]]] | None = None,
             fit_share: float = 1.0, fit: Mapping[str, Any] | None = None) -> LoadedModel:
        """Load the model folder ``path`` (found for ``spec``) once it is known to fit in
        ``available()`` bytes. ``before_load`` runs once the check has passed, just before
        the weights are read (the core drops the previous model there, so its memory is
        given back first).

        Distributed mode (issue 14, engine/distributed.py): ``loader`` replaces
        ``mlx_lm.load`` (a sharded load: ``path -> (model, tokenizer, config)``) and
        ``fit_share`` is the share of the weights this process will hold (the fit check
        counts only that share).

        ``context_hint`` is the context the fit check counts the KV cache for (None: the
        model's own); ``fit`` carries ``memory.fit_report``'s other keywords (the KV
        quantization, adapters and a draft model to count)."""
        if fit_share != 1.0:
            whole = available
            available = lambda: int(whole() / fit_share)  # noqa: E731 - same check, a share
        weight_bytes = mem.check_fit(path, available, context_hint,
                                     warn=lambda message: emit(Notice(message)),
                                     **dict(fit or {}))
        emit(LoadProgress("load", f"loading {path.name} ({formats.gb(weight_bytes)})"))
        before_load()
        import mlx.core as mx
        from mlx_lm import load
        from transformers.utils import logging as transformers_logging

        # Its warnings (e.g. "Token indices sequence length is longer than...", on a long
        # paste) would be written over the app's screen: what matters reaches the user as
        # events instead.
        transformers_logging.set_verbosity_error()

        start = time.perf_counter()
        try:
            if loader is not None:
                model, tokenizer, config = loader(path)
            else:
                model, tokenizer, config = load(str(path), return_config=True)
        except ValueError as exc:
            raise WorkbenchError(f"{path.name} cannot be loaded: {first_line(exc)}") from None
        mx.reset_peak_memory()
        hide_special_tokens(tokenizer)
        info = describe(display_name(spec, path), path, model, config, weight_bytes,
                        time.perf_counter() - start, tokenizer)
        return cls(model, tokenizer, config, info)

    # -- prompts -------------------------------------------------------------------------
    def render(self, messages: Iterable[Message], add_generation_prompt: bool = True,
               template_args: Mapping[str, Any] | None = None) -> list[int]:
        """Token ids of ``messages`` through the chat template (the next turn's prompt with
        ``add_generation_prompt``; the conversation so far without it). ``template_args``
        are the template's own switches (e.g. ``enable_thinking``)."""
        msgs = [dict(m) for m in messages]
        if not msgs:
            return []
        if getattr(self.tokenizer, "has_chat_template", True):
            return list(self.tokenizer.apply_chat_template(
                msgs, add_generation_prompt=add_generation_prompt, tokenize=True,
                **dict(template_args or {})))
        return list(self.tokenizer.encode("\n".join(m["content"] for m in msgs)))

    def context_limit(self, max_kv_size: int | None) -> int:
        """Tokens a conversation may hold: the model's context, capped by ``max_kv_size``."""
        limit = self.info.context_length or 0
        if max_kv_size:
            limit = min(limit, max_kv_size) if limit else max_kv_size
        return limit or 1 << 31
