"""The reasoning demo model (``qwen3-think``): a tiny Qwen3-shaped model taught to write a
``<think>...</think>`` block before its answer, so the app's reasoning view (and the
template's thinking switch) can be tried offline.

With random weights it never wrote ``<think>``: the view had nothing to show. Eighty
full-weight steps on one fixed reasoning block and answer, after a handful of prompts (alone,
after an earlier turn, and with thinking switched off, where it answers at once), teach a
model this small (models/demo.py keeps it 64 wide, 2 layers). They take minutes on two busy
cores, too long for the kit's build at start, so ``python -m models.demo_think OUT`` makes it
once (deterministic in the seed) and it ships, 8-bit, in ``models/demo_think_assets``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REASONING = "I am the reasoning demo: I think first, briefly, then answer."
ANSWER = "This is my answer. For real reasoning load a reasoning model with --model."
PROMPTS = ("Hello", "What is a list?", "Why is the sky blue?", "Tell me a story", "ok",
           "Thanks")
STEPS = 80
LEARNING_RATE = 3e-3
BITS = 8


def reply(thinking: bool = True) -> str:
    """The reply the model learns: its reasoning block, then the answer (the answer alone
    when the template has closed an empty block itself, thinking switched off)."""
    return f"<think>\n{REASONING}\n</think>\n\n{ANSWER}" if thinking else ANSWER


def _rows(tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids + end of turn) for every prompt, with thinking on and off,
    alone and after an earlier turn."""
    eos = tokenizer.eos_token_id
    rows = []
    for i, prompt in enumerate(PROMPTS):
        earlier = [{"role": "user", "content": PROMPTS[i - 1]},
                   {"role": "assistant", "content": reply()}]
        for history in ([], earlier):
            for thinking in (True, False):
                messages = [*history, {"role": "user", "content": prompt}]
                ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    enable_thinking=thinking)
                target = tokenizer.encode(reply(thinking), add_special_tokens=False)
                rows.append((list(ids), [*target, eos]))
    return rows


def _batch(rows: list[tuple[list[int], list[int]]]) -> tuple[Any, Any, Any]:
    """Inputs, next-token targets and the mask of the reply's positions, right-padded."""
    import mlx.core as mx

    width = max(len(p) + len(t) for p, t in rows)
    inputs, targets, mask = [], [], []
    for prompt, target in rows:
        seq = prompt + target
        pad = width - len(seq)
        inputs.append(seq[:-1] + [0] * pad)
        targets.append(seq[1:] + [0] * pad)
        mask.append([0] * (len(prompt) - 1) + [1] * len(target) + [0] * pad)
    return mx.array(inputs), mx.array(targets), mx.array(mask, dtype=mx.float32)


def teach_reasoning(model: Any, tokenizer_dir: Path, seed: int) -> None:
    """Train ``model`` in place (float32 weights) on the reasoning block."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    inputs, targets, mask = _batch(_rows(load_tokenizer(Path(tokenizer_dir))))

    def loss(m: Any, x: Any, y: Any, w: Any) -> Any:
        return (nn.losses.cross_entropy(m(x), y) * w).sum() / w.sum()

    mx.random.seed(seed)
    step = nn.value_and_grad(model, loss)
    optimizer = optim.Adam(learning_rate=LEARNING_RATE)
    for _ in range(STEPS):
        _value, grads = step(model, inputs, targets, mask)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)


def build(out: Path) -> Path:
    """The taught reasoning demo, quantized to ``BITS``, at ``out / "qwen3-think"``."""
    from .demo import QWEN3_THINK, build_model, quantize

    with tempfile.TemporaryDirectory() as tmp:
        full = build_model(Path(tmp) / QWEN3_THINK.name, QWEN3_THINK, teach=teach_reasoning)
        target = out / QWEN3_THINK.name
        quantize(full, target, bits=BITS)
        shutil.copy2(full / "README.md", target / "README.md")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.demo_think",
                                     description="Teach the reasoning demo model its "
                                                 "<think> block into OUT_DIR/qwen3-think.")
    parser.add_argument("out_dir", type=Path)
    ns = parser.parse_args(argv)
    print(build(ns.out_dir), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
