"""A saved prompt cache whose tensor bytes were damaged is never used (issue 10 #1).

Every flipped bit in the tensor data of ``NAME.safetensors`` must be caught on resume: the
file is set aside with a notice naming the checksum, and the transcript is read again, so
the next reply is exactly the uninterrupted one.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from common.safetensors_header import read_safetensors_header
from engine import Engine, SamplingParams, TurnDone
from sessions import SessionStore, submit_autosave, submit_resume

PARAMS = SamplingParams(max_tokens=12)
QUESTIONS = ["What does the import statement do?", "And how are exceptions raised?",
             "Summarise both answers."]
FLIPS = 15


@pytest.fixture(scope="module")
def saved(demo_kit, tmp_path_factory):
    """Two turns, saved; the third reply of the uninterrupted conversation."""
    folder = tmp_path_factory.mktemp("sessions")
    with Engine() as engine, SessionStore(folder) as store:
        engine.load(str(demo_kit.llama)).result_sync(120)
        session = store.new("chat", model=str(demo_kit.llama), sampling=PARAMS)
        for question in QUESTIONS[:2]:
            session.add_user(question)
            done = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
            session.add_reply(done.text, done.stats.to_dict())
            submit_autosave(engine, store, session).result_sync(120)
        session.add_user(QUESTIONS[2])
        third = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
    return folder, third


def _flip(path: Path, rng: random.Random) -> int:
    header = read_safetensors_header(path)
    data = bytearray(path.read_bytes())
    at = rng.randrange(header.data_start, header.file_bytes)
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return at


def test_every_payload_bit_flip_is_caught_and_the_reply_stays_exact(saved, demo_kit,
                                                                     tmp_path) -> None:
    folder, third = saved
    rng = random.Random(10)
    caught = 0
    with Engine() as engine:
        engine.load(str(demo_kit.llama)).result_sync(120)
        for i in range(FLIPS):
            copy = tmp_path / f"s{i}"
            shutil.copytree(folder, copy)
            with SessionStore(copy) as store:
                at = _flip(store.cache_path("chat"), rng)
                session = store.open("chat", lock=True)
                report = submit_resume(engine, store, session).result_sync(120)
                if not report.reused and "checksum" in report.reason:
                    caught += 1
                assert report.set_aside is not None, f"flip at byte {at} was not caught"
                if i == 0:  # rebuilt from the transcript: the same reply as without a break
                    session.add_user(QUESTIONS[2])
                    done = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
                    assert isinstance(done, TurnDone) and done.text == third.text
    assert caught == FLIPS


def test_an_intact_cache_is_still_reused(saved, demo_kit, tmp_path) -> None:
    folder, third = saved
    copy = tmp_path / "intact"
    shutil.copytree(folder, copy)
    with Engine() as engine, SessionStore(copy) as store:
        engine.load(str(demo_kit.llama)).result_sync(120)
        session = store.open("chat", lock=True)
        report = submit_resume(engine, store, session).result_sync(120)
        assert report.reused and report.cached_tokens > 0
        session.add_user(QUESTIONS[2])
        done = engine.chat(session.chat_messages(), PARAMS).result_sync(120)
        assert done.text == third.text and done.stats.reused_tokens == report.cached_tokens
