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
