"""Issue 19, line mode and ``workbench sessions``: what a saved session keeps and what the
commands say about branches (items 5, 9, 19, 20), through the real CLI on the demo model."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

MAX = 6


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def plain(demo_kit, sessions: Path, lines: list[str], *extra: str) -> list[dict]:
    proc = cli("chat", "--plain", "--jsonl", "--model", str(demo_kit.llama), "--max-tokens",
               str(MAX), "--temp", "0", "--sessions-dir", str(sessions), *extra,
               stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def said(objs: list[dict], name: str) -> list[dict]:
    return [o for o in objs if o.get("command") == name]


def sections(markdown: str, heading: str) -> list[str]:
    """The text of every ``## heading (...)`` section of an export."""
    lines = markdown.splitlines()
    return [lines[i + 2] for i, line in enumerate(lines) if line.startswith(f"## {heading} (")]


def shown_branch(path: Path) -> list[str]:
    """The user messages of the branch a transcript shows (ids 1..n, no ``alt`` head)."""
    data = tomllib.loads(path.read_text())
    rows = {m["id"]: m for m in data["messages"]}
    shown, parent = [], 0
    while True:
        kids = [m for m in rows.values() if m["parent"] == parent and not m.get("alt")]
        if not kids:
            return shown
        parent = kids[0]["id"]
        if kids[0]["role"] == "user":
            shown.append(kids[0]["content"])


@pytest.mark.slow
def test_markdown_export_of_all_branches_holds_each_branch_once(demo_kit, tmp_path) -> None:
    """Item 5: ``--branches all --format md`` printed the shown branch twice and dropped the
    other one (the TOML and JSON exports held both)."""
    sessions = tmp_path / "sessions"
    plain(demo_kit, sessions, ["Hello", "What can you do?", "/edit 2 Tell me a joke",
                               "/branch 1", "/quit"], "--session", "t")
    for shown in ("2", "1"):  # whichever branch the file shows
        plain(demo_kit, sessions, [f"/branch {shown}", "/quit"], "--session", "t")
        proc = cli("sessions", "export", "t", "--branches", "all", "--format", "md",
                   "--sessions-dir", str(sessions))
        assert proc.returncode == 0, proc.stderr
        users = sections(proc.stdout, "You")
        assert sorted(users) == ["Hello", "Tell me a joke", "What can you do?"], proc.stdout
        assert len(sections(proc.stdout, "Assistant")) == 3
        data = json.loads(cli("sessions", "export", "t", "--branches", "all", "--format",
                              "json", "--sessions-dir", str(sessions)).stdout)
        replies = sorted(m["content"] for m in data["messages"] if m["role"] == "assistant")
        assert sorted(sections(proc.stdout, "Assistant")) == replies


def clipped(text: str) -> str:
    return " ".join(text.split())[:80]


@pytest.mark.slow
def test_branch_n_reports_the_branch_it_now_shows(demo_kit, tmp_path) -> None:
    """Item 20: after ``/edit``, ``/branch 1`` and ``/branch 2`` both described branch 1."""
    objs = plain(demo_kit, tmp_path / "s", ["hi", "/edit 1 other start", "/branch 1",
                                            "/branch 2"])
    first, edited = [o["content"] for o in objs if o.get("role") == "assistant"]
    assert first != edited  # else the test could not tell the branches apart
    one, two = said(objs, "branch")
    assert one["ok"] and one["message"] == f"branch 1: 1 turn, last: {clipped(first)}"
    assert two["ok"] and two["message"] == f"branch 2: 1 turn, last: {clipped(edited)}"


def test_an_edit_whose_reply_fails_is_not_reported_as_edited(capsys) -> None:
    """Item 20: an ``/edit`` whose reply failed (the context is full) still said "edited:
    a new branch"; the conversation is as it was, and the command says so."""
    from engine import SamplingParams
    from sessions import Session
    from tests.fake_engine import FakeEngine
    from workbench.plain import PlainChat
    from workbench.plain_io import Output

    with FakeEngine() as fake:
        fake.load("fake-model").result_sync()
        chat = PlainChat(fake, Output(jsonl=True), SamplingParams(temperature=0.0),
                         Session(name="unsaved"))
        chat.handle_line("hello")
        capsys.readouterr()
        fake.fail_next_turn("the context is full: start a new conversation", kind="context")
        chat.handle_line("/edit 1 a very long message")
        objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o.get("kind") for o in objs if "error" in o] == ["context"]
    edit = said(objs, "edit")[0]
    assert edit["ok"] is False and "not edited" in edit["message"], edit
    assert [m.role for m in chat.conv.messages] == ["user", "assistant"]
    assert chat.conv.messages[0].content == "hello"
    assert len(chat.conv.branch_list()) == 1


@pytest.mark.slow
def test_settings_and_the_branch_chosen_are_saved_at_quit(demo_kit, tmp_path) -> None:
    """Items 9 and 19: ``/system``, ``/set``, ``/thinking`` and ``/branch`` followed by
    ``/quit`` (no reply in between) were lost: the file kept the old ones."""
    sessions = tmp_path / "s"
    plain(demo_kit, sessions, ["hi", "/edit 1 other start", "/quit"], "--session", "k")
    assert shown_branch(sessions / "k.toml") == ["other start"]
    objs = plain(demo_kit, sessions, ["/branch 1", "/system You are a pirate",
                                      "/set temperature 0.7", "/thinking off", "/quit"],
                 "--session", "k")
    assert not [o for o in objs if "error" in o], objs
    data = tomllib.loads((sessions / "k.toml").read_text())
    assert data["system_prompt"] == "You are a pirate"
    assert data["sampling"]["temperature"] == 0.7
    assert data["template"] == {"enable_thinking": False}
    assert shown_branch(sessions / "k.toml") == ["hi"]
    resumed = plain(demo_kit, sessions, ["/branches"], "--session", "k")
    listing = said(resumed, "branches")[0]["message"].splitlines()
    assert listing[0].startswith("*  1") and listing[1].startswith("   2"), listing
