"""`workbench fuse` and jobs/fuse.py: the same folder `python -m mlx_lm fuse` writes
(weights, config, GGUF), loadable by the workbench and listed by the models screen; every
refusal is one line and writes nothing; a cancel leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.fuse import FuseError, FuseFailed, FuseFinished, FuseJob, FuseProgress
from tests.helpers import reference_reply
from workbench.cli import main

MESSAGES = [{"role": "user", "content": "Explain what a Python decorator does."}]
MAX_TOKENS = 16


def mlx_lm_fuse(model: Path, adapter: Path, save: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "mlx_lm", "fuse", "--model", str(model),
                    "--adapter-path", str(adapter), "--save-path", str(save), *extra],
                   check=True, capture_output=True, text=True, timeout=300)


def assert_same_folder(ours: Path, theirs: Path) -> None:
    """Same files; the same tensors, bit for bit; the same config; the same GGUF bytes."""
    import mlx.core as mx

    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    a, b = mx.load(str(ours / "model.safetensors")), mx.load(str(theirs / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert mx.array_equal(a[name], b[name]).item(), name
    assert json.loads((ours / "config.json").read_text()) == \
        json.loads((theirs / "config.json").read_text())
    for gguf in ours.glob("*.gguf"):
        assert gguf.read_bytes() == (theirs / gguf.name).read_bytes()


def engine_reply(model: Path) -> str:
    from engine import Engine, SamplingParams

    with Engine() as engine:
        engine.load(str(model)).result_sync(120)
        done = engine.chat(MESSAGES, SamplingParams(max_tokens=MAX_TOKENS)).result_sync(120)
    return done.text


@pytest.mark.slow
@pytest.mark.parametrize(("model", "adapter", "extra"), [
    ("llama", "tone-b", ["--export-gguf"]),  # LoRA on every projection, plus GGUF
    ("llama", "tone-d", []),  # DoRA
    ("llama_4bit", "tone-a", ["--dequantize"]),  # a quantized base, dequantized
], ids=["lora-gguf", "dora", "4bit-dequantize"])
def test_fuse_equals_mlx_lm_fuse(demo_kit, tmp_path, capsys, model, adapter, extra):
    from models.catalog import scan_models
    from workbench import recent

    base, adapter_path = getattr(demo_kit, model), demo_kit.adapter(adapter)
    theirs, ours = tmp_path / "mlx-lm-fused", tmp_path / "workbench-fused"
    mlx_lm_fuse(base, adapter_path, theirs, *extra)
    assert main(["fuse", "--model", str(base), "--adapter-path", str(adapter_path),
                 "--save-path", str(ours), *extra]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(ours.resolve())
    assert f"workbench --model {ours.resolve()}" in err
    assert_same_folder(ours, theirs)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # The workbench loads it and answers as mlx-lm does on mlx-lm's own fused folder.
    assert engine_reply(ours) == reference_reply(theirs, MESSAGES, MAX_TOKENS)
    # ... and the models screen lists it.
    entries = scan_models(recent.model_folders(), include_cache=False)
    assert str(ours.resolve()) in [str(e.path) for e in entries]


@pytest.mark.slow
def test_fuse_quantized_stays_quantized_like_mlx_lm(demo_kit, tmp_path):
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    mlx_lm_fuse(demo_kit.llama_4bit, demo_kit.adapter("tone-a"), theirs)
    job = FuseJob(str(demo_kit.llama_4bit), str(demo_kit.adapter("tone-a")), str(ours))
    job.start()
    events = list(job.events(timeout=120))
    final = events[-1]
    assert isinstance(final, FuseFinished), final
    assert final.save_path == str(ours.absolute()) and final.gguf_path is None
    stages = [e.stage for e in events if isinstance(e, FuseProgress)]
    assert stages[:2] == ["start", "load"] and "fuse" in stages and stages[-1] == "save"
    fused = [e for e in events if isinstance(e, FuseProgress) and e.stage == "fuse"]
    assert [(e.done, e.total) for e in fused] == [(i, 4) for i in range(1, 5)]
    assert job.done and job.poll() == []
    assert_same_folder(ours, theirs)
    assert json.loads((ours / "config.json").read_text())["quantization"]["bits"] == 4


@pytest.mark.slow
def test_cancel_leaves_nothing(demo_kit, tmp_path):
    save = tmp_path / "fused"
    job = FuseJob(str(demo_kit.llama), str(demo_kit.adapter("tone-b")), str(save),
                  export_gguf=True)
    job.start()
    job.cancel()  # at once
    final = job.wait(60)
    assert isinstance(final, FuseFailed) and final.kind == "cancelled", final
    assert not save.exists()
    assert list(tmp_path.iterdir()) == []  # no hidden partial folder either

    job = FuseJob(str(demo_kit.llama), str(demo_kit.adapter("tone-b")), str(save))
    job.start()
    for event in job.events(timeout=60):  # the child is loading the model: stop it there
        if isinstance(event, FuseProgress) and event.stage == "load":
            job.cancel()
    assert isinstance(job.final, FuseFailed) and job.final.kind == "cancelled", job.final
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_adapter_of_another_model_fails_in_one_line(demo_kit, tmp_path):
    """The demo chat model's pirate adapter (128 wide) passes the file checks but not the
    shapes of the 256-wide llama: the child says so in one line."""
    job = FuseJob(str(demo_kit.llama), str(demo_kit.chat_adapters / "pirate"),
                  str(tmp_path / "fused"))
    job.start()
    final = job.wait(120)
    assert isinstance(final, FuseFailed) and final.kind == "adapter", final
    assert "\n" not in final.message and "pirate" in final.message
    assert list(tmp_path.iterdir()) == []


def _refusal_cases(kit, tmp: Path) -> dict[str, tuple[list[str], str]]:
    full = tmp / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    a_file = tmp / "a-file"
    a_file.write_text("mine")
    empty_adapter = tmp / "empty-adapter"
    empty_adapter.mkdir()
    llama, tone_b = str(kit.llama), str(kit.adapter("tone-b"))
    return {
        "save-path-not-empty": (["--model", llama, "--adapter-path", tone_b, "--save-path",
                                 str(full)], "not empty"),
        "save-path-is-a-file": (["--model", llama, "--adapter-path", tone_b, "--save-path",
                                 str(a_file)], "is a file"),
        "save-path-inside-model": (["--model", llama, "--adapter-path", tone_b,
                                    "--save-path", str(kit.llama / "fused")], "inside"),
        "no-adapter": (["--model", llama, "--adapter-path", str(tmp / "nope"), "--save-path",
                        str(tmp / "out")], "no such adapter"),
        "not-an-adapter": (["--model", llama, "--adapter-path", str(empty_adapter),
                            "--save-path", str(tmp / "out")], "empty-adapter"),
        "adapter-for-more-layers": (["--model", str(kit.chat), "--adapter-path", tone_b,
                                     "--save-path", str(tmp / "out")], "layers"),
        "no-model": (["--model", str(tmp / "no-model"), "--adapter-path", tone_b,
                      "--save-path", str(tmp / "out")], "no such folder"),
        "gguf-qwen3": (["--model", str(kit.qwen3), "--adapter-path",
                        str(kit.adapter("tone-b", "qwen3")), "--save-path", str(tmp / "out"),
                        "--export-gguf"], "GGUF"),
        "gguf-quantized": (["--model", str(kit.llama_4bit), "--adapter-path", tone_b,
                            "--save-path", str(tmp / "out"), "--export-gguf"], "--dequantize"),
    }


CASES = ["save-path-not-empty", "save-path-is-a-file", "save-path-inside-model", "no-adapter",
         "not-an-adapter", "adapter-for-more-layers", "no-model", "gguf-qwen3",
         "gguf-quantized"]


@pytest.mark.parametrize("case", CASES)
def test_refusals_are_one_line_and_write_nothing(demo_kit, tmp_path, capsys, case):
    args, needle = _refusal_cases(demo_kit, tmp_path)[case]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["fuse", *args]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("workbench: ") and needle in lines[0], lines[0]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (demo_kit.llama / "fused").exists()


def test_start_raises_fuse_error_before_anything_runs(demo_kit, tmp_path):
    job = FuseJob(str(demo_kit.llama), str(tmp_path / "nope"), str(tmp_path / "out"))
    with pytest.raises(FuseError):
        job.start()
    assert not job.done and job.poll() == [] and list(tmp_path.iterdir()) == []


def test_fuse_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fuse", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--adapter-path", "--save-path", "--dequantize", "--export-gguf",
                 "--gguf-path"):
        assert flag in out
    assert "usage: workbench fuse" in out
