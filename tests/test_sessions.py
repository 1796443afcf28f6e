"""The session store without a model: TOML transcripts, names, locks, crashes, the CLI."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.sampling import SamplingParams
from sessions import (
    BadSession,
    BadSessionName,
    SessionError,
    SessionInUse,
    SessionNotFound,
    SessionStore,
    SessionTooNew,
    check_name,
    export_markdown,
    sanitize_name,
)
from sessions.transcript import Session, SessionMessage
from workbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _conversation(store: SessionStore, name: str = "chat", turns: int = 2) -> Session:
    session = store.new(name, model="demo/llama", system_prompt="Be brief.",
                        sampling=SamplingParams(temperature=0.7, max_tokens=64, seed=3))
    for i in range(turns):
        session.add_user(f"question {i + 1}: what is a \"module\"?\nSecond line.")
        session.add_reply(f"answer {i + 1} with 'quotes' and \\backslashes\\",
                          {"generated_tokens": 12, "decode_tps": 250.5,
                           "finish_reason": "stop"}, adapter="tone-a")
    store.save(session)
    return session


def _fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# -- transcripts ---------------------------------------------------------------------------
def test_saved_session_reads_back_whole_and_is_human_readable(tmp_path):
    with SessionStore(tmp_path / "s") as store:
        saved = _conversation(store)
    text = (tmp_path / "s" / "chat.toml").read_text()
    assert 'content = "question 1' in text or "question 1" in text
    assert "[[messages]]" in text and "schema = 2" in text
    back = SessionStore(tmp_path / "s").open("chat")
    assert back.to_toml_data() == saved.to_toml_data()
    assert back.turns == 2 and back.title == "question 1: what is a \"module\"?"
    assert back.sampling.temperature == 0.7 and back.sampling.seed == 3
    assert back.messages[1].adapter == "tone-a" and back.messages[1].stats["decode_tps"] == 250.5


def test_chat_messages_keep_partial_cancelled_replies_and_drop_empty_ones():
    s = Session("x", system_prompt="sys")
    s.add_user("a")
    s.add_reply("", cancelled=True)
    s.add_user("b")
    s.add_reply("half a repl", cancelled=True)
    assert s.chat_messages() == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "a"},
        {"role": "user", "content": "b"}, {"role": "assistant", "content": "half a repl"}]


_text = st.text(st.characters(codec="utf-8"), max_size=60)


@FUZZ
@example(title="crlf\r\nkept", system="a\rb", messages=[("user", "x\r\n", False)])
@given(title=_text, system=_text,
       messages=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), _text, st.booleans()),
                         max_size=6))
def test_any_conversation_survives_a_save_and_reload(tmp_path, title, system, messages):
    session = Session("rt", title=title, system_prompt=system,
                      messages=[SessionMessage(r, c, cancelled=x and r == "assistant")
                                for r, c, x in messages])
    with SessionStore(tmp_path / "rt") as store:
        store.save(session)
        back = store.open("rt")
    assert back.to_toml_data() == session.to_toml_data()


# -- fuzzing the reader --------------------------------------------------------------------
def _assert_opens_cleanly_and_leaves_file(store: SessionStore, path: Path) -> None:
    before = _fingerprint(path)
    try:
        session = store.open(path.stem)
    except SessionError as exc:
        assert isinstance(exc, (BadSession, SessionTooNew)), type(exc)
        message = str(exc)
        assert message and "\n" not in message and path.stem in message
    else:
        assert session.name == path.stem
    assert _fingerprint(path) == before


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzzed_bytes_give_a_clear_error_or_a_session_and_stay_untouched(tmp_path, data):
    store = SessionStore(tmp_path)
    path = tmp_path / "f.toml"
    path.write_bytes(data)
    _assert_opens_cleanly_and_leaves_file(store, path)


_scalar = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True), _text,
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC))),
    st.dates(), st.times())
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)), max_leaves=8)


def _field(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, _value)


_message = st.one_of(_value, st.fixed_dictionaries({
    "role": _field(st.sampled_from(["user", "assistant"])),
    "content": _field(_text),
}, optional={
    "time": _field(st.datetimes(timezones=st.just(UTC))),
    "adapter": _field(_text),
    "cancelled": _field(st.booleans()),
    "stats": _field(st.dictionaries(_text, st.one_of(st.integers(0, 10**6), st.floats(0, 1e4),
                                                     _text), max_size=3)),
    "extra": _value,
}))
_document = st.fixed_dictionaries({
    "schema": st.one_of(st.just(1), st.just(1), st.just(1), st.integers(-1, 3), _value),
}, optional={
    "title": _field(_text),
    "created": _field(st.datetimes(timezones=st.just(UTC))),
    "updated": _field(st.datetimes()),
    "system_prompt": _field(_text),
    "model": _field(st.fixed_dictionaries({}, optional={"id": _field(_text),
                                                        "fingerprint": _field(_text)})),
    "adapter": _field(st.fixed_dictionaries({}, optional={
        "path": _field(_text), "scale": _field(st.floats(allow_nan=True))})),
    "sampling": _field(st.dictionaries(st.sampled_from(
        ["temperature", "top_p", "top_k", "seed", "max_tokens", "bogus"]), _value, max_size=3)),
    "messages": _field(st.lists(_message, max_size=4)),
    "surprise": _value,
})


@FUZZ
@given(doc=_document)
def test_fuzzed_toml_documents_give_a_clear_error_or_a_session_and_stay_untouched(tmp_path,
                                                                                   doc):
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):  # not representable in TOML (e.g. NaN keys): skip
        return
    path = tmp_path / "doc.toml"
    path.write_text(text, encoding="utf-8")
    _assert_opens_cleanly_and_leaves_file(SessionStore(tmp_path), path)


def test_a_deeply_nested_file_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("schema = 1\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    _assert_opens_cleanly_and_leaves_file(SessionStore(tmp_path), path)


def test_a_newer_schema_is_refused_and_never_overwritten(tmp_path):
    path = tmp_path / "future.toml"
    path.write_text('schema = 7\ntitle = "from the future"\nhologram = true\n')
    before = _fingerprint(path)
    store = SessionStore(tmp_path)
    with pytest.raises(SessionTooNew, match=r"newer workbench.*update the workbench"):
        store.open("future")
    with pytest.raises(SessionTooNew):
        store.save(Session("future"))
    assert _fingerprint(path) == before
    [row] = store.list()
    assert row.name == "future" and "newer workbench" in (row.problem or "")
    store.close()


def test_saving_over_a_damaged_transcript_keeps_it_aside(tmp_path):
    store = SessionStore(tmp_path)
    (tmp_path / "old.toml").write_text("this is [not toml")
    with pytest.raises(BadSession, match="not valid TOML"):
        store.open("old")
    saved = store.save(Session("old", messages=[SessionMessage("user", "new start")]))
    assert saved.set_aside is not None and saved.set_aside.read_text() == "this is [not toml"
    assert store.open("old").messages[0].content == "new start"
    store.close()


# -- names and files -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "../escape", "a/b", "a\\b", "..", ".hidden", "x..y",
                                 " padded ", "nul\x00", "tab\there", "c:x", "chat.toml",
                                 "x" * 200])
def test_unsafe_names_are_refused_with_a_suggestion(tmp_path, bad):
    store = SessionStore(tmp_path / "s")
    with pytest.raises(BadSessionName, match=r"is not allowed .*e\.g\."):
        store.open(bad)
    with pytest.raises(BadSessionName):
        store.save(Session(bad))
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
    assert not (tmp_path / "escape.toml").exists()


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=120))
def test_any_text_sanitizes_to_a_name_that_stays_in_the_folder(text):
    name = sanitize_name(text)
    assert check_name(name) == name
    folder = Path("/srv/sessions")
    assert (folder / f"{name}.toml").parent == folder
    assert os.path.normpath(folder / f"{name}.toml").startswith(str(folder) + os.sep)


def test_folder_is_private_and_files_are_0600(tmp_path):
    folder = tmp_path / "new" / "sessions"
    with SessionStore(folder) as store:
        _conversation(store)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "chat.toml").stat().st_mode) == 0o600


# -- two writers, crashes ------------------------------------------------------------------
def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


_SAVE_IN_CHILD = """
    import sys
    from sessions import SessionError, SessionStore
    store = SessionStore(sys.argv[1])
    try:
        session = store.open("chat", lock=True)
        session.add_user("from the second process")
        store.save(session)
    except SessionError as exc:
        print(exc)
        sys.exit(3)
    print("saved")
"""


def test_a_second_process_is_told_the_session_is_in_use(tmp_path):
    store = SessionStore(tmp_path)
    _conversation(store)  # saving took the lock, held until close
    out, err = _python(_SAVE_IN_CHILD, str(tmp_path)).communicate(timeout=60)
    assert f"is open in another workbench (process {os.getpid()})" in out, err
    assert store.open("chat").turns == 2
    store.close()
    out, err = _python(_SAVE_IN_CHILD, str(tmp_path)).communicate(timeout=60)
    assert out.strip() == "saved", err
    assert store.open("chat").turns == 3


def test_a_second_store_in_the_same_process_is_refused_too(tmp_path):
    one, two = SessionStore(tmp_path), SessionStore(tmp_path)
    one.open_or_new("chat")
    with pytest.raises(SessionInUse, match="elsewhere in this workbench"):
        two.open("chat", lock=True)
    one.close()
    two.open_or_new("chat")
    two.close()


_STALL_AT_REPLACE = """
    import os, sys, time
    from sessions import SessionStore
    real = os.replace
    def stalled(src, dst, *a, **k):
        if str(dst).endswith(sys.argv[2]):
            print("STALL", src, flush=True)
            time.sleep(120)
        return real(src, dst, *a, **k)
    os.replace = stalled
    store = SessionStore(sys.argv[1])
    session = store.open("chat", lock=True)
    session.add_user("x" * 3_000_000)
    store.save(session)
"""


def test_a_writer_killed_in_the_middle_of_a_save_leaves_the_previous_session(tmp_path):
    store = SessionStore(tmp_path)
    before = _conversation(store).to_toml_data()
    store.close()
    child = _python(_STALL_AT_REPLACE, str(tmp_path), ".toml")
    assert child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()  # the new version is fully written, not yet renamed
    assert line.startswith("STALL"), child.stderr.read()
    temp = Path(line.split()[1])
    assert temp.parent == tmp_path and temp.stat().st_size > 3_000_000
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    store = SessionStore(tmp_path)
    assert store.open("chat").to_toml_data() == before
    assert [r.name for r in store.list()] == ["chat"]
    store.open("chat", lock=True)  # the next writer clears what the killed one left
    assert not temp.exists()
    store.close()


# -- export and the CLI --------------------------------------------------------------------
def test_markdown_export_reads_as_the_conversation(tmp_path):
    with SessionStore(tmp_path) as store:
        session = _conversation(store, turns=1)
        session.add_user("and?")
        session.add_reply("half", cancelled=True)
    md = export_markdown(session)
    assert md.startswith("# question 1")
    assert "## System\n\nBe brief." in md
    assert "## You (" in md and "## Assistant (" in md and "adapter tone-a" in md
    assert "cancelled" in md and "12 tokens" in md and "answer 1 with 'quotes'" in md


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sessions_cli_lists_shows_exports_renames_and_deletes(tmp_path, capsys):
    folder = str(tmp_path / "s")
    with SessionStore(folder) as store:
        _conversation(store, "alpha", turns=2)
        _conversation(store, "beta", turns=1)
    code, out, _ = _cli(capsys, "sessions", "list", "--sessions-dir", folder)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "TITLE", "MODEL", "ADAPTER", "TURNS", "LAST", "USED",
                                "SIZE"]
    assert {ln.split()[0] for ln in lines[1:]} == {"alpha", "beta"}
    code, out, _ = _cli(capsys, "--sessions-dir", folder, "sessions", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["alpha"]["turns"] == 2 and rows["beta"]["turns"] == 1
    assert rows["alpha"]["toml_bytes"] == (tmp_path / "s" / "alpha.toml").stat().st_size
    code, out, _ = _cli(capsys, "sessions", "list", "--sessions-dir", folder, "--filter", "zzz")
    assert code == 0 and "no saved sessions matching 'zzz'" in out

    code, out, _ = _cli(capsys, "sessions", "show", "alpha", "--sessions-dir", folder)
    assert code == 0 and "turns      2 (4 messages)" in out and "you> question 2" in out
    assert "cache      none" in out
    code, out, _ = _cli(capsys, "sessions", "export", "alpha", "--sessions-dir", folder)
    assert out.startswith("# question 1") and "## Assistant" in out
    code, out, _ = _cli(capsys, "sessions", "export", "beta", "--format", "json",
                        "--sessions-dir", folder)
    data = json.loads(out)
    assert data["name"] == "beta" and data["messages"][0]["role"] == "user"
    target = tmp_path / "out" / "a.md"
    code, _, err = _cli(capsys, "sessions", "export", "alpha", "-o", str(target),
                        "--sessions-dir", folder)
    assert code == 0 and target.read_text().startswith("# question 1")

    code, out, _ = _cli(capsys, "sessions", "rename", "beta", "gamma", "--sessions-dir", folder)
    assert code == 0 and (tmp_path / "s" / "gamma.toml").exists()
    assert not (tmp_path / "s" / "beta.toml").exists()
    code, _, err = _cli(capsys, "sessions", "delete", "gamma", "--sessions-dir", folder)
    assert code == 1 and "--yes" in err and (tmp_path / "s" / "gamma.toml").exists()
    code, out, _ = _cli(capsys, "sessions", "delete", "gamma", "--yes", "--sessions-dir", folder)
    assert code == 0 and not (tmp_path / "s" / "gamma.toml").exists()
    assert [r.name for r in SessionStore(folder).list()] == ["alpha"]


@pytest.mark.parametrize("argv, message", [
    (["show", "nobody"], "no session named 'nobody'"),
    (["delete", "../etc", "--yes"], "session name '../etc' is not allowed"),
    (["export", "broken"], "session 'broken' cannot be read: not valid TOML"),
    (["rename", "broken", "a/b"], "session name 'a/b' is not allowed"),
])
def test_sessions_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "broken.toml").write_text("schema = [")
    code, out, err = _cli(capsys, "sessions", *argv, "--sessions-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith("workbench: ") and message in err and err.count("\n") == 1


def test_sessions_cli_refuses_to_delete_a_session_open_elsewhere(tmp_path, capsys):
    store = SessionStore(tmp_path)
    _conversation(store)
    code, _, err = _cli(capsys, "sessions", "delete", "chat", "--yes",
                        "--sessions-dir", str(tmp_path))
    assert code == 1 and "is open elsewhere in this workbench" in err
    assert (tmp_path / "chat.toml").exists()
    store.close()


def test_sessions_default_folder_comes_from_the_data_dir(tmp_path, capsys):
    store = SessionStore(tmp_path / "data" / "sessions")  # WORKBENCH_DATA_DIR (conftest)
    _conversation(store, "here")
    store.close()
    code, out, _ = _cli(capsys, "sessions", "list")
    assert code == 0 and out.splitlines()[1].startswith("here")


def test_opening_a_missing_session_says_how_to_find_one(tmp_path):
    with pytest.raises(SessionNotFound, match="workbench sessions list"):
        SessionStore(tmp_path).open("ghost")


def test_times_are_stored_as_toml_datetimes(tmp_path):
    with SessionStore(tmp_path) as store:
        _conversation(store, turns=1)
    import tomllib

    data = tomllib.loads((tmp_path / "chat.toml").read_text())
    assert isinstance(data["created"], datetime) and data["created"].tzinfo is not None
    assert isinstance(data["messages"][0]["time"], datetime)


def test_unique_names_for_new_sessions(tmp_path):
    with SessionStore(tmp_path) as store:
        assert store.unique_name("My chat: about ../things") == "My chat- about .-things"
        _conversation(store, "chat")
        assert store.unique_name("chat") == "chat-2"
        _conversation(store, "chat-2")
        assert store.unique_name("chat") == "chat-3"
        assert store.unique_name("") == "chat-3"


def test_the_store_imports_neither_the_app_nor_mlx():
    code = ("import sys, sessions, sessions.cache, sessions.store, sessions.export; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'workbench', 'mlx', 'mlx_lm', 'textual', 'rich', 'prompt_toolkit'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
