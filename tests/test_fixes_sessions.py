"""Issue 19, items 15-18: the ways a saved session lost messages.

15. ``/reset`` in a saved session emptied it (the next autosave wrote the new, short
    conversation over the old file).
16. A transcript whose tree the store could not place (two children of one message, neither
    marked as an alternative) was read with messages missing and then saved without them.
17. A transcript edited on disk while it was open was overwritten by the next autosave.
18. Deep or wide trees: every reader of the tree is iterative (no RecursionError) and
    linear (a reply regenerated thousands of times opens at once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from sessions import BadSession, Session, SessionStore, branches, parse_session
from sessions.transcript import SessionMessage


def plain(model: Path, sessions: Path, lines: str, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--model",
         str(model), "--max-tokens", "4", "--sessions-dir", str(sessions), *extra],
        input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def contents(path: Path) -> list[str]:
    return [m["content"] for m in tomllib.loads(path.read_text())["messages"]]


# -- 15 -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_reset_in_a_saved_session_keeps_it_and_starts_a_new_one(demo_kit, tmp_path) -> None:
    sessions = tmp_path / "sessions"
    plain(demo_kit.llama, sessions, "hello\nsecond question\n", "--session", "talk")
    before = contents(sessions / "talk.toml")
    assert before[0] == "hello" and before[2] == "second question" and len(before) == 4

    objs = plain(demo_kit.llama, sessions, "/reset\na new start\n", "--session", "talk")
    reset = next(o for o in objs if o.get("command") == "reset")
    assert reset["ok"] and "talk-2" in reset["message"] and "kept" in reset["message"]
    # The saved session is the one the user saved, every message of it.
    assert contents(sessions / "talk.toml") == before
    # The new conversation lives in a session of its own.
    new = contents(sessions / "talk-2.toml")
    assert new[0] == "a new start" and len(new) == 2


# -- 16 -----------------------------------------------------------------------------------
def _transcript(messages: list[dict]) -> bytes:
    return tomli_w.dumps({"schema": 2, "title": "t", "messages": messages}).encode()


def _msg(node: int, parent: int, role: str, text: str, **extra: object) -> dict:
    return {"id": node, "parent": parent, "role": role, "content": text, **extra}


UNMARKED_FORK = [
    _msg(1, 0, "user", "hello"),
    _msg(2, 1, "assistant", "hi there"),
    _msg(3, 1, "assistant", "a second reply nobody marked as an alternative"),
    _msg(4, 3, "user", "my important follow-up"),
    _msg(5, 4, "assistant", "noted"),
]


def _all_contents(session: Session) -> list[str]:
    return sorted(m.content for m, *_ in branches.flatten(session.messages))


def test_a_fork_not_marked_as_alternatives_keeps_every_message(tmp_path) -> None:
    session = parse_session("forked", _transcript(UNMARKED_FORK))
    assert _all_contents(session) == sorted(m["content"] for m in UNMARKED_FORK)
    placed = [p for p in session.problems if "without alt = true" in p]
    assert len(placed) == 1, session.problems  # said once, not once per look at the fork
    assert any(len(b.path) == 4 for b in branches.branch_list(session.messages))


def test_an_unmarked_fork_survives_open_and_save(tmp_path) -> None:
    store = SessionStore(tmp_path / "s")
    store.check_folder()
    store.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = store.transcript_path("forked")
    path.write_bytes(_transcript(UNMARKED_FORK))
    with store:
        session = store.open("forked", lock=True)
        assert session.turns >= 1
        session.add_user("one more")
        store.save(session)
    saved = contents(path)
    for m in UNMARKED_FORK:
        assert m["content"] in saved
    assert "one more" in saved


def test_messages_the_tree_cannot_reach_are_refused_not_dropped(tmp_path) -> None:
    # 3 and 4 are each other's parent: a loop hanging off nothing the reader can start from.
    rows = [_msg(1, 0, "user", "hello"), _msg(2, 1, "assistant", "hi"),
            _msg(3, 4, "user", "lost a"), _msg(4, 3, "assistant", "lost b")]
    with pytest.raises(BadSession, match="left unchanged"):
        parse_session("loop", _transcript(rows))


# -- 17 -----------------------------------------------------------------------------------
def test_an_edit_on_disk_while_open_is_kept_aside_not_overwritten(tmp_path) -> None:
    store = SessionStore(tmp_path / "s")
    with store:
        session = Session(name="notes")
        session.add_user("first")
        session.add_reply("answer")
        store.save(session)
        path = store.transcript_path("notes")
        # Another editor changes the file while the workbench holds the session.
        edited = path.read_text().replace("first", "first, corrected by hand")
        path.write_text(edited)
        session.add_user("next")
        saved = store.save(session)
        assert saved.set_aside is not None and saved.set_aside.read_text() == edited
        assert "kept" in " ".join(store.take_notices())
    # The user's version is intact beside the session; the session holds the app's turn.
    assert "first, corrected by hand" in saved.set_aside.read_text()
    assert "next" in contents(path)


def test_a_save_with_no_change_on_disk_sets_nothing_aside(tmp_path) -> None:
    store = SessionStore(tmp_path / "s")
    with store:
        session = Session(name="quiet")
        session.add_user("first")
        store.save(session)
        session.add_reply("answer")
        assert store.save(session).set_aside is None
    assert [p.name for p in (tmp_path / "s").iterdir() if "quiet" in p.name] == ["quiet.toml"]


# -- 18 -----------------------------------------------------------------------------------
def _deep(depth: int) -> list[dict]:
    return [_msg(i, i - 1, "user" if i % 2 else "assistant", f"m{i}") for i in
            range(1, depth + 1)]


def test_a_deep_transcript_opens_lists_and_saves(tmp_path) -> None:
    rows = _deep(3000)
    # Every fifth message also has a sibling branch of its own, one message long.
    rows += [_msg(10_000 + i, i - 1, "user" if i % 2 else "assistant", f"alt{i}", alt=True)
             for i in range(5, 3000, 5)]
    store = SessionStore(tmp_path / "s")
    store.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    store.transcript_path("deep").write_bytes(_transcript(rows))
    assert store.list()[0].turns == 1500
    with store:
        session = store.open("deep", lock=True)
        assert len(session.messages) == 3000
        listed = branches.branch_list(session.messages)
        assert len(listed) == 1 + len(range(5, 3000, 5))
        assert branches.select(session.messages, listed[-1])
        store.save(session)
    again = parse_session("deep", store.transcript_path("deep").read_bytes())
    assert _all_contents(again) == sorted(r["content"] for r in rows)


def test_editing_every_message_of_a_long_chat_from_the_end_back(tmp_path) -> None:
    session = Session(name="long")
    for i in range(1000):
        session.add_user(f"q{i}")
        session.add_reply(f"a{i}")
    for index in range(1998, -1, -2):  # /edit of message 1000, 999, ..., 1
        session.fork(index)
        session.add_user(f"edited {index}")
    listed = branches.branch_list(session.messages)
    assert len(listed) == 1001
    data = session.to_toml()
    assert len(_all_contents(parse_session("long", data))) == 2000 + 1000


def test_a_reply_regenerated_thousands_of_times_keeps_every_version() -> None:
    rows = [_msg(1, 0, "user", "tell me a joke"), _msg(2, 1, "assistant", "v1")]
    rows += [_msg(i + 1, 1, "assistant", f"v{i}", alt=True, branch=i) for i in range(2, 5001)]
    session = parse_session("wide", _transcript(rows))
    assert len(branches.branch_list(session.messages)) == 5000
    assert branches.siblings(session.messages, 1) == (1, 5000)
    session.fork(1)
    session.add_reply("one more")
    again = parse_session("wide", session.to_toml())
    assert branches.siblings(again.messages, 1) == (5001, 5001)
    assert _all_contents(again) == sorted(["tell me a joke", "one more",
                                           *(f"v{i}" for i in range(1, 5001))])


def test_sessionmessage_is_what_the_tree_holds() -> None:
    assert isinstance(Session(name="x").add_user("hi"), SessionMessage)
