"""Issue 19 #11: Train and Eval give the same validation loss for the same adapter and data.

Training with ``--mask-prompt`` (the quick preset's setting, the demo's Train screen default)
measures the loss of the replies only; Eval measured whole examples, so the same adapter read
2.219 in one and 3.65 in the other. Eval now takes the rule the adapter was trained with (its
``adapter_config.json``), says which rule it used, and ``--no-mask-prompt`` still gives the
whole-example loss.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_support import even_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--batch-size", "2", "--max-seq-length", "256", "--val-batches", "-1"]


def workbench(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def trained(demo_kit, tmp_path_factory) -> tuple[Path, Path, float]:
    """A two-iteration run with the prompt masked: (data, adapter, its last val loss)."""
    root = tmp_path_factory.mktemp("masked")
    data = even_data(demo_kit, root / "data", train=2, valid=2)
    out = root / "adapter"
    proc = workbench("train", "-m", str(demo_kit.llama), "--data", str(data), "--adapter-path",
                     str(out), "--iters", "2", "--steps-per-eval", "2", "--num-layers", "2",
                     "--learning-rate", "1e-2", "--mask-prompt", "--jsonl", *COMMON)
    losses = [event["val_loss"] for line in proc.stdout.splitlines() if line.startswith("{")
              for event in [json.loads(line)] if event.get("val_loss") is not None]
    assert losses, proc.stdout
    return data, out, float(losses[-1])


def eval_loss(demo_kit, data: Path, adapter: Path, report: Path, *flags: str) -> dict:
    workbench("eval", "-m", str(demo_kit.llama), "--data", str(data), "--adapter", str(adapter),
              "--limit", "1", "--max-tokens", "2", "--json", str(report), "-q", *COMMON,
              *flags)
    return json.loads(report.read_text())


def test_eval_gives_the_validation_loss_training_reported(demo_kit, trained, tmp_path) -> None:
    data, adapter, train_loss = trained
    report = eval_loss(demo_kit, data, adapter, tmp_path / "report.json")
    losses = {c["label"]: report["val_loss"][c["label"]] for c in report["candidates"]}
    label = next(c["label"] for c in report["candidates"] if c["adapter"])
    assert losses[label] == pytest.approx(train_loss, abs=1e-3)
    assert report["mask_prompt"] is True


def test_the_whole_example_loss_is_still_there_and_says_so(demo_kit, trained, tmp_path) -> None:
    data, adapter, train_loss = trained
    report = eval_loss(demo_kit, data, adapter, tmp_path / "report.json", "--no-mask-prompt")
    label = next(c["label"] for c in report["candidates"] if c["adapter"])
    assert report["mask_prompt"] is False
    assert report["val_loss"][label] != pytest.approx(train_loss, abs=1e-3)
