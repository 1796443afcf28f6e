"""Helpers for the adapter tests: references from a fresh mlx-lm load, broken adapter folders.

A reference reply is computed exactly as a user of plain mlx-lm would get it:
``mlx_lm.load(model, adapter_path=...)`` then a greedy ``stream_generate`` over the whole
rendered conversation. It runs on the engine's thread (through ``engine.submit``), like every
MLX call in the workbench, but with its own freshly loaded model: none of the engine's state
is used.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_TOKENS = 16
FAMILY = {"llama": "llama", "qwen3": "qwen3", "llama-4bit": "llama", "qwen3-4bit": "qwen3"}


@dataclass
class Turn:
    """One engine turn: its final event, the rendered prompt and the generated token ids."""

    done: Any
    prompt: list[int]
    generated: list[int]

    @property
    def stats(self) -> Any:
        return self.done.stats


def result(stream: Any, timeout: float = 120) -> Any:
    """The value of a stream that must end in ``Result``."""
    from engine import Result

    final = stream.wait(timeout)
    assert isinstance(final, Result), final
    return final.value


def chat_turn(engine: Any, messages: list[dict[str, str]], max_tokens: int = MAX_TOKENS) -> Turn:
    """A greedy turn; returns the prompt the engine rendered and the tokens it generated."""
    from engine import SamplingParams, TurnDone

    msgs = [dict(m) for m in messages]
    prompt = result(engine.submit(lambda core, _e, _c: core.render(msgs)))
    done = engine.chat(msgs, SamplingParams(temperature=0.0, max_tokens=max_tokens)).wait(120)
    assert isinstance(done, TurnDone), done
    held = result(engine.submit(lambda core, _e, _c: core.cached_tokens()))
    assert held[: len(prompt)] == prompt
    return Turn(done, prompt, held[len(prompt):])


def reference_tokens(engine: Any, model: Path, adapter: Path | None, prompt: list[int],
                     max_tokens: int = MAX_TOKENS, fused: bool | None = None) -> list[int]:
    """Greedy tokens from a fresh ``mlx_lm.load(model, adapter_path=adapter)`` on ``prompt``.

    When the engine runs the adapter fused (``--adapter-mode``, engine/adapter_fuse.py; None:
    as ``engine.adapter`` says), the reference is what ``mlx_lm fuse`` does to that load: every
    adapted layer replaced by its ``fuse()`` (the fused weights are the same bits whether
    saved and loaded again or not)."""
    if fused is None:
        fused = adapter is not None and getattr(engine.adapter, "mode", None) == "fused"

    def fn(_core: Any, _emit: Any, _cancel: Any) -> list[int]:
        import mlx.core as mx
        from mlx.utils import tree_unflatten
        from mlx_lm import load, stream_generate

        ref_model, tokenizer = load(str(model), adapter_path=str(adapter) if adapter else None)
        if fused:
            layers = [(n, m.fuse()) for n, m in ref_model.named_modules() if hasattr(m, "fuse")]
            ref_model.update_modules(tree_unflatten(layers))
        return [r.token for r in stream_generate(ref_model, tokenizer, mx.array(prompt),
                                                 max_tokens=max_tokens)]

    return result(engine.submit(fn))


def use(engine: Any, adapter: Path | None, scale: float | None = None) -> Any:
    """Activate ``adapter`` (None = none); returns the AdapterState."""
    return result(engine.use_adapter(adapter, scale))


def scaled_copy(adapter: Path, dst: Path, multiplier: float) -> Path:
    """A copy of ``adapter`` whose config's scale is ``multiplier`` times the trained one:
    what a user would write to get that scale from plain mlx-lm."""
    shutil.copytree(adapter, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg["lora_parameters"]["scale"] = cfg["lora_parameters"]["scale"] * multiplier
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def edit_tensors(adapter: Path, dst: Path, edit: Any) -> Path:
    """A copy of ``adapter`` with ``edit(dict of numpy arrays)`` applied to its tensors."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(adapter, dst)
    tensors = load_file(str(dst / "adapters.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "adapters.safetensors"))
    return dst


def edit_config(adapter: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(adapter, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst
