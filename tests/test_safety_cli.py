"""`workbench models` and `workbench generate` as a new user meets them (issue 10, #17)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from engine import Engine, ModelLoaded
from models.catalog import scan_models
from models.model_facts import describe_model
from workbench.cli import main
from workbench.generate import error_line, read_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_same_named_models_show_where_they_are_and_the_mark_is_explained(
        demo_kit, tmp_path, hf_cache, capsys):
    from workbench import recent

    for where in ("a", "b"):
        shutil.copytree(demo_kit.llama_4bit, tmp_path / where / "llama")
    recent.remember_model(str(tmp_path / "b" / "llama"))
    assert main(["models", "--folder", str(tmp_path / "a"), "--folder",
                 str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines[1:] if "llama" in ln.split()[:2]]
    assert len(rows) == 2 and rows[0] != rows[1]
    assert rows[0].startswith("*") and rows[0].rstrip().endswith(str(tmp_path / "b" / "llama"))
    assert rows[1].rstrip().endswith(str(tmp_path / "a" / "llama"))
    legend = [ln for ln in lines if "used recently" in ln]
    assert len(legend) == 1 and "used recently" in legend[0]


def test_no_legend_without_marks(demo_kit, hf_cache, capsys):
    assert main(["models", "--folder", str(demo_kit.llama)]) == 0
    out = capsys.readouterr().out
    assert "used recently" not in out and "*" not in out


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_models_refuses_a_bad_folder_in_one_line(tmp_path, hf_cache, capsys, kind):
    folder = tmp_path / "nope"
    if kind == "file":
        folder.write_text("x")
    assert main(["models", "--folder", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(folder) in err


def test_listed_parameter_count_is_the_sidebars(demo_kit, tmp_path):
    """The list shows the same figure the sidebar shows once the model is loaded
    (mlx_lm.utils.get_total_parameters, formatted the same way), tied heads included."""
    from common.formats import fmt_count as count  # what the sidebar's count() prints

    tied = tmp_path / "tied"
    shutil.copytree(demo_kit.qwen3, tied)  # tie_word_embeddings: a stray lm_head is dropped
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(tied / "model.safetensors"))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].copy()
    save_file(weights, str(tied / "model.safetensors"), metadata={"format": "mlx"})
    with Engine() as engine:
        for path in (demo_kit.llama, demo_kit.qwen3_4bit, tied):
            final = engine.load(str(path)).wait(120)
            assert isinstance(final, ModelLoaded), final
            (entry,) = scan_models([path], include_cache=False, available=1 << 40)
            assert entry.num_parameters == final.info.num_parameters
            assert entry.params_label == count(final.info.num_parameters)
            assert describe_model(path).num_parameters == final.info.num_parameters


def test_read_prompt_from_a_pipe_without_p(monkeypatch):
    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Pipe("from the pipe\n"))
    assert read_prompt(Namespace(prompt=None)) == "from the pipe\n"
    monkeypatch.setattr(sys, "stdin", Pipe("ignored"))
    assert read_prompt(Namespace(prompt="given")) == "given"
    monkeypatch.setattr(sys, "stdin", Tty(""))
    assert read_prompt(Namespace(prompt=None)) is None


def test_generate_without_a_prompt_on_a_terminal_says_how(monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty(""))
    assert main(["generate", "--demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prompt" in err and "pipe" in err


def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_generate_reads_a_piped_prompt(demo_kit):
    proc = _run("generate", "--model", str(demo_kit.llama), "--max-tokens", "4", "--quiet",
                stdin="Hello there")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_context_error_advice_fits_generate():
    from engine import EngineError

    error = EngineError("the conversation is 40 tokens and the context holds 16: start a new "
                        "conversation (/reset) or shorten it", "context",
                        prompt_tokens=40, limit=16)
    line = error_line(error, 16)
    assert "/reset" not in line and "--max-kv-size larger than 16" in line
    assert "shorter prompt" in line and "40 tokens" in line
    other = EngineError("something else", "no-model")
    assert error_line(other, None) == "something else"


@pytest.mark.slow
def test_generate_small_context_advises_flags_not_slash_commands(demo_kit):
    proc = _run("generate", "--model", str(demo_kit.llama), "--max-kv-size", "8",
                "--prompt", "a rather long prompt that cannot fit in eight tokens at all",
                "--quiet")
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("workbench:")]
    assert len(errors) == 1, proc.stderr
    assert "/reset" not in errors[0] and "--max-kv-size" in errors[0]
