"""Line mode on the shared Conversation: what a saved session keeps, what /save says."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest


def plain(demo_kit, lines: str, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--model",
         str(demo_kit.llama), "--max-tokens", "6", *extra],
        input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
def test_scale_zero_is_saved_as_zero_and_resumed_at_zero(demo_kit, tmp_path) -> None:
    """Issue 10 #3: ``/scale 0`` was saved as 1.0, so a resumed session ran the adapter at
    full strength."""
    sessions = tmp_path / "sessions"
    objs = plain(demo_kit, "/adapter tone-a\n/scale 0\nhi\n/save zero\n",
                 "--adapters", str(demo_kit.adapters("llama")), "--sessions-dir", str(sessions))
    assert all(o.get("ok", True) for o in objs), objs
    saved = tomllib.loads((sessions / "zero.toml").read_text())
    assert saved["adapter"]["scale"] == 0.0 and saved["adapter"]["path"].endswith("tone-a")
    resumed = plain(demo_kit, "again\n", "--session", "zero", "--sessions-dir", str(sessions))
    reply = next(o for o in resumed if o.get("role") == "assistant")
    assert reply["adapter"] == "tone-a" and reply["scale"] == 0.0


@pytest.mark.slow
def test_save_into_a_folder_that_is_a_file_says_not_ok(demo_kit, tmp_path) -> None:
    """Issue 10 #9: ``/save`` printed an error and then ``ok: true``, and autosave kept
    pointing at the unusable folder."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    objs = plain(demo_kit, "hi\n/save talk\nmore\n", "--sessions-dir", str(blocker))
    save = next(o for o in objs if o.get("command") == "save")
    assert save["ok"] is False and "not saved" in save["message"]
    replies = [o for o in objs if o.get("role") == "assistant"]
    assert len(replies) == 2
    # No autosave was attempted after the refused /save: no error line after the reply.
    assert not [o for o in objs if "error" in o]
    assert blocker.read_text() == "a file"
