"""An adapter made by a real ``mlx_lm lora`` training run loads, swaps and replies correctly.

The demo adapters are written by our own kit; this one comes from mlx-lm's trainer (its
config carries the trainer's whole argument list, keys left to mlx-lm's default). It is
trained once per test session, offline, on a tiny local dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from adapter_fixtures import chat_turn, reference_tokens, result, use

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def trained_adapter(demo_kit, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-run")
    data = root / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
            for i in range(12)]
    for name, part in (("train", rows[:8]), ("valid", rows[8:])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    out = root / "adapter"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "lora", "--train", "--model", str(demo_kit.llama),
         "--data", str(data), "--iters", "10", "--batch-size", "2", "--num-layers", "2",
         "--learning-rate", "1e-2", "--val-batches", "1", "--steps-per-eval", "100",
         "--save-every", "100", "--adapter-path", str(out)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_trained_adapter_is_listed_swapped_and_matches_mlx_lm(llama_engine, demo_kit,
                                                              trained_adapter):
    from safetensors.numpy import load_file

    # The run really changed something: mlx-lm starts lora_b at zero.
    tensors = load_file(str(trained_adapter / "adapters.safetensors"))
    assert any(np.abs(v).max() > 0 for k, v in tensors.items() if k.endswith("lora_b"))

    [info] = result(llama_engine.list_adapters((), [trained_adapter]))
    assert info.valid, info.reason
    assert (info.type_label, info.rank, info.layers_label) == ("LoRA", 8, "2-3")
    assert info.keys == ()  # mlx-lm's default: every linear layer of the last blocks

    messages = [{"role": "user", "content": "What is 3 plus 3?"}]
    base = chat_turn(llama_engine, messages)
    state = use(llama_engine, trained_adapter)
    assert state.name == "adapter" and state.lora_scale == 20.0
    tuned = chat_turn(llama_engine, messages)
    assert tuned.generated == reference_tokens(llama_engine, demo_kit.llama, trained_adapter,
                                               tuned.prompt)
    use(llama_engine, demo_kit.adapter("tone-a"))
    use(llama_engine, None)
    again = chat_turn(llama_engine, messages)
    assert again.generated == base.generated
    assert again.stats.reused_tokens == len(base.prompt) - 1  # the base cache was kept
    use(llama_engine, trained_adapter, 0.5)
    half = chat_turn(llama_engine, messages)
    assert half.stats.scale == 0.5 and half.stats.adapter == "adapter"
