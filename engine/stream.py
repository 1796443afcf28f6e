"""A one-request event channel from the engine thread to a consumer on any thread.

The engine thread only appends to a deque and, for an asyncio consumer, schedules one
wake-up when the consumer is idle: it never waits on the UI. The consumer takes events in
batches, so a burst of tokens costs one wake-up and one repaint, not one per token.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .events import FINAL_EVENTS, Error


class EventStream:
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
    def _drain(self) -> tuple[list[Any], bool]:
        with self._cond:
            batch = list(self._items)
            self._items.clear()
            return batch, self._finished and not self._items

    def __iter__(self) -> Iterator[Any]:
        """Blocking iteration, for scripts: yields every event, the final one last."""
        while True:
            with self._cond:
                while not self._items and not self._finished:
                    self._cond.wait()
            batch, done = self._drain()
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
            batch, done = self._drain()
            if batch:
                yield batch
            if done:
                return
            if not batch:
                await wakeup.wait()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for batch in self.batches():
            for event in batch:
                yield event

    async def result(self) -> Any:
        """Await the final event (earlier events are dropped)."""
        final = None
        async for batch in self.batches():
            final = batch[-1]
        return final
