"""Test helpers: reference generations straight from mlx-lm, with none of our code."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def on_reference_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` (mlx-lm work that returns plain data: text, token ids, floats) on a thread
    of its own, as the app runs MLX on its engine thread, and return what it returned.

    MLX keeps per-thread state: streams, and the cache of compiled functions (mlx-lm's
    ``swiglu``, ``silu``). A worker thread's goes with the thread; the main thread's is torn
    down after the interpreter has finished, and with entries in it the test process
    crashed at exit (SIGSEGV after every test passed, in PyGILState_Ensure from
    CompileCache's destructor). So tests never run a model on the main thread.
    """
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box.append((False, exc))
        finally:
            import mlx.core as mx

            mx.synchronize()
            mx.clear_streams()

    thread = threading.Thread(target=run, name="mlx-reference")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def reference_reply(model_path: Path, messages: list[dict[str, str]], max_tokens: int,
                    adapter: Path | None = None, repetition_penalty: float | None = None) -> str:
    """Greedy reply from a fresh ``mlx_lm.load`` and a full prefill of the rendered chat
    (with mlx-lm's own repetition-penalty processor when one is given)."""

    def reply() -> str:
        from mlx_lm import load, stream_generate
        from mlx_lm.sample_utils import make_logits_processors

        model, tokenizer = load(str(model_path), adapter_path=str(adapter) if adapter else None)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=True)
        processors = make_logits_processors(repetition_penalty=repetition_penalty) \
            if repetition_penalty else None
        return "".join(r.text for r in stream_generate(model, tokenizer, prompt,
                                                       max_tokens=max_tokens,
                                                       logits_processors=processors))

    return on_reference_thread(reply)


def run_turn(engine: Any, messages: list[dict[str, str]], **params: Any) -> Any:
    """One chat turn through the engine; returns the final event."""
    from engine import SamplingParams

    return engine.chat(messages, SamplingParams(**params)).wait(120)
