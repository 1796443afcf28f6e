"""Resuming sessions with the demo model: the saved prompt cache is reused when it is right
and set aside (with a notice, and the same reply) when it is not.

The reference is an uninterrupted conversation: two turns, an autosave after each, then a
third turn in the same process. Resumes run in fresh processes, as a user would resume.
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, ModelLoaded, Notice, Result, SamplingParams, TurnDone
from models.fingerprint import model_fingerprint
from sessions import SessionStore, read_cache_header, submit_autosave, submit_resume

ROOT = Path(__file__).resolve().parents[1]
PARAMS = SamplingParams(max_tokens=16)
SYSTEM = "You answer in one short paragraph."
QUESTIONS = ["What does the import statement do?", "And how are exceptions raised?",
             "Summarise both answers in a sentence."]

_RESUME = """
    import json, sys
    from engine import Engine, Notice, Result, SamplingParams, TurnDone
    from sessions import SessionStore, submit_resume
    folder, name, model, question = sys.argv[1:5]
    with Engine() as engine, SessionStore(folder) as store:
        engine.load(model).wait()
        session = store.open(name, lock=True)
        events = list(submit_resume(engine, store, session))
        report = events[-1]
        assert isinstance(report, Result), report
        rep = report.value
        session.add_user(question)
        done = engine.chat(session.chat_messages(), SamplingParams(max_tokens=16)).wait()
        assert isinstance(done, TurnDone), done
        print(json.dumps({
            "reused": rep.reused, "cached_tokens": rep.cached_tokens,
            "prefilled_tokens": rep.prefilled_tokens, "history_tokens": rep.history_tokens,
            "reason": rep.reason, "set_aside": str(rep.set_aside) if rep.set_aside else None,
            "notices": [e.message for e in events if isinstance(e, Notice)],
            "text": done.text, "stats": done.stats.to_dict()}))
"""


def _resume_in_fresh_process(folder: Path, model: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_RESUME), str(folder), "chat",
                           str(model), QUESTIONS[2]],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _open_engine(model: Path, adapter: Path | None = None) -> Engine:
    engine = Engine()
    loaded = engine.load(str(model), str(adapter) if adapter else None).wait(120)
    assert isinstance(loaded, ModelLoaded), loaded
    return engine


@pytest.fixture(scope="module")
def conversation(demo_kit, tmp_path_factory):
    """Two turns saved after each; the third turn of the same, uninterrupted conversation."""
    folder = tmp_path_factory.mktemp("sessions") / "base"
    engine = _open_engine(demo_kit.llama)
    with engine, SessionStore(folder) as store:
        session = store.new("chat", model=str(demo_kit.llama), system_prompt=SYSTEM,
                            sampling=PARAMS)
        saves = []
        for question in QUESTIONS[:2]:
            session.add_user(question)
            done = engine.chat(session.chat_messages(), PARAMS).wait(120)
            assert isinstance(done, TurnDone), done
            session.add_reply(done.text, done.stats.to_dict())
            # The last save writes the whole file, as closing the session does (autosaves
            # in between append segments: tests/test_sessions_incremental.py).
            saved = submit_autosave(engine, store, session,
                                    whole=question == QUESTIONS[1]).wait(120)
            assert isinstance(saved, Result), saved
            saves.append(saved.value)
        session.add_user(QUESTIONS[2])
        third = engine.chat(session.chat_messages(), PARAMS).wait(120)
        assert isinstance(third, TurnDone), third
    return {"folder": folder, "model": demo_kit.llama, "third": third, "saves": saves}


def _copy(conversation: dict[str, Any], tmp_path: Path) -> Path:
    folder = tmp_path / "sessions"
    shutil.copytree(conversation["folder"], folder)
    return folder


@pytest.mark.slow
def test_resumed_in_a_fresh_process_turn_three_is_the_uninterrupted_reply(conversation,
                                                                           tmp_path):
    folder = _copy(conversation, tmp_path)
    result = _resume_in_fresh_process(folder, conversation["model"])
    third = conversation["third"]
    assert result["reused"] and result["notices"] == [] and result["set_aside"] is None
    assert result["text"] == third.text
    stats = result["stats"]
    # Only what follows the saved conversation is prefilled: exactly as much as the
    # uninterrupted process needed, and no more than the new message past the history.
    assert stats["prefill_tokens"] == third.stats.prefill_tokens
    assert stats["reused_tokens"] == third.stats.reused_tokens == result["cached_tokens"]
    new_message = stats["prompt_tokens"] - result["history_tokens"]
    assert stats["prefill_tokens"] <= new_message + (result["history_tokens"]
                                                     - result["cached_tokens"])
    assert result["prefilled_tokens"] == 0


def _tensor_shapes(path: Path) -> list[list[int]]:
    data = path.read_bytes()
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    return [v["shape"] for k, v in sorted(header.items()) if k != "__metadata__"]


def _head_shapes(path: Path) -> list[tuple[int, ...]]:
    """Each K/V tensor's shape without its token axis."""
    return [(s[0], s[1], s[3]) for s in _tensor_shapes(path) if len(s) == 4]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _delete(path: Path) -> None:
    path.unlink()


@pytest.fixture(scope="module")
def qwen3_cache(conversation, demo_kit, tmp_path_factory) -> Path:
    """The same transcript's prompt cache made by the qwen3 demo model (same shapes)."""
    folder = tmp_path_factory.mktemp("qwen3")
    (folder / "chat.toml").write_bytes((conversation["folder"] / "chat.toml").read_bytes())
    engine = _open_engine(demo_kit.qwen3)
    with engine, SessionStore(folder) as store:
        final = submit_resume(engine, store, store.open("chat")).wait(120)
        assert isinstance(final, Result) and not final.value.reused, final
    return folder / "chat.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("damage, reason", [
    (_truncate, "is truncated"), (_empty, "is empty or truncated"),
    ("other-model", "was made with another model"), (_delete, "is missing")])
def test_a_bad_cache_is_set_aside_and_the_reply_is_still_the_same(conversation, qwen3_cache,
                                                                  tmp_path, damage, reason):
    folder = _copy(conversation, tmp_path)
    cache = folder / "chat.safetensors"
    if damage == "other-model":
        # Same layer kinds and head shapes: only the fingerprint tells them apart.
        assert read_cache_header(cache).classes == read_cache_header(qwen3_cache).classes
        assert _head_shapes(cache) == _head_shapes(qwen3_cache)
        shutil.copyfile(qwen3_cache, cache)
    else:
        damage(cache)
    before = cache.read_bytes() if cache.exists() else None
    result = _resume_in_fresh_process(folder, conversation["model"])
    assert not result["reused"]
    [notice] = result["notices"]
    assert reason in notice and "re-reading the conversation" in notice and "\n" not in notice
    if before is None:
        assert result["set_aside"] is None
    else:
        assert (folder / "chat.safetensors.stale").read_bytes() == before
        assert "set aside as chat.safetensors.stale" in notice
    assert result["prefilled_tokens"] == result["history_tokens"] > 0
    assert result["text"] == conversation["third"].text
    # The rebuilt cache was saved, and the next turn needed only the new message.
    header = read_cache_header(cache)
    assert header.metadata["workbench_fingerprint"] == model_fingerprint(conversation["model"])
    assert result["stats"]["reused_tokens"] == result["history_tokens"]


@pytest.mark.slow
def test_mlx_lm_generate_accepts_a_saved_cache(conversation):
    cache = conversation["folder"] / "chat.safetensors"
    tokens = read_cache_header(cache).tokens
    assert tokens
    proc = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--prompt-cache-file",
                           str(cache), "--prompt", "One more question.", "--max-tokens", "8"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    prompt_line = next(ln for ln in out.splitlines() if ln.startswith("Prompt:"))
    prompt_tokens = int(prompt_line.split()[1])
    assert 0 < prompt_tokens < len(tokens)  # only the new text: the rest came from the file
    assert out.split("==========")[1].strip()  # it wrote something


def test_the_cache_file_holds_exactly_the_used_tokens(conversation):
    cache = conversation["folder"] / "chat.safetensors"
    header = read_cache_header(cache)
    tokens = header.tokens
    assert tokens and len(tokens) == conversation["saves"][-1].cache.tokens
    assert len(tokens) % 256 != 0  # else the test would not show the cut
    key_shapes = [s for s in _tensor_shapes(cache) if len(s) == 4]
    assert key_shapes and all(shape[2] == len(tokens) for shape in key_shapes)
    assert header.metadata["model"] == str(conversation["model"])
    assert json.loads(header.metadata["tokenizer_config"]) == {}
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


def _rewrite_metadata(engine: Engine, path: Path, **changes: str) -> None:
    def job(_core, _emit, _cancel):
        import mlx.core as mx

        loaded: Any = mx.load(str(path), return_metadata=True)
        arrays, meta = loaded
        meta.update({f"0.{k}": v for k, v in changes.items()})
        mx.save_safetensors(str(path), arrays, meta)

    assert isinstance(engine.submit(job).wait(60), Result)


def _resume_here(engine: Engine, folder: Path) -> tuple[Any, list[str]]:
    with SessionStore(folder) as store:
        events = list(submit_resume(engine, store, store.open("chat", lock=True)))
    final = events[-1]
    assert isinstance(final, Result), final
    return final.value, [e.message for e in events if isinstance(e, Notice)]


def test_a_cache_of_another_schema_is_set_aside(conversation, llama_engine, tmp_path):
    folder = _copy(conversation, tmp_path)
    _rewrite_metadata(llama_engine, folder / "chat.safetensors", workbench_schema="99")
    report, notices = _resume_here(llama_engine, folder)
    assert not report.reused and report.reason == "has schema 99, not 1"
    assert len(notices) == 1 and "has schema 99" in notices[0]
    assert (folder / "chat.safetensors.stale").exists()


def test_a_cache_made_without_the_adapter_is_not_used_with_it(conversation, demo_kit,
                                                               tmp_path):
    folder = _copy(conversation, tmp_path)
    with _open_engine(demo_kit.llama, demo_kit.adapter("tone-a")) as engine:
        report, notices = _resume_here(engine, folder)
        assert not report.reused and "was made under another adapter (no adapter, now tone-a"\
            in report.reason
        assert len(notices) == 1
        header = read_cache_header(folder / "chat.safetensors")  # rebuilt under the adapter
        assert header.metadata["workbench_adapter"].startswith("tone-a")
        report, notices = _resume_here(engine, folder)
        assert report.reused and notices == []


def test_an_edited_transcript_reuses_only_the_matching_part(conversation, llama_engine,
                                                             tmp_path):
    folder = _copy(conversation, tmp_path)
    toml = folder / "chat.toml"
    toml.write_text(toml.read_text().replace(QUESTIONS[1], "And how are errors handled?"))
    report, notices = _resume_here(llama_engine, folder)
    assert report.reused and 0 < report.cached_tokens < report.history_tokens
    assert len(notices) == 1 and "agrees with the transcript for" in notices[0]
    with SessionStore(folder) as store:
        session = store.open("chat")
    session.add_user(QUESTIONS[2])
    done = llama_engine.chat(session.chat_messages(), PARAMS).wait(120)
    assert done.stats.reused_tokens == report.cached_tokens
    llama_engine.reset().wait(30)
    fresh = llama_engine.chat(session.chat_messages(), PARAMS).wait(120)
    assert done.text == fresh.text


_KILLED_CACHE_WRITE = """
    import os, sys, time
    from engine import Engine, SamplingParams
    from sessions import SessionStore, submit_autosave, submit_resume
    folder, model = sys.argv[1:3]
    real = os.replace
    def stalled(src, dst, *a, **k):
        if str(dst).endswith(".safetensors"):
            print("STALL", src, flush=True)
            time.sleep(120)
        return real(src, dst, *a, **k)
    with Engine() as engine, SessionStore(folder) as store:
        engine.load(model).wait()
        session = store.open("chat", lock=True)
        submit_resume(engine, store, session).wait()
        session.add_user("A third question, never answered in the cache.")
        done = engine.chat(session.chat_messages(), SamplingParams(max_tokens=8)).wait()
        session.add_reply(done.text)
        os.replace = stalled
        submit_autosave(engine, store, session).wait()
"""


@pytest.mark.slow
def test_a_writer_killed_while_saving_the_cache_leaves_a_resumable_session(conversation,
                                                                          llama_engine,
                                                                          tmp_path):
    folder = _copy(conversation, tmp_path)
    old_cache = (folder / "chat.safetensors").read_bytes()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_CACHE_WRITE),
                              str(folder), str(conversation["model"])], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()
    assert line.startswith("STALL"), child.stderr.read()[-3000:]
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert Path(line.split()[1]).exists()  # killed with the new cache written, not renamed
    assert (folder / "chat.safetensors").read_bytes() == old_cache
    report, notices = _resume_here(llama_engine, folder)  # the transcript has 3 turns now
    assert report.reused and notices == []
    assert report.cached_tokens == len(read_cache_header(folder / "chat.safetensors").tokens
                                       or [])
    assert not list(folder.glob(".chat.safetensors.*"))


def test_a_cancelled_turn_is_saved_and_resumed(llama_engine, tmp_path):
    from engine import TokenText

    with SessionStore(tmp_path) as store:
        session = store.new("chat", system_prompt=SYSTEM)
        session.add_user(QUESTIONS[0])
        done = None
        for event in llama_engine.chat(session.chat_messages(), SamplingParams(max_tokens=400),
                                       ignore_eos=True):
            if isinstance(event, TokenText):
                llama_engine.cancel()
            if isinstance(event, TurnDone):
                done = event
        assert done is not None and done.stats.finish_reason == "cancelled"
        assert 0 < done.stats.generated_tokens < 400
        session.add_reply(done.text, done.stats.to_dict(), cancelled=True)
        saved = submit_autosave(llama_engine, store, session).wait(60)
        assert isinstance(saved, Result) and saved.value.cache.tokens > 0
    reopened = SessionStore(tmp_path).open("chat")
    assert reopened.messages[-1].cancelled and reopened.messages[-1].content == done.text
    report, notices = _resume_here(llama_engine, tmp_path)
    assert report.reused and notices == []
    assert report.cached_tokens == saved.value.cache.tokens
    reopened.add_user(QUESTIONS[1])
    turn = llama_engine.chat(reopened.chat_messages(), PARAMS).wait(120)
    assert isinstance(turn, TurnDone) and turn.stats.reused_tokens == report.cached_tokens
