"""Issue 19 #8: a model that writes a special token (its pad token ``<|endoftext|>``, a chat
marker) never shows it as text: not in the streamed reply, not in the reply the engine
returns (which sessions, exports and the branch list keep), not in ``workbench generate``.
The token ids stay mlx-lm's: only the text drops them.

The model is the demo chat model with the embedding (tied to its output head) of the pad
token made a slightly larger copy of a token of its reply: it wins where its twin would, and
reads like it, so mlx-lm's own run writes it mid-reply (as the demo did a few turns in)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_turn

HIDDEN = ("<|endoftext|>", "<|im_start|>")
MESSAGES = [{"role": "user", "content": "Hello"}]
MAX_TOKENS = 24


def _reference(model_path: Path) -> tuple[list[int], str]:
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(model_path))
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    out = list(stream_generate(model, tokenizer, prompt, max_tokens=MAX_TOKENS))
    return [r.token for r in out], "".join(r.text for r in out)


@pytest.fixture(scope="module")
def pad_writer(demo_kit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo chat model, the row of the pad token (id 0) a twin of a token of its reply
    (the pad token never comes in a prompt: the prompt, and so the reply, stay the same)."""
    import mlx.core as mx

    folder = tmp_path_factory.mktemp("pad") / "chat-pad"
    shutil.copytree(demo_kit.chat, folder)
    ids, _ = _reference(folder)
    weights_file = folder / "model.safetensors"
    weights = dict(mx.load(str(weights_file)))
    table = weights["model.embed_tokens.weight"]
    rows = [table[i] for i in range(table.shape[0])]
    rows[0] = table[ids[3]] * 1.02
    weights["model.embed_tokens.weight"] = mx.stack(rows)
    mx.eval(weights)
    weights_file.unlink()  # the arrays are in memory now; the file is written anew
    mx.save_safetensors(str(weights_file), weights, metadata={"format": "mlx"})
    return folder


def test_mlx_lm_writes_the_special_tokens_as_text(pad_writer: Path) -> None:
    """The premise: a fresh mlx-lm run writes the pad token, and shows it as text."""
    ids, text = _reference(pad_writer)
    assert 0 in ids[1:]  # mid-reply, not only at the start
    assert text.count("<|endoftext|>") == ids.count(0)


def test_engine_reply_has_no_special_tokens_and_the_same_tokens(engine, pad_writer) -> None:
    from engine import ModelLoaded, TokenText

    assert isinstance(engine.load(str(pad_writer)).wait(120), ModelLoaded)
    ids, reference_text = _reference(pad_writer)
    stream = engine.chat(MESSAGES, _greedy())
    events = list(stream)
    done = events[-1]
    streamed = "".join(e.text for e in events if isinstance(e, TokenText))
    assert done.stats.generated_tokens == len(ids)
    expected = reference_text
    for h in HIDDEN:
        expected = expected.replace(h, "")
    for text in (done.text, streamed):
        assert not any(h in text for h in HIDDEN), text
        assert text == expected
    # And the next turn still reads the conversation as mlx-lm renders it.
    nxt = run_turn(engine, [*MESSAGES, {"role": "assistant", "content": done.text},
                            {"role": "user", "content": "Again"}], temperature=0.0,
                   max_tokens=4)
    assert nxt.stats.generated_tokens == 4


def test_generate_prints_no_special_tokens(pad_writer: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "generate", "--model", str(pad_writer),
         "--prompt", "Hello", "--temp", "0", "--max-tokens", str(MAX_TOKENS)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert not any(h in proc.stdout for h in HIDDEN), proc.stdout


def _greedy():
    from engine import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
