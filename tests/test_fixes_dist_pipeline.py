"""Issue 19 #22: ``--shard pipeline`` equals one process on gemma, gemma2, gemma3, granite.

The generic pipelined forward used to replace the model's own and drop what it does around
its layers: gemma's embedding scale (sqrt(hidden)), granite's ``embedding_multiplier``,
gemma2's mask, gemma3's cache layout (it ended in "zip() argument 2 is longer"). Each case
runs a three-turn ``chat --plain --jsonl --logprobs`` on two ranks and on one process and
compares every token id and log-probability. gemma3's window (8) is smaller than the prompts,
so its rotating caches wrap on every rank. lfm2 (convolution caches) is refused before any
weight is read, in one line that does not send the user to a mode that is refused too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models.demo import DemoSpec, build_model
from tests.test_distributed import PROMPTS, ROOT, chat_lines, launch, needs_launch, replies

pytestmark = pytest.mark.slow

SMALL = {"hidden_size": 128, "intermediate_size": 256, "seed": 5}
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma": ("gemma", {"head_dim": 32}),
    "gemma2": ("gemma2", {"head_dim": 32, "query_pre_attn_scalar": 32}),
    "gemma3": ("gemma3_text", {"head_dim": 32, "query_pre_attn_scalar": 32,
                               "sliding_window": 8, "sliding_window_pattern": 2}),
    "granite": ("granite", {"logits_scaling": 4.0, "attention_multiplier": 0.05,
                            "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                            "attention_bias": False, "mlp_bias": False}),
    "lfm2": ("lfm2", {"norm_eps": 1e-5, "conv_bias": False, "conv_L_cache": 3,
                      "block_dim": 128, "block_multiple_of": 32,
                      "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": False,
                      "layer_types": ["conv", "full_attention"] * 2}),
}
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    return {name: build_model(root / name, DemoSpec(name=name, model_type=kind, extra=extra,
                                                     **SMALL))  # type: ignore[arg-type]
            for name, (kind, extra) in ARCHS.items()}


def chat_args(model: Path) -> list[str]:
    return ["chat", "--plain", "--jsonl", "--logprobs", "2", "-m", str(model),
            "--max-tokens", str(MAX_TOKENS)]


def one_process(model: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "workbench", *chat_args(model)], cwd=ROOT,
                          input="\n".join(chat_lines(PROMPTS)) + "\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return replies(proc.stdout)


def tokens(reply: dict[str, Any]) -> list[tuple[int, float]]:
    return [(t["id"], round(t["logprob"], 4)) for t in reply["logprobs"]]


@needs_launch
@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3", "granite"])
def test_pipeline_equals_one_process(models, arch) -> None:
    rc, out, err, _s = launch([*chat_args(models[arch]), "--shard", "pipeline"],
                              chat_lines(PROMPTS), timeout=150)
    assert rc == 0 and "unexpected" not in err, err[-2000:]
    got, expected = replies(out), one_process(models[arch])
    assert len(got) == len(PROMPTS) == len(expected), err[-2000:]
    assert [r["content"] for r in got] == [r["content"] for r in expected]
    assert [tokens(r) for r in got] == [tokens(r) for r in expected]


@needs_launch
@pytest.mark.parametrize("shard", ["pipeline", "tensor"])
def test_lfm2_is_refused_in_one_line_without_a_circle(models, shard) -> None:
    _rc, out, err, _s = launch(["generate", "-m", str(models["lfm2"]), "--shard", shard,
                               "-p", "Hello", "--max-tokens", "2"], timeout=90)
    lines = [line for line in (out + err).splitlines() if line.startswith("workbench:")
             and "rank" not in line]
    assert len(lines) == 1, out + err
    assert "lfm2" in lines[0] and "--shard" not in lines[0], lines[0]
    assert "without mlx.launch" in lines[0]
    assert "Traceback" not in err and "unexpected" not in err
