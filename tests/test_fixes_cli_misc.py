"""Issue 19, the one-shot commands and line mode's words: an unusable ``--adapter`` is an
error in ``generate`` (item 13), counts of one are singular, line mode is not wrapped into a
pipe, ``sessions --help`` names every action, ``fuse --demo``, the key binding warning says
where (item 14)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("workbench:")]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["missing", "garbage", "another model's"])
def test_generate_with_an_adapter_it_cannot_use_fails_naming_the_flag(demo_kit, tmp_path,
                                                                       which) -> None:
    """Item 13: ``generate --adapter /bad/path`` exited 0 with the base model's reply."""
    adapter = {"missing": tmp_path / "no-such-adapter", "garbage": tmp_path / "garbage",
               "another model's": demo_kit.adapter("tone-a")}[which]  # llama's
    if which == "garbage":
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("not json")
    proc = cli("generate", "--model", str(demo_kit.chat), "--adapter", str(adapter),
               "--prompt", "hi", "--max-tokens", "4")
    assert proc.returncode != 0
    assert proc.stdout.strip() == ""  # no reply without the adapter
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--adapter" in lines[0], proc.stderr


@pytest.mark.slow
def test_generate_with_a_good_adapter_still_replies(demo_kit) -> None:
    proc = cli("generate", "--model", str(demo_kit.llama), "--adapter",
               str(demo_kit.adapter("tone-a")), "--prompt", "hi", "--max-tokens", "4", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


@pytest.mark.slow
def test_counts_of_one_are_singular(demo_kit, tmp_path) -> None:
    """Item 14: "1 tokens", "1 turns" in the resume line, the export and the app's line."""
    import json

    from engine import TurnStats
    from workbench.formatting import turn_summary

    where = ("--sessions-dir", str(tmp_path / "s"), "--session", "one")
    chat = ("chat", "--plain", "--jsonl", "--model", str(demo_kit.llama), *where)
    first = cli(*chat, "--max-tokens", "1", stdin="hi\n")
    assert first.returncode == 0, first.stderr
    again = cli(*chat, stdin="")
    load = next(json.loads(line) for line in again.stdout.splitlines()
                if json.loads(line).get("command") == "load")
    assert load["message"].startswith("session one: 1 turn, "), load
    export = cli("sessions", "export", "one", "--sessions-dir", str(tmp_path / "s"))
    assert "*1 token · " in export.stdout, export.stdout
    stats = TurnStats(prompt_tokens=5, reused_tokens=1, prefill_tokens=4, prefill_tps=1.0,
                      ttft_s=0.1, decode_tps=1.0, generated_tokens=1, finish_reason="length",
                      peak_memory=0, kv_bytes=0)
    assert turn_summary(stats).startswith("1 token · ")
    assert "1 prompt token from cache" in turn_summary(stats)


@pytest.mark.slow
def test_line_mode_into_a_pipe_keeps_long_lines_whole(demo_kit) -> None:
    """Item 14: line mode's output was hard-wrapped at 80 columns even into a pipe."""
    proc = cli("chat", "--plain", "--model", str(demo_kit.llama), "--max-tokens", "3",
               stdin="/help\nhi\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert any(line.startswith("/set NAME VALUE") and line.endswith("max_tokens, seed)")
               for line in out), out
    stats = [line for line in out if line.startswith("prompt ")]
    assert len(stats) == 1 and "| peak " in stats[0], out  # the stats line is one line
    note = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert note and note[0].endswith("Hugging Face repo id)."), proc.stderr


def test_sessions_help_names_every_action() -> None:
    """Item 14: ``workbench --help`` and ``sessions --help`` did not mention rename."""
    top = cli("--help").stdout
    line = next(line for line in top.splitlines() if line.strip().startswith("sessions "))
    assert "rename" in line, line
    help_text = cli("sessions", "--help").stdout
    assert "workbench sessions rename " in help_text


@pytest.mark.slow
def test_fuse_demo_fuses_a_demo_adapter_into_a_model_that_talks_like_it(tmp_path) -> None:
    """Item 14: ``workbench fuse --demo`` was refused (no such flag)."""
    out = tmp_path / "pirate-fused"
    bare = cli("fuse", "--demo", "-q")
    assert bare.returncode == 2 and error_lines(bare.stderr) == [
        "workbench: --demo fuses one of the demo's adapters: add --adapter-path brief or "
        "pirate (or a folder of your own)"], bare.stderr
    proc = cli("fuse", "--demo", "--adapter-path", "pirate", "--save-path", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and (out / "config.json").is_file()
    ask = ("--prompt", "hi", "--max-tokens", "6", "-q")
    fused = cli("generate", "--model", str(out), *ask)
    swapped = cli("generate", "--demo", "--adapter", "pirate", *ask)
    assert fused.returncode == 0 and swapped.returncode == 0, fused.stderr + swapped.stderr
    assert fused.stdout.strip() and fused.stdout == swapped.stdout
