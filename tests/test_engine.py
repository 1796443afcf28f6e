"""The engine as a script sees it: turns, prefix reuse, cancellation, errors, memory."""

from __future__ import annotations

import asyncio

import pytest

from engine import (
    Engine,
    Error,
    LoadProgress,
    Memory,
    MemoryReading,
    ModelLoaded,
    Notice,
    PrefillProgress,
    Result,
    SamplingParams,
    TokenText,
    TurnDone,
)
from tests.helpers import reference_reply, run_turn

MAX = 24


def test_load_reports_model_facts(engine, demo_kit):
    events = list(engine.load(str(demo_kit.llama)))
    assert [e.stage for e in events if isinstance(e, LoadProgress)][-1] == "ready"
    info = events[-1].info
    assert isinstance(events[-1], ModelLoaded)
    assert info.architecture == "llama"
    assert info.num_parameters > 1_000_000
    assert info.bits_per_weight == 32.0
    assert info.context_length == 4096
    assert info.weight_bytes > 0 and info.is_demo


def test_quantized_model_reports_its_bits(engine, demo_kit):
    info = engine.load(str(demo_kit.qwen3_4bit)).wait(60).info
    assert info.architecture == "qwen3"
    assert 4.0 < info.bits_per_weight < 6.0


def test_three_turns_match_independent_full_prefills(llama_engine, demo_kit):
    messages = [{"role": "system", "content": "You answer briefly."}]
    reused = []
    for question in ("What is a tuple?", "And a list?", "Which is faster?"):
        messages.append({"role": "user", "content": question})
        done = run_turn(llama_engine, messages, max_tokens=MAX)
        assert isinstance(done, TurnDone), done
        assert done.text == reference_reply(demo_kit.llama, messages, MAX)
        reused.append(done.stats.reused_tokens)
        messages.append({"role": "assistant", "content": done.text})
    assert reused[0] == 0
    # Turns 2 and 3 evaluate only what is new: at least the whole previous prompt is reused.
    assert reused[1] > 10 and reused[2] > reused[1]


def test_turn_stats_are_filled(llama_engine):
    events = list(llama_engine.chat([{"role": "user", "content": "hi"}],
                                    SamplingParams(max_tokens=MAX)))
    done = events[-1]
    assert isinstance(done, TurnDone)
    s = done.stats
    assert s.prompt_tokens == s.prefill_tokens + s.reused_tokens
    assert s.generated_tokens > 0 and s.decode_tps > 0 and s.prefill_tps > 0
    assert s.ttft_s > 0 and s.peak_memory > 0 and s.kv_bytes > 0
    assert s.finish_reason in ("stop", "length")
    assert "".join(e.text for e in events if isinstance(e, TokenText)) == done.text
    assert any(isinstance(e, PrefillProgress) for e in events)
    assert any(isinstance(e, Memory) for e in events)


def test_cancel_during_decode_keeps_partial_reply_and_next_turn_is_right(llama_engine,
                                                                          demo_kit):
    messages = [{"role": "user", "content": "Tell me a long story."}]
    stream = llama_engine.chat(messages, SamplingParams(max_tokens=400))
    seen = 0
    for event in stream:
        if isinstance(event, TokenText):
            seen += 1
            if seen == 5:
                llama_engine.cancel()
        if isinstance(event, TurnDone):
            done = event
    assert done.stats.finish_reason == "cancelled"
    assert 5 <= done.stats.generated_tokens < 400
    assert done.text
    messages += [{"role": "assistant", "content": done.text},
                 {"role": "user", "content": "Go on."}]
    nxt = run_turn(llama_engine, messages, max_tokens=MAX)
    assert nxt.text == reference_reply(demo_kit.llama, messages, MAX)
    assert nxt.stats.reused_tokens > 0


def test_cancel_during_prefill_then_next_turn_is_right(demo_kit):
    from pydoc_data import topics

    with Engine(prefill_step_size=32) as engine:
        engine.load(str(demo_kit.llama)).wait(60)
        long_text = topics.topics["if"][:1500]
        messages = [{"role": "user", "content": long_text}]
        stream = engine.chat(messages, SamplingParams(max_tokens=MAX))
        for event in stream:
            if isinstance(event, PrefillProgress) and event.done > 0:
                engine.cancel()
            if isinstance(event, TurnDone):
                done = event
        assert done.stats.finish_reason == "cancelled"
        assert done.stats.generated_tokens == 0
        assert 0 < done.stats.context_tokens < done.stats.prompt_tokens
        # The same message again: the prefix that was prefilled before the cancel is reused.
        again = run_turn(engine, messages, max_tokens=MAX)
        assert again.stats.reused_tokens == done.stats.context_tokens
        assert again.text == reference_reply(demo_kit.llama, messages, MAX)


def test_edited_history_trims_the_cache(llama_engine, demo_kit):
    base = [{"role": "user", "content": "First question here."}]
    first = run_turn(llama_engine, base, max_tokens=MAX)
    edited = [{"role": "user", "content": "First question, edited."}]
    second = run_turn(llama_engine, edited, max_tokens=MAX)
    assert 0 < second.stats.reused_tokens < first.stats.prompt_tokens
    assert second.text == reference_reply(demo_kit.llama, edited, MAX)


def test_context_overflow_is_reported_before_it_happens(demo_kit):
    with Engine(max_kv_size=64) as engine:
        engine.load(str(demo_kit.llama)).wait(60)
        ok = list(engine.chat([{"role": "user", "content": "hi"}],
                              SamplingParams(max_tokens=200)))
        assert any(isinstance(e, Notice) and "context" in e.message for e in ok)
        assert ok[-1].stats.finish_reason == "context"
        assert ok[-1].stats.context_tokens <= 64
        too_long = [{"role": "user", "content": "word " * 200}]
        err = engine.chat(too_long, SamplingParams()).wait(60)
        assert isinstance(err, Error) and err.kind == "context"
        assert "64" in err.message and "\n" not in err.message
        # The engine is still fine afterwards.
        assert isinstance(run_turn(engine, [{"role": "user", "content": "hi"}], max_tokens=4),
                          TurnDone)


def test_model_too_big_is_refused_with_numbers(demo_kit):
    with Engine(memory_probe=lambda: 5_000_000) as engine:
        err = engine.load(str(demo_kit.llama)).wait(60)
        assert isinstance(err, Error) and err.kind == "too-big"
        assert "5 MB" in err.message and "free" in err.message


@pytest.mark.parametrize("case", ["missing", "file", "not-a-model", "offline-repo"])
def test_bad_models_give_one_clear_line(engine, tmp_path, case):
    spec = {
        "missing": str(tmp_path / "nope"),
        "file": str(tmp_path / "file.txt"),
        "not-a-model": str(tmp_path),
        "offline-repo": "someone/not-cached-model",
    }[case]
    (tmp_path / "file.txt").write_text("x")
    err = engine.load(spec).wait(30)
    assert isinstance(err, Error)
    assert err.kind != "internal" and "\n" not in err.message
    assert {"missing": "no such folder", "file": "is a file", "not-a-model": "config.json",
            "offline-repo": "HF_HUB_OFFLINE"}[case] in err.message


def test_chat_before_load_is_a_clear_error(engine):
    err = run_turn(engine, [{"role": "user", "content": "hi"}])
    assert isinstance(err, Error) and err.kind == "no-model"


def test_memory_reading(llama_engine):
    reading = llama_engine.memory().wait(30)
    assert isinstance(reading, Result)
    r = reading.value
    assert r.mlx_active > 0 and r.process_rss > 0 and r.system_available > 0
    assert r.weight_bytes == llama_engine.info.weight_bytes


def test_seeded_sampling_repeats(llama_engine):
    msgs = [{"role": "user", "content": "hi"}]
    a = run_turn(llama_engine, msgs, temperature=1.0, seed=7, max_tokens=MAX)
    llama_engine.reset().wait()
    b = run_turn(llama_engine, msgs, temperature=1.0, seed=7, max_tokens=MAX)
    c = run_turn(llama_engine, msgs, temperature=1.0, seed=8, max_tokens=MAX)
    assert a.text == b.text != c.text


async def test_async_consumer_gets_batched_events(llama_engine):
    stream = llama_engine.chat([{"role": "user", "content": "hi"}],
                               SamplingParams(max_tokens=MAX))
    texts, final = [], None
    async for batch in stream.batches():
        assert batch
        for event in batch:
            if isinstance(event, TokenText):
                texts.append(event.text)
            final = event
    assert isinstance(final, TurnDone) and "".join(texts) == final.text
    assert isinstance(await llama_engine.memory().result(), MemoryReading)
    await asyncio.sleep(0)


def test_switching_models_counts_the_memory_the_old_one_gives_back(demo_kit):
    from models.fit import fit_report

    need = fit_report(demo_kit.qwen3, 0, 4096).need
    free = [10**12]
    with Engine(memory_probe=lambda: free[0]) as engine:
        first = engine.load(str(demo_kit.llama)).wait(60)
        assert isinstance(first, ModelLoaded)
        # Free memory alone is short of what qwen3 needs, but unloading llama covers it.
        free[0] = need - first.info.weight_bytes // 2
        switched = engine.load(str(demo_kit.qwen3)).wait(60)
        assert isinstance(switched, ModelLoaded), switched
        # With nothing to give back, the same shortfall is refused with the numbers.
        free[0] = need - switched.info.weight_bytes * 2
        refused = engine.load(str(demo_kit.llama)).wait(60)
        assert isinstance(refused, Error) and refused.kind == "too-big"
