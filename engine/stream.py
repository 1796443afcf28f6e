"""A one-request event channel from the engine thread to a consumer on any thread.

The engine thread only appends to a deque and, for an asyncio consumer, schedules one
wake-up when the consumer is idle: it never waits on the UI. A consumer takes what arrived
in batches (``batches()``, or ``drain()`` once per frame), so a burst of tokens costs one
wake-up and one repaint, not one per token.

``EventStream[T]`` is typed by what its request gives back: ``result()`` returns that ``T``
(``Result.value``, a ``ModelLoaded``'s info, a ``TurnDone``) or raises ``EngineError`` with
the engine's one line. ``follow`` / ``follow_sync`` are the one way every face reads a
stream: a handler per event type, then the result.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

from common.errors import EngineError

from .events import FINAL_EVENTS, Error

T = TypeVar("T")
Handlers = Mapping[type, Callable[[Any], object]]


class EventStream(Generic[T]):
    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._finished = False
        self._final: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._wake_pending = False
        self.cancel_flag = threading.Event()

    # -- producer side (engine thread) ---------------------------------------------------
    def put(self, event: Any) -> None:
        final = isinstance(event, FINAL_EVENTS)
        with self._cond:
            if self._finished:
                return
            self._items.append(event)
            if final:
                self._finished = True
                self._final = event
            self._cond.notify_all()
            loop = self._loop
            schedule = loop is not None and not self._wake_pending
            if schedule:
                self._wake_pending = True
        if schedule and loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the consumer's loop has closed: nobody is listening
                pass

    def _wake(self) -> None:
        with self._cond:
            self._wake_pending = False
        if self._wakeup is not None:
            self._wakeup.set()

    # -- consumer side -------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the engine to stop this request (between prefill chunks or tokens)."""
        self.cancel_flag.set()

    @property
    def done(self) -> bool:
        """The final event has arrived (it may not have been taken yet)."""
        with self._cond:
            return self._finished

    def drain(self) -> tuple[list[Any], bool]:
        """Everything that arrived since the last drain, without waiting, and whether the
        stream has ended (its final event is then the batch's last)."""
        with self._cond:
            batch = list(self._items)
            self._items.clear()
            return batch, self._finished

    def take(self, timeout: float | None) -> tuple[list[Any], bool]:
        """``drain``, after waiting up to ``timeout`` for something to arrive (a reader on a
        thread of its own that must also look up now and then)."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._finished, timeout)
        return self.drain()

    def __iter__(self) -> Iterator[Any]:
        """Blocking iteration, for scripts: yields every event, the final one last."""
        while True:
            with self._cond:
                while not self._items and not self._finished:
                    self._cond.wait()
            batch, done = self.drain()
            yield from batch
            if done:
                return

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the final event and return it (earlier events are dropped)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished, timeout):
                return Error("timed out waiting for the engine", kind="timeout")
            self._items.clear()
            return self._final

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Asyncio iteration in batches: everything that arrived since the last wake-up."""
        with self._cond:
            self._loop = asyncio.get_running_loop()
            self._wakeup = asyncio.Event()
        wakeup = self._wakeup
        while True:
            wakeup.clear()
            batch, done = self.drain()
            if batch:
                yield batch
            if done:
                return
            if not batch:
                await wakeup.wait()

    async def final(self) -> Any:
        """Await the final event (earlier events are dropped)."""
        last = None
        async for batch in self.batches():
            last = batch[-1]
        return last

    async def result(self) -> T:
        """Await the request's value; an ``Error`` is raised as ``EngineError``."""
        return unwrap(await self.final())

    def result_sync(self, timeout: float | None = None) -> T:
        """Block for the request's value (scripts); an ``Error`` raises ``EngineError``."""
        return unwrap(self.wait(timeout))


def unwrap(final: Any) -> Any:
    """The value a final event carries, or its ``Error`` raised as ``EngineError``."""
    if isinstance(final, Error):
        raise EngineError(final.message, final.kind, **final.details)
    if final is None:
        raise EngineError("the request ended without an answer", "cancelled")
    return final.payload()


def dispatch(handlers: Handlers, event: Any) -> None:
    """Call the handler registered for ``event``'s type (or for one of its bases)."""
    for cls in type(event).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            handler(event)
            return


async def follow(stream: EventStream[T], handlers: Handlers | None = None) -> T:
    """Read ``stream`` to its end on an asyncio loop, handing each event before the final
    one to ``handlers[type(event)]``; return the result or raise ``EngineError``.

    If the awaiting task is cancelled (the app is closing), the request is cancelled too.
    """
    handlers = handlers or {}
    final: Any = None
    try:
        async for batch in stream.batches():
            if batch and isinstance(batch[-1], FINAL_EVENTS):
                final = batch.pop()
            for event in batch:
                dispatch(handlers, event)
    finally:
        if final is None:
            stream.cancel()
    return cast(T, unwrap(final))


def follow_sync(stream: EventStream[T], handlers: Handlers | None = None, *,
                on_interrupt: Callable[[], object] | None = None) -> T:
    """``follow`` for scripts: blocking. With ``on_interrupt``, Ctrl+C calls it (e.g. to
    cancel the request) and reading goes on until the stream ends."""
    handlers = handlers or {}
    final: Any = None
    events = iter(stream)
    while True:
        try:
            for event in events:
                if isinstance(event, FINAL_EVENTS):
                    final = event
                else:
                    dispatch(handlers, event)
            break
        except KeyboardInterrupt:
            if on_interrupt is None:
                stream.cancel()
                raise
            on_interrupt()
            events = iter(stream)
    return cast(T, unwrap(final))
