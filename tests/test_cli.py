"""The scripted faces: `workbench generate` against `mlx_lm generate`, errors, exit, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench.cli import main

PROMPT = "Explain what a Python decorator does."
SYSTEM = "You are terse."
MAX = "30"


def mlx_lm_generate(model, prompt, system=None, adapter=None) -> str:
    """The reply text of the real `python -m mlx_lm generate` CLI."""
    cmd = [sys.executable, "-m", "mlx_lm", "generate", "--model", str(model), "--prompt",
           prompt, "--max-tokens", MAX, "--temp", "0"]
    if system:
        cmd += ["--system-prompt", system]
    if adapter:
        cmd += ["--adapter-path", str(adapter)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    start = out.index("==========\n") + len("==========\n")
    return out[start: out.index("\n==========", start)]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "qwen3", "llama_4bit", "qwen3_4bit"])
@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("adapter", [None, "tone-b"], ids=["base", "adapter"])
def test_generate_temp0_equals_mlx_lm(demo_kit, capsys, model, system, adapter):
    path = getattr(demo_kit, model)
    adapter_path = demo_kit.adapter(adapter, model.split("_")[0]) if adapter else None
    argv = ["generate", "--model", str(path), "--prompt", PROMPT, "--max-tokens", MAX,
            "--temp", "0", "--quiet"]
    if system:
        argv += ["--system", system]
    if adapter_path:
        argv += ["--adapter", str(adapter_path)]
    assert main(argv) == 0
    ours = capsys.readouterr().out
    assert ours.endswith("\n")
    expected = mlx_lm_generate(path, PROMPT, system, adapter_path)
    assert expected, "mlx_lm produced no text: the comparison would prove nothing"
    assert ours[:-1] == expected


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize("model, expected", [
    ("/definitely/not/here", "no such folder"),
    (".", "not a model folder"),
    ("someone/uncached-model", "HF_HUB_OFFLINE"),
])
def test_bad_model_gives_one_line_and_no_traceback(model, expected):
    proc = _run("generate", "--model", model, "--prompt", "hi", "--quiet",
                env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("workbench:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr


@pytest.mark.slow
def test_generate_exits_cleanly_without_abort(demo_kit):
    proc = _run("generate", "--model", str(demo_kit.llama), "--prompt", "hi",
                "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert "terminate called" not in proc.stderr and "Abort" not in proc.stderr
    assert "DEMO model" in proc.stderr  # the demo is labelled
    assert "tok/s" in proc.stderr  # stats go to stderr
    assert "tok/s" not in proc.stdout


def test_out_of_range_flag_is_refused(capsys):
    assert main(["generate", "--demo", "--prompt", "x", "--temp", "7"]) == 2
    err = capsys.readouterr().err
    assert "temperature" in err and "0 to 5" in err


@pytest.mark.parametrize("command", [[], ["generate"], ["chat"], ["bench"], ["demo-model"]])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: workbench" in capsys.readouterr().out


@pytest.mark.slow
def test_plain_chat_jsonl_from_a_pipe(demo_kit):
    lines = "hello\n/stats\n/set temperature 9\nsecond\n/system be brief\n/reset\n/quit\nnever\n"
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--model",
         str(demo_kit.llama), "--max-tokens", "10"],
        input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    replies = [o for o in objs if o.get("role") == "assistant"]
    commands = [o for o in objs if "command" in o]
    assert len(replies) == 2  # "never" after /quit is not sent
    assert replies[0]["stats"]["generated_tokens"] > 0 and replies[0]["finish_reason"]
    assert replies[1]["stats"]["reused_tokens"] > 0  # turn 2 reuses turn 1's cache
    assert [c["command"] for c in commands] == ["stats", "set", "system", "reset", "quit"]
    assert [c["ok"] for c in commands] == [True, False, True, True, True]
    assert "out of range" in commands[1]["message"]


def _plain(demo_kit, lines: str, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--model",
         str(demo_kit.llama), "--max-tokens", "8", *extra],
        input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
def test_plain_chat_adapters_and_sessions(demo_kit, tmp_path):
    sessions = str(tmp_path / "sessions")
    objs = _plain(demo_kit, "hi\n/adapters\n/adapter tone-a\nmore\n/scale 1.5\nagain\n"
                  "/adapter /not/there\n/save talk\n",
                  "--adapters", str(demo_kit.adapters("llama")), "--sessions-dir", sessions)
    replies = [o for o in objs if o.get("role") == "assistant"]
    answers = {o["command"]: o for o in objs if "command" in o and o["command"] != "adapter"}
    adapter_answers = [o for o in objs if o.get("command") == "adapter"]
    assert [(r["adapter"], r["scale"]) for r in replies] == [
        (None, None), ("tone-a", 1.0), ("tone-a", 1.5)]
    assert "tone-b" in answers["adapters"]["message"]
    assert adapter_answers[0]["ok"] and not adapter_answers[1]["ok"]
    assert "no adapter folder" in adapter_answers[1]["message"]
    assert answers["scale"]["ok"] and answers["save"]["ok"]
    # A new process resumes the saved session: the cache is reused, the adapter restored.
    resumed = _plain(demo_kit, "next\n", "--session", "talk", "--sessions-dir", sessions)
    load = next(o for o in resumed if o.get("command") == "load")
    assert "3 turns" in load["message"] and "cache reused" in load["message"]
    reply = next(o for o in resumed if o.get("role") == "assistant")
    assert reply["adapter"] == "tone-a" and reply["scale"] == 1.5
    assert reply["cache_reused"] and reply["prefilled_tokens"] < reply["stats"]["prompt_tokens"]
