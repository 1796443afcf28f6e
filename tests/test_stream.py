"""The typed event stream and the one helper every face reads it with (no MLX here)."""

from __future__ import annotations

import threading

import pytest

from engine import EngineError, Error, Notice, Result, TokenText, follow, follow_sync
from engine.stream import EventStream


def produce(stream: EventStream[int], events: list[object]) -> threading.Thread:
    thread = threading.Thread(target=lambda: [stream.put(e) for e in events])
    thread.start()
    return thread


def test_follow_sync_dispatches_by_type_and_returns_the_value() -> None:
    stream: EventStream[int] = EventStream()
    seen: list[str] = []
    produce(stream, [TokenText("a", 1, 0.0), Notice("careful"), TokenText("b", 2, 0.0),
                     Result(42)]).join()
    value = follow_sync(stream, {TokenText: lambda e: seen.append(e.text),
                                 Notice: lambda e: seen.append(f"!{e.message}")})
    assert value == 42
    assert seen == ["a", "!careful", "b"]


def test_an_error_is_raised_with_its_kind() -> None:
    stream: EventStream[int] = EventStream()
    produce(stream, [Error("no model is loaded yet", kind="no-model")]).join()
    with pytest.raises(EngineError) as caught:
        stream.result_sync(1)
    assert caught.value.kind == "no-model" and str(caught.value) == "no model is loaded yet"


async def test_follow_on_asyncio_and_drain_per_frame() -> None:
    stream: EventStream[str] = EventStream()
    pieces: list[str] = []
    thread = produce(stream, [TokenText(t, i, 0.0) for i, t in enumerate("abc")]
                     + [Result("done")])
    assert await follow(stream, {TokenText: lambda e: pieces.append(e.text)}) == "done"
    thread.join()
    assert pieces == list("abc")
    later: EventStream[str] = EventStream()
    later.put(TokenText("x", 1, 0.0))
    assert later.drain() == ([TokenText("x", 1, 0.0)], False)
    later.put(Result("y"))
    batch, ended = later.drain()
    assert ended and batch == [Result("y")] and later.drain() == ([], True)
