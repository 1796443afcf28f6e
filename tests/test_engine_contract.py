"""One suite over both engines: what the app relies on holds for the scripted fake
(tests/fake_engine.py, on which the app's tests run) and for the real engine on the demo
llama, so a test that passes on the fake says something about the product.

The contract: both have every member of ``EngineAPI`` with the same parameters; what they
hold is one frozen ``EngineState``; streams end in their final events; a cancel ends a reply
as "cancelled" and the next one works; errors are one line with their kind; every adapter
change is broadcast, swaps inside one request (an evaluation) included, and the adapter
active before is put back and announced; a conversation the context cannot hold is refused.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from common.errors import BadSetting
from engine import (
    AdapterChanged,
    EngineAPI,
    EngineError,
    Error,
    Notice,
    Result,
    SamplingParams,
    TokenText,
    TurnDone,
)
from engine.speculative import DecodingSettings
from tests.fake_engine import FakeEngine, fake_adapter

TIMEOUT = 120
USER = [{"role": "user", "content": "Tell me about the sea"}]


@dataclass
class Subject:
    """An engine under the contract, with the paths of its two adapters."""

    engine: Any
    tone_a: str
    tone_b: str

    def heard(self) -> list[Any]:
        """The adapter states the engine's listeners hear from now on."""
        states: list[Any] = []
        self.engine.subscribe(lambda e: states.append(e.state)
                              if isinstance(e, AdapterChanged) else None)
        return states


Make = Callable[..., Subject]


@pytest.fixture(params=["fake", "real"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """``make(context=None, load=True)``: an engine of the parameter's kind (its context
    capped at ``context`` tokens), with a model loaded unless ``load`` is False; every
    engine made is closed after the test."""
    made: list[Any] = []

    def build(context: int | None = None, load: bool = True) -> Subject:
        if request.param == "fake":
            engine: Any = FakeEngine(adapters=[fake_adapter("tone-a"), fake_adapter("tone-b")],
                                     context_length=context or 4096, tokens_per_s=500)
            model, a, b = "fake-model", "/fake/adapters/tone-a", "/fake/adapters/tone-b"
        else:
            from engine import Engine

            kit = request.getfixturevalue("demo_kit")
            engine = Engine(max_kv_size=context)
            model, a, b = str(kit.llama), str(kit.adapter("tone-a")), str(kit.adapter("tone-b"))
        made.append(engine)
        if load:
            engine.load(model).result_sync(TIMEOUT)
        return Subject(engine, a, b)

    yield build
    for engine in made:
        engine.close()


def path_of(state: Any) -> str | None:
    return state.path if state is not None else None


# -- the face --------------------------------------------------------------------------------

def test_both_engines_have_every_member_of_the_protocol(make: Make) -> None:
    engine = make(load=False).engine
    assert isinstance(engine, EngineAPI)
    members = [n for n in vars(EngineAPI) if not n.startswith("_")]
    assert {"state", "info", "adapter", "decoding", "set_adapter_mode", "adapter_state",
            "with_adapter_swaps", "with_cache", "run_mlx"} <= set(members)
    for name in members:
        proto = inspect.getattr_static(EngineAPI, name)
        have = inspect.getattr_static(type(engine), name, None)
        if isinstance(proto, property):
            assert isinstance(have, property), name
        elif inspect.isfunction(proto):
            want = list(inspect.signature(proto).parameters)[1:]
            assert list(inspect.signature(getattr(engine, name)).parameters) == want, name


def test_the_state_is_one_frozen_snapshot_that_follows_each_change(make: Make) -> None:
    subject = make()
    engine = subject.engine
    state = engine.state
    assert state.info is not None and state.info == engine.info
    assert state.adapter is not None and state.adapter.info is None and not state.busy
    assert state.decoding == DecodingSettings() == engine.decoding
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.info = None

    lookup = DecodingSettings(prompt_lookup=4)
    engine.set_decoding(lookup).result_sync(TIMEOUT)
    assert engine.state.decoding == lookup
    engine.use_adapter(subject.tone_a).result_sync(TIMEOUT)
    engine.set_adapter_mode("fused").result_sync(TIMEOUT)
    now = engine.state
    assert path_of(now.adapter) == subject.tone_a and now.adapter_mode == "fused"
    assert now.adapter == engine.adapter and now.info.adapter == subject.tone_a
    assert state.adapter.info is None  # the old snapshot did not change under its reader


def test_mlx_work_of_its_own_runs_on_the_engine_thread_without_the_core(make: Make) -> None:
    engine = make(load=False).engine

    def where(*args: Any) -> str:
        assert len(args) == 2  # (emit, cancel): no core
        return threading.current_thread().name

    def refuses(_emit: Any, _cancel: Any) -> None:
        raise BadSetting("--size 3 is too small: use 64 or more")

    thread = engine.run_mlx(where).result_sync(TIMEOUT)
    assert thread != threading.current_thread().name
    assert thread == engine.submit(lambda _core, _e, _c: threading.current_thread().name
                                   ).result_sync(TIMEOUT)
    final = engine.run_mlx(refuses).wait(TIMEOUT)
    assert isinstance(final, Error) and final.kind == "bad-setting" and "--size" in final.message


# -- replies ---------------------------------------------------------------------------------

def test_a_reply_streams_text_and_ends_in_turn_done(make: Make) -> None:
    engine = make().engine
    stream = engine.chat(USER, SamplingParams(max_tokens=8))
    events = list(stream)
    done = events[-1]
    assert isinstance(done, TurnDone) and stream.result_sync(TIMEOUT) is done
    assert "".join(e.text for e in events if isinstance(e, TokenText)) == done.text
    assert done.stats.finish_reason in ("stop", "length") and done.stats.generated_tokens > 0
    assert not any(isinstance(e, TurnDone | Result | Error) for e in events[:-1])


def test_a_cancel_ends_the_reply_and_the_queued_ones_and_the_next_reply_works(
        make: Make) -> None:
    engine = make().engine
    stream = engine.chat(USER, SamplingParams(max_tokens=2000), ignore_eos=True)
    queued = engine.chat(USER, SamplingParams(max_tokens=8))
    tokens = 0
    for event in stream:
        if isinstance(event, TokenText):
            tokens += 1
            if tokens == 3:
                engine.cancel()
    done = stream.result_sync(TIMEOUT)
    assert done.stats.finish_reason == "cancelled"
    assert 3 <= done.stats.generated_tokens < 2000 and done.text
    assert queued.result_sync(TIMEOUT).stats.finish_reason == "cancelled"

    # A request cancelled while another holds the engine never starts generating.
    holding = engine.submit(lambda _core, _emit, cancel: cancel.wait(TIMEOUT))
    waiting = engine.chat(USER, SamplingParams(max_tokens=8))
    engine.cancel()
    assert holding.result_sync(TIMEOUT) is True
    held = waiting.result_sync(TIMEOUT)
    assert held.stats.finish_reason == "cancelled" and held.stats.generated_tokens == 0

    again = engine.chat(USER, SamplingParams(max_tokens=8)).result_sync(TIMEOUT)
    assert again.stats.finish_reason in ("stop", "length") and again.text
    assert not engine.busy


def test_errors_are_one_line_with_their_kind_and_change_nothing(make: Make) -> None:
    subject = make()
    engine = subject.engine
    engine.use_adapter(subject.tone_a).result_sync(TIMEOUT)
    for stream, kind in [(engine.use_adapter("/nowhere/adapter"), "adapter"),
                         (engine.set_adapter_mode("sometimes"), "bad-setting"),
                         (engine.set_adapter_scale(7.0), "bad-setting")]:
        final = stream.wait(TIMEOUT)
        assert isinstance(final, Error) and final.kind == kind, final
        assert final.message and "\n" not in final.message
        with pytest.raises(EngineError) as err:
            stream.result_sync(TIMEOUT)
        assert err.value.kind == kind
    assert path_of(engine.adapter) == subject.tone_a and engine.adapter.scale == 1.0

    idle = make(load=False).engine
    final = idle.chat(USER).wait(TIMEOUT)
    assert isinstance(final, Error) and final.kind == "no-model" and "\n" not in final.message
    assert idle.state.info is None and idle.state.adapter is None


def test_a_conversation_the_context_cannot_hold_is_refused_and_a_long_reply_is_cut(
        make: Make) -> None:
    engine = make(context=64).engine
    long_talk = [{"role": "user", "content": " ".join(["the sea is wide and deep"] * 30)}]
    final = engine.chat(long_talk).wait(TIMEOUT)
    assert isinstance(final, Error) and final.kind == "context", final
    assert final.details["limit"] == 64 and final.details["prompt_tokens"] >= 64
    assert "/reset" in final.message and "\n" not in final.message

    stream = engine.chat(USER, SamplingParams(max_tokens=200), ignore_eos=True)
    events = list(stream)
    done = stream.result_sync(TIMEOUT)
    assert done.stats.finish_reason == "context"
    assert done.stats.prompt_tokens + done.stats.generated_tokens <= 64
    assert any(isinstance(e, Notice) and "context" in e.message for e in events)


# -- adapter broadcasts ----------------------------------------------------------------------

def test_every_adapter_change_is_broadcast_before_its_request_ends(make: Make) -> None:
    subject = make()
    engine = subject.engine
    heard = subject.heard()
    engine.use_adapter(subject.tone_a).result_sync(TIMEOUT)
    engine.set_adapter_scale(0.5).result_sync(TIMEOUT)
    engine.use_adapter(subject.tone_b).result_sync(TIMEOUT)
    engine.use_adapter(None).result_sync(TIMEOUT)
    assert [(path_of(s), s.scale) for s in heard] == [
        (subject.tone_a, 1.0), (subject.tone_a, 0.5), (subject.tone_b, 1.0), (None, None)]
    assert heard[-1] == engine.adapter


def test_swaps_inside_one_request_are_announced_and_the_adapter_before_comes_back(
        make: Make) -> None:
    subject = make()
    engine = subject.engine
    engine.use_adapter(subject.tone_b, 0.5).result_sync(TIMEOUT)
    heard = subject.heard()

    def tries(_core: Any, swap: Any, _emit: Any, _cancel: threading.Event) -> str:
        swap(subject.tone_a, None)
        assert path_of(engine.adapter) == subject.tone_a  # Engine.adapter is never stale
        swap(None, None)
        return "tried"

    assert engine.with_adapter_swaps(tries).result_sync(TIMEOUT) == "tried"
    assert [(path_of(s), s.scale) for s in heard] == [
        (subject.tone_a, 1.0), (None, None), (subject.tone_b, 0.5)]
    assert (path_of(engine.adapter), engine.adapter.scale) == (subject.tone_b, 0.5)

    def fails(_core: Any, swap: Any, _emit: Any, _cancel: threading.Event) -> None:
        swap(subject.tone_a, 1.5)
        raise BadSetting("the job failed half way")

    heard.clear()
    final = engine.with_adapter_swaps(fails).wait(TIMEOUT)
    assert isinstance(final, Error) and final.kind == "bad-setting"
    assert [(path_of(s), s.scale) for s in heard] == [(subject.tone_a, 1.5),
                                                      (subject.tone_b, 0.5)]
    assert (path_of(engine.adapter), engine.adapter.scale) == (subject.tone_b, 0.5)


def test_an_evaluation_announces_each_candidate_and_the_restore(demo_kit) -> None:
    """The real evaluation (jobs/evaluate.py) swaps through announced requests: a listener
    hears every candidate, then the adapter active before, and ``Engine.adapter`` is right."""
    from engine import Engine
    from jobs.evaluate import EvalCandidate, evaluate_on_engine

    tone_a, tone_b = str(demo_kit.adapter("tone-a")), str(demo_kit.adapter("tone-b"))
    with Engine() as engine:
        engine.load(str(demo_kit.llama), tone_b).result_sync(TIMEOUT)
        subject = Subject(engine, tone_a, tone_b)
        heard = subject.heard()
        report = evaluate_on_engine(engine, [EvalCandidate("base"),
                                             EvalCandidate("tone-a x0.5", tone_a, 0.5)],
                                    [USER], SamplingParams(max_tokens=4)).result_sync(TIMEOUT)
        assert [c.label for c in report.candidates] == ["base", "tone-a x0.5"]
        assert [(path_of(s), s.scale) for s in heard] == [
            (None, None), (tone_a, 0.5), (tone_b, 1.0)]
        assert (path_of(engine.adapter), engine.adapter.scale) == (tone_b, 1.0)
        assert engine.info is not None and engine.info.adapter == tone_b


# -- what sessions may use of the core -------------------------------------------------------

class _WithoutSubmit:
    """An engine's face with ``submit`` (the whole core) taken away: what sessions get."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        if name == "submit":
            raise AssertionError("sessions reached for the whole core (submit)")
        return getattr(self._engine, name)


def test_a_session_saves_resumes_and_closes_through_the_cache_face_alone(demo_kit, tmp_path
                                                                         ) -> None:
    """Sessions' engine-thread work is typed requests on ``CacheCore`` (``with_cache``): a
    save, a resume and a close work with ``submit`` out of reach, and the resume gives back
    the cache the save wrote."""
    from engine import Engine
    from sessions import SessionStore, submit_autosave, submit_close, submit_resume

    params = SamplingParams(max_tokens=6)
    with Engine() as real, SessionStore(tmp_path / "sessions") as store:
        engine = _WithoutSubmit(real)
        real.load(str(demo_kit.llama)).result_sync(TIMEOUT)
        session = store.new("chat", model=str(demo_kit.llama), sampling=params)
        session.add_user("Tell me about the sea")
        done = real.chat(session.chat_messages(), params).result_sync(TIMEOUT)
        session.add_reply(done.text, done.stats.to_dict())
        saved = submit_autosave(engine, store, session).result_sync(TIMEOUT)
        assert saved.cache.path is not None and saved.cache.tokens > 0

        real.reset().result_sync(TIMEOUT)
        report = submit_resume(engine, store, session).result_sync(TIMEOUT)
        assert report.reused and report.cached_tokens == saved.cache.tokens
        assert report.prefilled_tokens == 0
        closed = submit_close(engine, store, session).result_sync(TIMEOUT)
        assert closed.tokens == saved.cache.tokens
