"""Session files stay safe: export never overwrites blindly or clobbers a session, the lock
never follows a link, a shared folder is made private, a file in the folder's place is one
line in every face."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine.sampling import SamplingParams
from sessions import SessionError, SessionStore
from sessions.errors import ExportRefused, SessionFolderUnusable, UnsafeLock
from sessions.export import write_export
from workbench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _saved(folder: Path, name: str = "chat") -> None:
    with SessionStore(folder) as store:
        session = store.new(name, model="demo/llama", sampling=SamplingParams(max_tokens=8))
        session.add_user("hello")
        session.add_reply("hi there", {"generated_tokens": 2})
        store.save(session)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- #7 export ------------------------------------------------------------------------------
def test_export_refuses_to_overwrite_without_force_and_writes_0600(tmp_path, capsys):
    folder = tmp_path / "s"
    _saved(folder)
    target = tmp_path / "notes.md"
    target.write_text("my notes")
    code, out, err = _cli(capsys, "sessions", "export", "chat", "-o", str(target),
                          "--sessions-dir", str(folder))
    assert code == 1 and out == "" and err.count("\n") == 1 and "--force" in err
    assert target.read_text() == "my notes"
    code, _, _ = _cli(capsys, "sessions", "export", "chat", "-o", str(target), "--force",
                      "--sessions-dir", str(folder))
    assert code == 0 and target.read_text().startswith("# hello")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.json"
    assert _cli(capsys, "sessions", "export", "chat", "--format", "json", "-o", str(fresh),
                "--sessions-dir", str(folder))[0] == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


@pytest.mark.parametrize("victim", ["chat.toml", "other.toml", "chat.safetensors",
                                    ".chat.lock", "new.toml"])
def test_export_never_writes_a_session_file_even_with_force(tmp_path, capsys, victim):
    folder = tmp_path / "s"
    _saved(folder)
    _saved(folder, "other")
    (folder / "chat.safetensors").write_bytes(b"cache")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, out, err = _cli(capsys, "sessions", "export", "chat", "-o", str(folder / victim),
                          "--force", "--sessions-dir", str(folder))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "sessions folder's own files" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_export_through_a_link_to_a_transcript_is_refused(tmp_path):
    folder = tmp_path / "s"
    _saved(folder)
    link = tmp_path / "looks-harmless.md"
    link.symlink_to(folder / "chat.toml")
    store = SessionStore(folder)
    with pytest.raises(ExportRefused):
        write_export(store, "x", link, force=True)
    with pytest.raises(ExportRefused):  # the folder given another way
        write_export(store, "x", tmp_path / "s" / ".." / "s" / "chat.toml", force=True)
    assert store.open("chat").messages[0].content == "hello"


# -- #8 the lock ----------------------------------------------------------------------------
def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious contents")
    (folder / ".chat.lock").symlink_to(victim)
    store = SessionStore(folder)
    with pytest.raises(UnsafeLock) as info:
        store.acquire("chat")
    assert "symbolic link" in str(info.value) and "\n" not in str(info.value)
    assert victim.read_text() == "precious contents"
    with pytest.raises(SessionError):
        store.save(store.new("chat"))
    assert victim.read_text() == "precious contents"
    assert not (folder / "chat.toml").exists()


def test_a_hard_linked_lock_is_refused_and_its_target_untouched(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    victim = folder / "victim.txt"
    victim.write_text("precious contents")
    os.link(victim, folder / ".chat.lock")
    with pytest.raises(UnsafeLock, match="hard link"):
        SessionStore(folder).acquire("chat")
    assert victim.read_text() == "precious contents"


def test_a_fifo_lock_is_refused_without_hanging(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / ".chat.lock")
    with pytest.raises(UnsafeLock, match="not a regular file"):
        SessionStore(folder).acquire("chat")


def test_a_world_writable_folder_is_made_private_with_a_notice(tmp_path, capsys):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with SessionStore(folder) as store:
        store.acquire("chat")
        notices = store.take_notices()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert len(notices) == 1 and "now private" in notices[0]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root to make a folder owned by someone else")
def test_someone_elses_world_writable_folder_is_refused(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    os.chmod(folder, 0o777)
    with pytest.raises(SessionFolderUnusable, match="not yours"):
        SessionStore(folder).acquire("chat")
    assert list(folder.iterdir()) == []


def test_cli_shows_the_folder_notice(tmp_path, capsys):
    folder = tmp_path / "shared"
    _saved(folder)
    os.chmod(folder, 0o777)
    code, _, err = _cli(capsys, "sessions", "rename", "chat", "chat2", "--sessions-dir",
                        str(folder))
    assert code == 0 and "now private" in err and err.count("\n") == 1
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


# -- #9 a file where the folder should be ---------------------------------------------------
@pytest.mark.parametrize("call", ["list", "open", "acquire", "save", "summary", "delete",
                                  "rename", "unique_name", "open_or_new"])
def test_store_on_a_file_is_one_clear_error(tmp_path, call):
    file = tmp_path / "sessions"
    file.write_text("not a folder")
    store = SessionStore(file)
    actions = {
        "list": lambda: store.list(), "open": lambda: store.open("chat"),
        "acquire": lambda: store.acquire("chat"),
        "save": lambda: store.save(store.new("chat")),
        "summary": lambda: store.summary("chat"), "delete": lambda: store.delete("chat"),
        "rename": lambda: store.rename("chat", "b"), "unique_name": lambda: store.unique_name(),
        "open_or_new": lambda: store.open_or_new("chat"),
    }
    with pytest.raises(SessionFolderUnusable) as info:
        actions[call]()
    assert "is a file, not a folder" in str(info.value) and "\n" not in str(info.value)
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize("argv", [["sessions"], ["sessions", "list"],
                                  ["sessions", "show", "chat"],
                                  ["sessions", "export", "chat"]])
def test_sessions_cli_on_a_file_is_one_line(tmp_path, capsys, argv):
    file = tmp_path / "sessions"
    file.write_text("x")
    code, out, err = _cli(capsys, *argv, "--sessions-dir", str(file))
    assert code == 1 and out == "" and err.count("\n") == 1 and "is a file" in err


@pytest.mark.slow
def test_chat_plain_with_a_session_in_a_file_is_one_line(tmp_path, demo_kit):
    file = tmp_path / "sessions"
    file.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--model",
         str(demo_kit.llama), "--session", "x", "--sessions-dir", str(file)],
        input="", capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "WORKBENCH_CONFIG_DIR": str(tmp_path / "c")})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "is a file, not a folder" in " ".join(proc.stderr.split())
    assert file.read_text() == "x"


def test_sessions_alone_lists(tmp_path, capsys):
    folder = tmp_path / "s"
    _saved(folder)
    code, out, _ = _cli(capsys, "sessions", "--sessions-dir", str(folder))
    assert code == 0 and out.splitlines()[0].startswith("NAME")
    assert out.splitlines()[1].startswith("chat")
