"""The scripted fake engine (tests/fake_engine.py) keeps ``EngineAPI``'s protocol: the same
members and signatures as the real ``Engine``, streams that end in the same final events,
cancel, errors through ``result()``, adapter swaps heard by subscribers, and no MLX."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.errors import BadSetting
from engine import (
    AdapterChanged,
    EngineAPI,
    EngineError,
    LoadProgress,
    Memory,
    ModelChanged,
    Notice,
    PrefillProgress,
    SamplingParams,
    TokenText,
    TurnDone,
    follow,
)
from tests.fake_engine import FAKE_MEMORY, FakeCore, FakeEngine, fake_adapter

ROOT = Path(__file__).resolve().parents[1]
USER = [{"role": "user", "content": "Say hello to me"}]
TIMEOUT = 10


@pytest.fixture
def fake():
    """A fake with two good adapters and a broken one, and a model loaded."""
    eng = FakeEngine(adapters=[fake_adapter("tone-a"), "tone-b",
                               fake_adapter("broken", reason="broken is damaged")])
    eng.load("fake-model").result_sync(TIMEOUT)
    yield eng
    eng.close()


def heard(engine: FakeEngine) -> list[object]:
    """Everything ``engine``'s subscribers will hear from now on."""
    events: list[object] = []
    engine.subscribe(events.append)
    return events


def test_fake_has_every_member_of_the_protocol_with_the_same_signature():
    members = set(EngineAPI.__annotations__) | {
        n for n in vars(EngineAPI) if not n.startswith("_")}
    assert {"info", "adapter", "chat", "load", "submit", "busy", "close"} <= members
    with FakeEngine() as fake:
        for name in members:
            assert hasattr(fake, name), name
            proto = inspect.getattr_static(EngineAPI, name, None)
            if inspect.isfunction(proto):
                want = list(inspect.signature(proto).parameters)
                assert list(inspect.signature(getattr(fake, name)).parameters) == want[1:], name
        assert isinstance(inspect.getattr_static(FakeEngine, "busy"), property)
        assert fake.info is None and fake.adapter is None and not fake.busy


def test_load_streams_stages_then_model_loaded_and_tells_subscribers():
    with FakeEngine(is_demo=True) as fake:
        events = heard(fake)
        stream = fake.load("fake-model")
        got = list(stream)
        assert [e.stage for e in got if isinstance(e, LoadProgress)] == [
            "resolve", "load", "ready"]
        info = stream.result_sync(TIMEOUT)
        assert (info.name, info.is_demo, info.adapter) == ("fake-model", True, None)
        assert fake.info == info
        assert isinstance(events[0], ModelChanged) and events[0].info == info
        assert isinstance(events[1], AdapterChanged) and events[1].swapped is False
        assert events[1].state.info is None and fake.adapter == events[1].state


async def test_a_failing_spec_ends_in_model_not_found_and_the_old_model_stays(fake):
    fake.fail_load("nowhere/else")
    with pytest.raises(EngineError) as err:
        await fake.load("nowhere/else").result()
    assert err.value.kind == "model-not-found"
    assert fake.info is not None and fake.info.name == "fake-model"
    with FakeEngine(missing=["gone"]) as other:
        assert (await follow(other.load("missing"))).name == "missing"
        with pytest.raises(EngineError, match="gone") as err:
            await follow(other.load("gone"))
        assert err.value.kind == "model-not-found"


async def test_a_scripted_reply_streams_word_pieces_and_ends_in_turn_done(fake):
    fake.script("Hello there, friend.", "Again.")
    pieces: list[str] = []
    seen: list[type] = []
    stream = fake.chat(USER, SamplingParams(max_tokens=50))
    done = await follow(stream, {TokenText: lambda e: pieces.append(e.text),
                                 PrefillProgress: lambda e: seen.append(type(e)),
                                 Memory: lambda e: seen.append(type(e))})
    assert isinstance(done, TurnDone)
    assert pieces == ["Hello ", "there, ", "friend."] and done.text == "".join(pieces)
    s = done.stats
    assert (s.prompt_tokens, s.reused_tokens, s.generated_tokens) == (4, 0, 3)
    assert s.finish_reason == "stop" and s.adapter is None and s.adapter_identity == ""
    assert seen[0] is PrefillProgress and Memory in seen
    assert fake.chats[-1].messages == USER and fake.chats[-1].params.max_tokens == 50
    # The next turn reuses the previous prompt and reply (the real prefix reuse).
    history = [*USER, {"role": "assistant", "content": done.text},
               {"role": "user", "content": "once more"}]
    again = await fake.chat(history).result()
    assert again.text == "Again."
    assert (again.stats.prompt_tokens, again.stats.reused_tokens) == (9, 7)
    fake.reply = lambda msgs: msgs[-1]["content"].upper()  # once the script is empty
    assert (await fake.chat(history).result()).text == "ONCE MORE"
    await fake.reset().result()
    assert (await fake.chat(history).result()).stats.reused_tokens == 0


def test_cancel_mid_reply_gives_cancelled_drops_queued_and_the_next_turn_works(fake):
    fake.script("one two three four five")
    fake.pause_after(2)
    running = fake.chat(USER)
    queued = fake.chat(USER)
    assert fake.paused.wait(TIMEOUT) and fake.busy
    fake.cancel()
    first, second = running.result_sync(TIMEOUT), queued.result_sync(TIMEOUT)
    assert (first.text, first.stats.finish_reason) == ("one two ", "cancelled")
    assert (second.stats.generated_tokens, second.stats.finish_reason) == (0, "cancelled")
    deadline = time.monotonic() + TIMEOUT
    while fake.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not fake.busy
    nxt = fake.chat(USER).result_sync(TIMEOUT)
    assert nxt.stats.finish_reason == "stop" and nxt.text == "Hello from the fake engine."
    assert len(fake.chats) == 3


def test_max_tokens_ends_in_length_and_ignore_eos_runs_to_it(fake):
    fake.script("a b c d e", "short")
    done = fake.chat(USER, SamplingParams(max_tokens=2)).result_sync(TIMEOUT)
    assert (done.text, done.stats.finish_reason) == ("a b ", "length")
    long = fake.chat(USER, SamplingParams(max_tokens=5), ignore_eos=True).result_sync(TIMEOUT)
    assert (long.stats.generated_tokens, long.stats.finish_reason) == (5, "length")
    assert fake.chats[-1].ignore_eos


def test_tokens_arrive_asynchronously_at_the_configured_pace(fake):
    fake.tokens_per_s = 100
    fake.script("w " * 10)
    start = time.perf_counter()
    stream = fake.chat(USER)
    assert not stream.done  # chat() returned at once: the fake thread does the work
    done = stream.result_sync(TIMEOUT)
    assert time.perf_counter() - start >= 0.08
    assert done.stats.generated_tokens == 10 and done.stats.decode_tps == 100


async def test_errors_surface_through_result_as_engine_errors_with_their_kind(fake):
    with FakeEngine() as empty:
        with pytest.raises(EngineError) as err:
            await empty.chat(USER).result()
        assert err.value.kind == "no-model"
        with pytest.raises(EngineError) as err:
            await empty.use_adapter("/fake/adapters/tone-a").result()
        assert err.value.kind == "no-model"
    fake.fail_next_turn("the GPU caught fire", kind="internal")
    with pytest.raises(EngineError, match="caught fire") as err:
        await fake.chat(USER).result()
    assert err.value.kind == "internal"
    assert (await fake.chat(USER).result()).stats.finish_reason == "stop"
    small = FakeEngine(context_length=3)
    small.load("m").result_sync(TIMEOUT)
    with pytest.raises(EngineError) as err:
        await small.chat(USER).result()
    assert err.value.kind == "context"
    small.close()
    assert small.chat(USER).wait(TIMEOUT).kind == "closed"


async def test_submit_runs_on_the_fake_thread_with_a_core_that_has_no_model(fake):
    def job(core, emit, cancel):
        emit(LoadProgress("build", "working"))
        return (type(core), core.info, core.loaded, threading.current_thread().name,
                cancel.is_set())

    assert await fake.submit(job).result() == (FakeCore, None, None, "fake-engine", False)

    def refuses(core, _emit, _cancel):
        if core.loaded is None:
            raise BadSetting("needs a real model")

    with pytest.raises(EngineError) as err:
        await fake.submit(refuses).result()
    assert err.value.kind == "bad-setting"
    with pytest.raises(EngineError) as err:
        await fake.submit(lambda core, _e, _c: core.require()).result()
    assert err.value.kind == "no-model"
    # Readings: the system's numbers, with the loaded weights and the active cache's KV.
    reading = await fake.memory().result()
    assert reading.system_available == FAKE_MEMORY.system_available
    assert (reading.weight_bytes, reading.kv_bytes) == (fake.info.weight_bytes, 0)
    done = await fake.chat(USER).result()
    after = await fake.memory().result()
    assert after.kv_bytes == done.stats.kv_bytes > 0
    assert after.mlx_active == after.weight_bytes + after.kv_bytes
    await fake.reset().result()
    assert (await fake.memory().result()).kv_bytes == 0


async def test_adapters_list_check_swap_and_subscribers_hear_it(fake):
    listed = await fake.list_adapters(["/fake/adapters", "/elsewhere"], ["/not/here"]).result()
    # Those in the folders given, by name; then --adapter paths (listed once, even invalid).
    assert [(a.name, a.valid) for a in listed] == [
        ("broken", False), ("tone-a", True), ("tone-b", True), ("here", False)]
    assert listed[1].checked_against == "fake-model" and "damaged" in listed[0].reason
    again = await fake.list_adapters([], ["/fake/adapters/tone-b", "/fake/adapters/tone-b"]
                                     ).result()
    assert [a.name for a in again] == ["tone-b"]
    assert not (await fake.check_adapter("/nope/x").result()).valid
    events = heard(fake)
    state = await fake.use_adapter("/fake/adapters/tone-a", 1.5).result()
    assert (state.name, state.scale, state.lora_scale) == ("tone-a", 1.5, 30.0)
    assert state.identity.startswith("tone-a@") and state.prepare_ms > 0
    assert fake.adapter.identity == state.identity and fake.info.adapter == "/fake/adapters/tone-a"
    assert any(isinstance(e, ModelChanged) and e.info.adapter for e in events)
    assert [e.swapped for e in events if isinstance(e, AdapterChanged)] == [True]
    done = await fake.chat(USER).result()
    assert (done.stats.adapter, done.stats.scale) == ("tone-a", 1.5)
    assert done.stats.adapter_identity == state.identity and done.stats.swap_ms is not None
    # An invalid or unknown adapter fails; the previous one stays active.
    for bad in ("/fake/adapters/broken", "/no/such/adapter"):
        with pytest.raises(EngineError) as err:
            await fake.use_adapter(bad).result()
        assert err.value.kind == "adapter" and fake.adapter.name == "tone-a"
    with pytest.raises(EngineError) as err:
        await fake.set_adapter_scale(2.5).result()
    assert err.value.kind == "bad-setting" and fake.adapter.scale == 1.5
    assert (await fake.set_adapter_scale(0.5).result()).scale == 0.5
    assert fake.adapter.scale == 0.5 and isinstance(events[-1], AdapterChanged)
    base = await fake.use_adapter(None).result()
    assert base.info is None and fake.info.adapter is None and fake.adapter.identity == ""
    again = await fake.use_adapter("/fake/adapters/tone-a").result()
    assert again.prepare_ms == 0 and again.prepared == ("tone-a",)
    await fake.use_adapter(None).result()
    with pytest.raises(EngineError) as err:
        await fake.set_adapter_scale(1).result()
    assert err.value.kind == "adapter"  # no adapter active: no scale to set


def test_load_with_an_adapter_activates_it_or_loads_without_it_with_a_notice(fake):
    info = fake.load("other", "/fake/adapters/tone-b").result_sync(TIMEOUT)
    assert info.adapter == "/fake/adapters/tone-b" and fake.adapter.name == "tone-b"
    # As Engine.load: an adapter that cannot be used does not stop the model.
    stream = fake.load("third", "/fake/adapters/broken")
    notices = [e.message for e in stream if isinstance(e, Notice)]
    info = stream.result_sync(TIMEOUT)
    assert info.name == "third" and info.adapter is None and fake.adapter.info is None
    assert notices == ["third is loaded without the adapter broken: broken is damaged"]


def test_a_spec_that_is_not_a_bare_name_is_resolved_as_engine_load_resolves_it(
        fake, tmp_path):
    """Folders and repo ids go through the real ``models.resolve`` (no MLX): its errors,
    and the folder's own facts once found."""
    with pytest.raises(EngineError, match="no such folder") as err:
        fake.load(str(tmp_path / "nope")).result_sync(TIMEOUT)
    assert err.value.kind == "model-not-found" and fake.info.name == "fake-model"
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "qwen3", "max_position_embeddings": 512, "workbench_demo": {}}))
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    info = fake.load(str(folder)).result_sync(TIMEOUT)
    assert (info.name, info.path, info.architecture) == ("tiny", str(folder.resolve()), "qwen3")
    assert (info.weight_bytes, info.context_length, info.is_demo) == (1000, 512, True)
    with pytest.raises(EngineError) as err:  # offline, and not in the cache
        fake.load("nobody/nothing").result_sync(TIMEOUT)
    assert err.value.kind == "offline" and fake.info.name == "tiny"


def test_the_fake_never_imports_mlx():
    """In a clean interpreter (other test files may import MLX into this one)."""
    code = ("import sys\n"
            "from tests.fake_engine import FakeEngine, fake_adapter\n"
            "with FakeEngine(adapters=[fake_adapter('a')]) as f:\n"
            "    f.load('m').result_sync(10)\n"
            "    f.use_adapter('/fake/adapters/a').result_sync(10)\n"
            "    assert f.chat([{'role': 'user', 'content': 'hi'}]).result_sync(10).text\n"
            "    import json, pathlib, tempfile\n"
            "    d = pathlib.Path(tempfile.mkdtemp()) / 'tiny'\n"
            "    d.mkdir()\n"
            "    (d / 'config.json').write_text(json.dumps({'model_type': 'llama'}))\n"
            "    (d / 'model.safetensors').write_bytes(b'0')\n"
            "    assert f.load(str(d)).result_sync(10).name == 'tiny'\n"
            "assert 'mlx.core' not in sys.modules, 'mlx.core imported'\n"
            "assert 'mlx_lm' not in sys.modules, 'mlx_lm imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr

