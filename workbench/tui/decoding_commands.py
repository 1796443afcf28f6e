"""The palette's decoding commands (issue 12): prompt lookup on/off, the KV cache's bits, no
draft model. Each asks the engine for new ``DecodingSettings`` from the next reply on
(engine/speculative.py); a KV change starts the cache again under the new bits. Listed
when typed (``discover=False``): "lookup", "kv", "draft"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine.speculative import DEFAULT_LOOKUP_TOKENS, DecodingSettings, KVSettings

if TYPE_CHECKING:
    from .app import WorkbenchApp


def decoding_commands(app: WorkbenchApp) -> list[tuple[str, str, Callable[[], Any]]]:
    """(title, help, run) for each decoding command that would change something now."""
    engine = app.engine
    state = engine.state
    settings = state.decoding

    def use(new: DecodingSettings, said: str) -> Callable[[], Any]:
        def run() -> None:
            engine.set_decoding(new)
            app.notify(f"{said}, from the next reply on")
        return run

    found: list[tuple[str, str, Callable[[], Any]]] = []
    if settings.prompt_lookup:
        found.append(("Prompt lookup: off", "Stop drafting tokens from the conversation",
                      use(replace(settings, prompt_lookup=0), "Prompt lookup off")))
    else:
        found.append(("Prompt lookup: on", "Draft tokens from n-grams of the conversation: "
                      "the same replies, faster when they repeat it",
                      use(replace(settings, prompt_lookup=DEFAULT_LOOKUP_TOKENS),
                          "Prompt lookup on")))
    for bits in (None, 8, 4):
        if settings.kv.bits == bits:
            continue
        label = "full precision" if bits is None else f"{bits}-bit"
        kv = KVSettings(bits, settings.kv.group_size, settings.kv.start)
        found.append((f"KV cache: {label}", "Quantize the KV cache (mlx-lm's kv_bits) once "
                      f"it holds {kv.start} tokens; the conversation is read again under it"
                      if bits else "Keep the KV cache at full precision",
                      use(replace(settings, kv=kv), f"KV cache {label}")))
    info = state.info
    if info is not None and info.draft:
        def no_draft() -> None:
            engine.load_draft(None)
            app.notify("No draft model from the next reply on")
        found.append(("Draft model: none", f"Stop speculative decoding with {info.draft}",
                      no_draft))
    return found
