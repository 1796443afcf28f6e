"""Issue 19 #24: what ``workbench train`` checks before the child starts.

- a missing or garbage ``--resume-adapter-file`` printed the child's 12-line traceback: now
  one line, exit 2, nothing trained;
- a resume file of another LoRA rank (or of layers the run does not train) trained and wrote
  an adapter the workbench itself then refused: now refused before training; one that fits
  still resumes;
- a FIFO as ``valid.jsonl`` hung the data check (it read the pipe): now one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_support import even_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(demo_kit, tmp_path_factory) -> Path:
    return even_data(demo_kit, tmp_path_factory.mktemp("data"), train=2, valid=2)


def train(demo_kit, data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "workbench", "train", "-m", str(demo_kit.llama), "--data",
           str(data), "--adapter-path", str(out), "--iters", "1", "--batch-size", "2",
           "--num-layers", "2", "--val-batches", "1", "--steps-per-eval", "1",
           "--max-seq-length", "256", "-q", *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("workbench:"), proc.stderr
    return lines[0]


@pytest.mark.parametrize("what", ["missing", "garbage", "empty"])
def test_an_unusable_resume_file_is_one_line(demo_kit, data, tmp_path, what) -> None:
    resume = tmp_path / "adapters.safetensors"
    if what == "garbage":
        resume.write_bytes(b"this is not a safetensors file at all" * 10)
    elif what == "empty":
        resume.write_bytes(b"")
    proc = train(demo_kit, data, tmp_path / "out", "--resume-adapter-file", str(resume))
    line = one_line(proc)
    assert proc.returncode != 0 and "--resume-adapter-file" in line
    assert not (tmp_path / "out").exists()


def test_a_resume_file_of_another_rank_is_refused_before_training(demo_kit, data,
                                                                  tmp_path) -> None:
    other = demo_kit.adapter("tone-a") / "adapters.safetensors"  # rank 4; the run's is 8
    proc = train(demo_kit, data, tmp_path / "out", "--resume-adapter-file", str(other))
    line = one_line(proc)
    assert proc.returncode != 0 and "rank 4" in line and "rank 8" in line
    assert not (tmp_path / "out").exists()


def test_a_resume_file_of_other_layers_is_refused(demo_kit, data, tmp_path) -> None:
    deep = demo_kit.adapter("tone-b") / "adapters.safetensors"  # rank 8, all 4 layers
    proc = train(demo_kit, data, tmp_path / "out", "--resume-adapter-file", str(deep))
    line = one_line(proc)
    assert proc.returncode != 0 and "--num-layers 4" in line


def test_a_resume_file_that_fits_still_resumes(demo_kit, data, tmp_path) -> None:
    import mlx.core as mx

    config = tmp_path / "rank4.yaml"
    config.write_text("lora_parameters:\n  rank: 4\n  scale: 10.0\n  dropout: 0.0\n"
                      "  keys: [self_attn.q_proj, self_attn.v_proj]\n")
    resume = demo_kit.adapter("tone-a") / "adapters.safetensors"
    proc = train(demo_kit, data, tmp_path / "out", "-c", str(config),
                 "--resume-adapter-file", str(resume), "--learning-rate", "1e-9")
    assert proc.returncode == 0, proc.stderr[-2000:]
    got, start = mx.load(str(tmp_path / "out" / "adapters.safetensors")), mx.load(str(resume))
    assert sorted(got) == sorted(start)
    # A tiny learning rate: what was written is the resumed file, not a fresh start.
    assert all(mx.allclose(got[k], start[k], atol=1e-5).item() for k in got)


def test_a_fifo_as_validation_data_does_not_hang(demo_kit, data, tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text((data / "train.jsonl").read_text())
    os.mkfifo(folder / "valid.jsonl")
    try:
        proc = train(demo_kit, folder, tmp_path / "out")
    except subprocess.TimeoutExpired:
        pytest.fail("the data check hung on a FIFO as valid.jsonl")
    assert proc.returncode != 0
    assert "valid.jsonl: not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr
