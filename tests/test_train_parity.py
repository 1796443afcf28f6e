"""`workbench train` writes the adapter `python -m mlx_lm lora --train` writes, bit for bit,
for the same seed, data and arguments: LoRA and DoRA, on the demo llama and qwen3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_support import even_data

from workbench.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_data(demo_kit, tmp_path_factory):
    return even_data(demo_kit, tmp_path_factory.mktemp("data"))

FLAGS = ["--iters", "4", "--batch-size", "2", "--steps-per-report", "2",
         "--steps-per-eval", "2", "--val-batches", "1", "--save-every", "2",
         "--learning-rate", "1e-3", "--num-layers", "2", "--max-seq-length", "256",
         "--seed", "7"]




def _tensors(path: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(path))


def _same_tensors(a: Path, b: Path) -> None:
    import mlx.core as mx

    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        assert mx.array_equal(ta[name], tb[name]).item(), name


@pytest.mark.parametrize(("model", "extra"), [
    ("llama", ["--fine-tune-type", "lora"]),
    ("llama", ["--fine-tune-type", "dora", "--mask-prompt"]),
    ("qwen3", ["--fine-tune-type", "lora", "--mask-prompt", "-c", "{config}"]),
    ("qwen3", ["--fine-tune-type", "dora"]),
], ids=["llama-lora", "llama-dora-mask-prompt", "qwen3-lora-mask-prompt-yaml", "qwen3-dora"])
def test_workbench_train_equals_mlx_lm_lora(demo_kit, small_data, tmp_path, capsys, model,
                                            extra):
    config = tmp_path / "lora.yaml"
    config.write_text("lora_parameters:\n  rank: 4\n  scale: 10.0\n  dropout: 0.0\n"
                      "  keys: [self_attn.q_proj, self_attn.v_proj, mlp.down_proj]\n")
    extra = [str(config) if x == "{config}" else x for x in extra]
    common = ["--model", str(getattr(demo_kit, model)), "--data", str(small_data),
              *FLAGS, *extra]
    ref, ours = tmp_path / "ref", tmp_path / "ours"
    # Both at once: the reference in its own process, ours (which starts its child) here.
    reference = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm", "lora", "--train", *common, "--adapter-path",
         str(ref)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code = main(["train", *common, "--adapter-path", str(ours), "--quiet"])
    out, _ = reference.communicate(timeout=240)
    captured = capsys.readouterr()
    assert reference.returncode == 0, out[-2000:]
    assert code == 0, captured.err
    assert captured.out.strip() == str(ours)

    for name in ("adapters.safetensors", "0000002_adapters.safetensors",
                 "0000004_adapters.safetensors"):  # the last weights and both checkpoints
        _same_tensors(ref / name, ours / name)
        assert (ref / name).read_bytes() == (ours / name).read_bytes(), name
    ref_config = json.loads((ref / "adapter_config.json").read_text())
    our_config = json.loads((ours / "adapter_config.json").read_text())
    assert ref_config.pop("adapter_path") == str(ref)
    assert our_config.pop("adapter_path") == str(ours)
    assert our_config == ref_config
    # Ours also holds the record and the best checkpoint; nothing else.
    assert sorted(p.name for p in ours.iterdir()) == sorted(
        [*(p.name for p in ref.iterdir()), "best", "training.json"])
