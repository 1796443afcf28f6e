"""``workbench models``, ``workbench download`` and ``workbench quantize`` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
from hub_server import (
    DEMO_REPO,
    GATED_REPO,
    closed_port_url,
    demo_hub,
    go_online,
    place_in_hf_cache,
)

from workbench.cli import main

REPO = DEMO_REPO
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """The default Hugging Face cache, pointed at a temp folder for this test."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub(demo_kit, monkeypatch):
    go_online(monkeypatch)
    with demo_hub(demo_kit.llama) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


def test_models_lists_cache_and_folders(demo_kit, hf_cache, capsys):
    place_in_hf_cache(hf_cache, "demo/cached-qwen3", demo_kit.qwen3_4bit)
    assert main(["models", "--folder", str(demo_kit.root)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "PARAMS", "BITS", "SIZE"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["demo-chat", "demo/cached-qwen3", "llama", "llama-4bit", "qwen3",
                     "qwen3-4bit", "qwen3-think"]
    assert "of memory free now" in err

    assert main(["models", "--json", "--folder", str(demo_kit.root), "qwen3", "4bit"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["quant_bits"], m["fit"]) for m in listed] == [
        ("demo/cached-qwen3", 4, "fits"), ("qwen3-4bit", 4, "fits")]


def test_models_remembers_folders_and_recent_first(demo_kit, hf_cache, capsys):
    from workbench import recent

    assert main(["models", "--add-folder", str(demo_kit.root)]) == 0
    recent.remember_model(str(demo_kit.qwen3))
    capsys.readouterr()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines[0].split()[:2] == ["*", "qwen3"]  # marked and first
    assert main(["models", "--remove-folder", str(demo_kit.root)]) == 0
    assert main(["models", "--remove-folder", str(demo_kit.root)]) == 1


def test_models_with_nothing_says_what_to_do(hf_cache, capsys):
    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "workbench download mlx-community/" in err and "--demo" in err


def test_download_prints_the_folder(hub, hf_cache, capsys):
    assert main(["download", REPO]) == 0
    out, err = capsys.readouterr()
    path = Path(out.strip())
    assert path.parent.parent.name == "models--demo--tiny-llama"
    assert (path / "model.safetensors").is_file()
    assert "downloaded" in err and f"workbench --model {REPO}" in err
    assert main(["models"]) == 0
    assert REPO in capsys.readouterr().out


@pytest.mark.parametrize(("repo", "words"), [
    (GATED_REPO, "is gated"), ("demo/nope", "not found"), ("nope", "owner/name")])
def test_download_refusals(hub, hf_cache, capsys, repo, words):
    assert main(["download", repo]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = [ln for ln in err.splitlines() if ln.startswith("workbench:")]
    assert words in line


def test_download_without_network(hf_cache, monkeypatch, capsys):
    go_online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert main(["download", REPO, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("workbench: cannot reach") and err.count("\n") == 1


def _ctrl_c_as_a_terminal() -> None:
    """In the child, before exec: SIGINT as a shell gives it (default, not blocked). A
    disposition of SIG_IGN or a blocked SIGINT survives exec, and a test run that left one
    in its process would make the child deaf to the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
def test_ctrl_c_stops_a_download_and_running_it_again_resumes(hub, tmp_path, demo_kit):
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
           "HF_HUB_CACHE": str(cache), "HF_HUB_DOWNLOAD_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "workbench.cli", "download", REPO]
    hold = hub.hold("model.safetensors", after=3 << 20)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_as_a_terminal)
    try:
        assert hold.reached.wait(60), "the download never reached the weights"
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in cache.glob("*/blobs/*.incomplete")):
            assert time.monotonic() < deadline, "nothing was written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        out, err = proc.communicate(timeout=60)
    finally:
        hold.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert out == ""
    assert f"run `workbench download {REPO}` again to continue" in err
    (part,) = cache.glob("*/blobs/*.incomplete")
    kept = part.stat().st_size

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    path = Path(again.stdout.strip())
    weights = (demo_kit.llama / "model.safetensors").read_bytes()
    assert (path / "model.safetensors").read_bytes() == weights
    last = hub.served("model.safetensors")[-1]
    assert last.range == f"bytes={kept}-" and last.sent == len(weights) - kept


def test_quantize_writes_a_model_the_list_then_shows(demo_kit, hf_cache, tmp_path, capsys):
    dst = tmp_path / "mine" / "llama-q8"
    assert main(["quantize", str(demo_kit.llama), str(dst), "--bits", "8",
                 "--group-size", "32"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(dst.resolve())
    assert "written" in err
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["quant_bits"], m["group_size"]) for m in listed] == [
        ("llama-q8", 8, 32)]

    assert main(["quantize", str(demo_kit.llama), str(dst), "--bits", "4"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["quantize", str(demo_kit.llama), str(tmp_path / "x"), "--bits", "3"])
