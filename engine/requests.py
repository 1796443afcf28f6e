"""One thread serving requests in order, each answered on its own ``EventStream``.

The plumbing of ``Engine`` (and of the test suite's fake engine, so that both keep the same
semantics): submitting returns at once; the thread runs one job at a time as
``job(emit, cancel)``; its return value (or ``Result(value)``) ends the stream; a
``WorkbenchError`` ends it with one ``Error`` line, anything else with an ``internal`` one,
and the thread keeps serving. ``cancel`` stops the running request and cancels the queued
ones; ``close`` stops the thread after what runs, then calls ``_on_thread_exit`` there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import WorkbenchError

from .events import Error, Result
from .stream import EventStream

Emit = Callable[[Any], None]
Job = Callable[[Emit, threading.Event], Any]


@dataclass
class _Request:
    job: Job
    stream: EventStream[Any]
    wrap: bool  # the job returns a plain value, to be sent as Result(value)


class RequestThread:
    def __init__(self, name: str) -> None:
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._pending: list[EventStream[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _submit(self, job: Job, wrap: bool) -> EventStream[Any]:
        stream: EventStream[Any] = EventStream()
        if self._closed:
            stream.put(Error("the engine has shut down", kind="closed"))
            return stream
        with self._lock:
            self._pending.append(stream)
        self._requests.put(_Request(job, stream, wrap))
        return stream

    def cancel(self) -> None:
        """Stop the running request and cancel the queued ones. Safe from any thread."""
        with self._lock:
            for stream in self._pending:
                stream.cancel()

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def close(self, timeout: float = 120.0) -> None:
        """Cancel what runs, then stop the thread, waiting up to ``timeout`` for it."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._requests.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while (request := self._requests.get()) is not None:
            self._serve(request)
        self._on_thread_exit()

    def _on_thread_exit(self) -> None:
        """Runs last, on the thread (the engine frees its MLX state here)."""

    def _serve(self, request: _Request) -> None:
        stream = request.stream
        try:
            if stream.cancel_flag.is_set() and self._closed:
                stream.put(Error("cancelled: the engine is shutting down", kind="cancelled"))
                return
            value = request.job(stream.put, stream.cancel_flag)
            stream.put(Result(value) if request.wrap else value)
        except WorkbenchError as exc:
            stream.put(Error(str(exc), kind=exc.kind, details=dict(exc.details)))
        except Exception as exc:  # noqa: BLE001 - the engine must outlive any failure
            text = str(exc).strip().splitlines()
            stream.put(Error(f"unexpected {type(exc).__name__}: {text[0] if text else ''}",
                             kind="internal"))
        finally:
            with self._lock:
                if stream in self._pending:
                    self._pending.remove(stream)
