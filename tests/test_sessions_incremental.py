"""Incremental session saves (issue 12): an autosave writes only what the turn added, a
resume from the segments answers exactly as the uninterrupted conversation, a writer killed
at any moment leaves a loadable session, and the whole file mlx-lm reads is still written.

The reference is the uninterrupted conversation in the process that saved it (itself checked
against a fresh mlx-lm run once, ``tests/helpers.reference_reply``).
"""

from __future__ import annotations

import json
import queue
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, Notice, Result, SamplingParams, TurnDone
from sessions import SessionStore, read_cache_header, submit_autosave, submit_close, submit_resume
from sessions.cache_segments import MANIFEST
from tests.helpers import reference_reply

ROOT = Path(__file__).resolve().parents[1]
PARAMS = SamplingParams(max_tokens=12)
SYSTEM = "You answer in one short paragraph."
LONG = ("Here is some background on Python modules, packages and the import system. " * 20)
QUESTIONS = [LONG + "What does the import statement do?", "And how are exceptions raised?",
             "What is a generator?", "Summarise everything in a sentence."]
EDIT = "And what is a context manager?"


def _chat(engine: Engine, session: Any) -> TurnDone:
    done = engine.chat(session.chat_messages(), PARAMS).wait(120)
    assert isinstance(done, TurnDone), done
    return done


def _save(engine: Engine, store: SessionStore, session: Any, whole: bool = False) -> Any:
    saved = submit_autosave(engine, store, session, whole).wait(120)
    assert isinstance(saved, Result), saved
    return saved.value.cache


@pytest.fixture(scope="module")
def eng(demo_kit):
    with Engine() as engine:
        engine.load(str(demo_kit.llama)).result_sync(120)
        yield engine


@pytest.fixture(scope="module")
def saved(eng, demo_kit, tmp_path_factory):
    """Three turns with an autosave after each (a whole file, then two segments); the fourth
    reply of the same uninterrupted conversation; and a divergent branch of it."""
    folder = tmp_path_factory.mktemp("incremental") / "base"
    eng.reset().wait(30)
    with SessionStore(folder) as store:
        session = store.new("chat", model=str(demo_kit.llama), system_prompt=SYSTEM,
                            sampling=PARAMS)
        saves, sizes = [], []
        for question in QUESTIONS[:3]:
            session.add_user(question)
            done = _chat(eng, session)
            session.add_reply(done.text, done.stats.to_dict())
            saves.append(_save(eng, store, session))
            sizes.append(done.stats.context_tokens)
        session.add_user(QUESTIONS[3])
        fourth = _chat(eng, session)
    return {"folder": folder, "saves": saves, "fourth": fourth, "model": demo_kit.llama}


def _copy(saved: dict[str, Any], tmp_path: Path, name: str = "s") -> Path:
    folder = tmp_path / name
    shutil.copytree(saved["folder"], folder)
    return folder


def _resume(engine: Engine, folder: Path) -> tuple[Any, list[str], Any]:
    """Resume ``chat`` in ``folder`` on an engine whose caches were dropped, then answer
    the fourth question: (report, notices, TurnDone)."""
    engine.reset().wait(30)
    with SessionStore(folder) as store:
        session = store.open("chat", lock=True)
        events = list(submit_resume(engine, store, session))
        final = events[-1]
        assert isinstance(final, Result), final
        session.add_user(QUESTIONS[3])
        done = _chat(engine, session)
    return final.value, [e.message for e in events if isinstance(e, Notice)], done


def _manifest(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "chat.cache" / MANIFEST).read_text()))


# -- what an autosave writes ---------------------------------------------------------------
def test_each_autosave_writes_only_the_tokens_its_turn_added(saved):
    first, *rest = saved["saves"]
    assert first.kind == "whole" and first.new_tokens == first.tokens
    per_token = first.bytes / first.tokens  # K/V bytes of one token, all layers
    before = first.tokens
    for save in rest:
        added = save.tokens - before
        assert save.kind == "segment" and save.new_tokens == added > 0
        # The segment holds the new tokens' K/V (plus a small header), not the context.
        assert added * per_token * 0.9 <= save.bytes <= added * per_token + 16 * 1024
        assert save.bytes < 0.5 * save.tokens * per_token
        before = save.tokens
    manifest = _manifest(saved["folder"])
    assert manifest["base"]["tokens"] == first.tokens
    spans = [(s["start"], s["end"]) for s in manifest["segments"]]
    assert spans == [(a.tokens, b.tokens) for a, b in zip(saved["saves"], rest, strict=False)]
    # The whole file was written once: the first save.
    assert read_cache_header(saved["folder"] / "chat.safetensors").tokens is not None
    assert len(read_cache_header(saved["folder"] / "chat.safetensors").tokens or []) \
        == first.tokens


def test_resume_from_segments_gives_the_uninterrupted_reply(saved, eng, tmp_path):
    folder = _copy(saved, tmp_path)
    report, notices, done = _resume(eng, folder)
    fourth = saved["fourth"]
    assert report.reused and notices == [] and report.prefilled_tokens == 0
    assert report.cached_tokens == saved["saves"][-1].tokens <= report.history_tokens
    assert done.text == fourth.text
    assert done.stats.reused_tokens == fourth.stats.reused_tokens
    assert done.stats.prefill_tokens == fourth.stats.prefill_tokens
    with SessionStore(folder) as store:
        session = store.open("chat")
    session.add_user(QUESTIONS[3])
    assert reference_reply(saved["model"], session.chat_messages(),
                           PARAMS.max_tokens or 12) == fourth.text


def test_a_divergent_branch_drops_the_later_segments_and_resumes_exactly(saved, eng,
                                                                         tmp_path):
    folder = _copy(saved, tmp_path)
    report, _notices, _done = _resume(eng, folder)
    assert report.reused
    with SessionStore(folder) as store:
        session = store.open("chat", lock=True)
        before = _manifest(folder)["segments"]
        session.fork(2)  # edit the second question: a new branch from there
        session.add_user(EDIT)
        done = _chat(eng, session)
        session.add_reply(done.text, done.stats.to_dict())
        save = _save(eng, store, session)
        assert save.kind == "segment"
        after = _manifest(folder)["segments"]
        # The first turn's base stays; the old segments (after the edit) are gone from the
        # manifest and the folder; one new segment starts where the branches part.
        assert len(after) == 1 and after[0]["start"] == before[0]["start"]
        assert save.new_tokens == save.tokens - after[0]["start"] < save.tokens
        names = {p.name for p in (folder / "chat.cache").glob("seg-*")}
        assert names == {after[0]["file"]}
        session.add_user(QUESTIONS[3])
        uninterrupted = _chat(eng, session)
    report, notices, resumed = _resume(eng, folder)
    assert report.reused and notices == [] and report.cached_tokens == save.tokens
    assert resumed.text == uninterrupted.text


# -- damage: the longest valid prefix, the rest from the transcript ------------------------
def _last_segment(folder: Path) -> Path:
    return folder / "chat.cache" / _manifest(folder)["segments"][-1]["file"]


def _truncate_last(folder: Path) -> None:
    path = _last_segment(folder)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last(folder: Path) -> None:
    path = _last_segment(folder)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10
    path.write_bytes(bytes(data))


def _delete_last(folder: Path) -> None:
    _last_segment(folder).unlink()


def _garbage_manifest(folder: Path) -> None:
    (folder / "chat.cache" / MANIFEST).write_text("{not json")


def _stale_temps(folder: Path) -> None:
    cache = folder / "chat.cache"
    (cache / f".{MANIFEST}.abc123.tmp").write_text('{"half a manif')
    (cache / ".seg-00000000-00000009-deadbeef.safetensors.x.tmp.safetensors").write_bytes(
        b"torn")
    shutil.copyfile(_last_segment(folder), cache / "seg-00000000-00000001-0badc0de.safetensors")


@pytest.mark.parametrize("damage, notice", [
    (_truncate_last, "is truncated"), (_flip_last, "does not match its checksum"),
    (_delete_last, "that is missing"), (_garbage_manifest, "damaged segment manifest"),
    (_stale_temps, None)])
def test_a_damaged_chain_resumes_from_its_valid_prefix_with_the_same_reply(saved, eng,
                                                                           tmp_path, damage,
                                                                           notice):
    folder = _copy(saved, tmp_path)
    damage(folder)
    report, notices, done = _resume(eng, folder)
    assert report.reused and done.text == saved["fourth"].text
    if notice is None:
        assert notices == [] and report.prefilled_tokens == 0
    else:
        [line] = notices
        assert notice in line and "re-reading the other" in line and "\n" not in line
        assert report.prefilled_tokens == report.history_tokens - report.cached_tokens > 0
    # The resume repaired the saved chain: a second resume needs nothing from the transcript.
    report, notices, done = _resume(eng, folder)
    assert report.reused and notices == [] and report.prefilled_tokens == 0
    assert done.text == saved["fourth"].text
    leftovers = [p.name for p in (folder / "chat.cache").iterdir()
                 if "tmp" in p.name or p.name.startswith("seg-00000000-00000001")]
    assert notice is not None or leftovers  # resuming reads only; the next save cleans up


def test_a_save_cleans_up_what_a_killed_writer_left(saved, eng, tmp_path):
    folder = _copy(saved, tmp_path)
    _stale_temps(folder)
    _resume(eng, folder)
    with SessionStore(folder) as store:
        session = store.open("chat", lock=True)
        session.add_user(QUESTIONS[3])
        done = _chat(eng, session)
        session.add_reply(done.text)
        _save(eng, store, session)
    names = sorted(p.name for p in (folder / "chat.cache").iterdir())
    listed = {s["file"] for s in _manifest(folder)["segments"]}
    assert names == sorted({MANIFEST, ".workbench-cache", *listed})
    # The segments go with the session when it is renamed or deleted.
    with SessionStore(folder) as store:
        store.rename("chat", "talk")
        assert (folder / "talk.cache" / MANIFEST).is_file()
        assert not (folder / "chat.cache").exists()
        assert store.summary("talk").cache_bytes > (folder / "talk.safetensors").stat().st_size
        store.delete("talk")
    assert sorted(p.name for p in folder.iterdir()) == []


def test_a_folder_the_workbench_did_not_make_is_left_alone(saved, eng, tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "chat.toml").write_bytes((saved["folder"] / "chat.toml").read_bytes())
    theirs = folder / "chat.cache"
    theirs.mkdir()
    (theirs / "seg-00000000-00000001-0badc0de.safetensors").write_bytes(b"not ours")
    (theirs / MANIFEST).write_text("{}")
    report, _notices, done = _resume(eng, folder)  # rebuilt from the transcript
    assert not report.reused and done.text == saved["fourth"].text
    with SessionStore(folder) as store:
        session = store.open("chat", lock=True)
        session.add_user(QUESTIONS[3])
        session.add_reply(done.text)
        save = _save(eng, store, session)
        assert save.kind == "whole"  # the folder is not ours: the whole file instead
        assert sorted(p.name for p in theirs.iterdir()) == [
            MANIFEST, "seg-00000000-00000001-0badc0de.safetensors"]
        store.delete("chat")
    assert theirs.is_dir() and (theirs / MANIFEST).read_text() == "{}"


# -- quantized K/V -------------------------------------------------------------------------
def _quantize_live_cache(core: Any, _emit: Any, _cancel: Any) -> int:
    snap = core.snapshot()
    core.restore([layer.to_quantized(group_size=64, bits=8) for layer in snap.cache],
                 list(snap.tokens))
    return len(snap.tokens)


def test_quantized_kv_caches_are_saved_in_segments_and_resume_exactly(eng, demo_kit,
                                                                      tmp_path):
    eng.reset().wait(30)
    with SessionStore(tmp_path / "q") as store:
        session = store.new("chat", system_prompt=SYSTEM, sampling=PARAMS)
        kinds = []
        for i, question in enumerate(QUESTIONS[:3]):
            session.add_user(question)
            done = _chat(eng, session)
            session.add_reply(done.text, done.stats.to_dict())
            if i == 0:
                assert eng.submit(_quantize_live_cache).result_sync(60) > 0
            kinds.append(_save(eng, store, session).kind)
        assert kinds == ["whole", "segment", "segment"]
        header = read_cache_header(store.cache_path("chat"))
        assert set(header.classes) == {"QuantizedKVCache"}
        session.add_user(QUESTIONS[3])
        uninterrupted = _chat(eng, session)
    report, notices, done = _resume(eng, tmp_path / "q")
    assert report.reused and notices == [] and report.prefilled_tokens == 0
    assert done.text == uninterrupted.text


# -- the whole file on close, for mlx_lm generate ------------------------------------------
@pytest.mark.slow
def test_close_writes_the_whole_file_that_mlx_lm_generate_reads(saved, eng, tmp_path):
    folder = _copy(saved, tmp_path)
    _resume(eng, folder)
    with SessionStore(folder) as store:
        session = store.open("chat", lock=True)
        closed = submit_close(eng, store, session).result_sync(120)
        assert closed.kind == "whole" and closed.tokens >= saved["saves"][-1].tokens
        again = submit_close(eng, store, session).result_sync(120)
        assert again.kind == "none" and again.bytes == 0  # nothing new: nothing written
    cache = folder / "chat.safetensors"
    assert len(read_cache_header(cache).tokens or []) == closed.tokens
    manifest = _manifest(folder)
    assert manifest["segments"] == [] and manifest["base"]["tokens"] == closed.tokens
    assert not list((folder / "chat.cache").glob("seg-*"))
    proc = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model",
                           str(saved["model"]), "--prompt-cache-file", str(cache),
                           "--prompt", "One more question.", "--max-tokens", "4"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "==========" in proc.stdout


# -- a writer killed at random moments -----------------------------------------------------
# Each round spawns a fresh writer process (no fork of a process that has imported MLX: a
# forked writer could hang before it started), lets it save, and SIGKILLs it.
_WRITER = """
    import sys
    from engine import Engine, SamplingParams
    from sessions import SessionStore, submit_autosave, submit_resume
    folder, model = sys.argv[1:3]
    params = SamplingParams(max_tokens=3)
    with Engine() as engine, SessionStore(folder) as store:
        engine.load(model).result_sync()
        session = store.open("chat", lock=True)
        submit_resume(engine, store, session).result_sync()
        print("READY", flush=True)
        for i in range(1000):
            if i % 3 == 2:  # now and then a divergence: the last reply is regenerated
                session.pop()
                session.pop()
            session.add_user(f"Question number {i}: tell me more.")
            done = engine.chat(session.chat_messages(), params).result_sync()
            session.add_reply(done.text)
            print("SAVING", i, flush=True)
            submit_autosave(engine, store, session).result_sync()
            print("SAVED", i, flush=True)
"""
KILLS = 20


class _Lines:
    """A writer's output lines, read on a thread, so that a wait can time out."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")

    def next(self, timeout: float = 120.0) -> str:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return ""


def _one_writer_killed(folder: Path, model: Path, rng: random.Random, aim: bool) -> str:
    """Start a writer, SIGKILL it after a random delay (``aim``: a few ms after it begins a
    save); returns the last thing it said before it died."""
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(folder),
                               str(model)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        lines = _Lines(writer.stdout)
        last = lines.next()
        assert last.startswith("READY"), f"the writer did not start: {last!r}"
        if aim:
            want = rng.randrange(3)
            while not (last.startswith("SAVING") and int(last.split()[1]) >= want):
                line = lines.next()
                assert line, "the writer ended early or hung"
                last = line
            time.sleep(rng.uniform(0.0, 0.015))
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        while line := lines.next(timeout=5):  # what it said before the signal landed
            last = line
        return last
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_writer_killed_at_random_moments_always_leaves_a_loadable_session(saved, eng,
                                                                          tmp_path):
    folder = _copy(saved, tmp_path)
    rng = random.Random(12)
    mid_save = 0
    for round_no in range(KILLS):
        last = _one_writer_killed(folder, saved["model"], rng, aim=round_no % 2 == 1)
        mid_save += last.startswith("SAVING")
        _check_resumable(eng, folder, round_no, answer=round_no % 10 == 9)
    assert mid_save >= 4, mid_save  # a good share of the kills landed inside a save


def _check_resumable(eng: Engine, folder: Path, round_no: int, answer: bool) -> None:
    """The session loads: the chain's valid prefix; what the cache lacks comes from the
    transcript (now, with a notice, when a segment was lost; else with the next message, as
    after a save that wrote the transcript and was killed before the cache)."""
    eng.reset().wait(30)
    with SessionStore(folder) as store:
        session = store.open("chat", lock=True)
        events = list(submit_resume(eng, store, session))
    final = events[-1]
    assert isinstance(final, Result), (round_no, final)
    report = final.value
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert report.reused and report.cached_tokens > 0, (round_no, report)
    assert report.cached_tokens + report.prefilled_tokens <= report.history_tokens
    assert len(notices) <= 1 and all("\n" not in n for n in notices)
    assert notices or report.prefilled_tokens == 0, (round_no, report)
    if answer:  # and it answers as a fresh run of the whole transcript does
        session.add_user(QUESTIONS[3])
        done = _chat(eng, session)
        eng.reset().wait(30)
        fresh = _chat(eng, session)
        assert done.text == fresh.text, round_no


# -- layers that cannot be cut: the whole file, as before ----------------------------------
def test_a_sliding_window_model_saves_the_whole_file_and_resumes_exactly(tmp_path):
    from models.demo import DemoSpec, build_model

    spec = DemoSpec(name="sliding", model_type="llama", seed=3, extra={
        "layer_types": ["sliding_attention", "full_attention"] * 2, "sliding_window": 24})
    with Engine() as engine:
        model = engine.submit(lambda _c, _e, _x: build_model(tmp_path / "model", spec)
                              ).result_sync(120)
        engine.load(str(model)).result_sync(120)
        with SessionStore(tmp_path / "s") as store:
            session = store.new("chat", system_prompt=SYSTEM, sampling=PARAMS)
            kinds = []
            for question in QUESTIONS[1:3]:
                session.add_user(question)
                done = _chat(engine, session)
                session.add_reply(done.text, done.stats.to_dict())
                kinds.append(_save(engine, store, session).kind)
            assert kinds == ["whole", "whole"]
            assert not store.segments_path("chat").exists()
            session.add_user(QUESTIONS[3])
            uninterrupted = _chat(engine, session)
        report, notices, done = _resume(engine, tmp_path / "s")
        assert report.reused and notices == [] and done.text == uninterrupted.text


# -- the plan and the manifest, without MLX ------------------------------------------------
def _manifest_of(*spans: tuple[int, int], base: int = 10) -> Any:
    from sessions.cache_segments import Manifest, Segment

    return Manifest("fp1:x", "", ("KVCache",), (None,), "xxh3-64:0", base, tuple(
        Segment(f"seg-{a:08d}-{b:08d}-0000000{i}.safetensors", a, b, "xxh3-64:0")
        for i, (a, b) in enumerate(spans)))


def test_the_plan_keeps_what_agrees_and_rewrites_from_the_last_kept_segment():
    from sessions.cache_segments import plan

    manifest = _manifest_of((10, 20), (20, 30))
    saved = list(range(30))
    new, at = plan(manifest, saved, [*saved, 99, 98])  # a turn added two tokens
    assert new.segments == manifest.segments and at == 30
    new, at = plan(manifest, saved, [*saved[:25], 7, 7])  # parts inside the second segment
    assert [s.end for s in new.segments] == [20] and at == 20
    new, at = plan(manifest, saved, [*saved[:20], 7])  # parts at a boundary
    assert [s.end for s in new.segments] == [20] and at == 20
    new, at = plan(manifest, saved, [*saved[:4], 7])  # parts inside the base
    assert new.segments == () and new.base_tokens == 4 and at == 4
    new, at = plan(manifest, saved, saved[:20])  # cut back to a boundary: nothing to write
    assert new.total == 20 and at == 20


@pytest.mark.parametrize("change", [
    lambda d: d.update(schema=99), lambda d: d.update(kind="other"),
    lambda d: d["segments"][0].update(start=11), lambda d: d["segments"][0].update(
        file="../../etc/passwd"), lambda d: d["base"].update(tokens=-1),
    lambda d: d.update(quant=[])])
def test_a_manifest_that_does_not_add_up_is_refused(change):
    from sessions.cache_segments import Manifest, SegmentsUnusable

    data = json.loads(_manifest_of((10, 20)).to_json())
    change(data)
    with pytest.raises(SegmentsUnusable):
        Manifest.from_json(json.dumps(data).encode())
    assert Manifest.from_json(_manifest_of((10, 20)).to_json()) == _manifest_of((10, 20))


@pytest.mark.slow
def test_line_mode_autosaves_segments_and_writes_the_whole_file_on_quit(demo_kit, tmp_path):
    folder = tmp_path / "sessions"
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--model",
         str(demo_kit.llama), "--max-tokens", "8", "--session", "talk", "--sessions-dir",
         str(folder)], input="hi\nmore please\nand again\n/quit\n", capture_output=True,
        text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    header = read_cache_header(folder / "talk.safetensors")
    manifest = json.loads((folder / "talk.cache" / MANIFEST).read_text())
    # The turns after the first were appended as segments (the folder exists); quitting
    # wrote them into the whole file and the chain starts again from it.
    assert manifest["segments"] == [] and manifest["base"]["tokens"] == len(header.tokens or [])
    assert manifest["base"]["digest"] == header.metadata["workbench_digest"]
    assert not list((folder / "talk.cache").glob("seg-*"))
