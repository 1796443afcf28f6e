"""Scripted stand-ins for the training and fuse child jobs (``jobs.runner.TrainJob``,
``jobs.fuse.FuseJob``), for the app's tests, snapshots and docs screenshots.

``FakeJob`` keeps their consumer's side (``start``/``stream``/``cancel``/``done``/``final``)
and says exactly what it is fed (``feed``); ``Jobs`` is the factory the app's training
controller is given (``app.training.train_job = Jobs()``), keeping each job it made.
``curve`` is a plausible run (loss falling, validation every 50 iterations) with fixed
numbers, for pictures that only change when the app does.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from common.errors import WorkbenchError
from engine.events import Result
from jobs.channel import JobStream
from jobs.events import TrainFailed, TrainFinished, TrainProgress, TrainStarted, ValProgress
from jobs.fuse import FuseFailed, FuseFinished

FINALS = (TrainFinished, TrainFailed, FuseFinished, FuseFailed)


class FakeJob:
    """A child job that says what the test feeds it (``feed``) on its ``stream``, as
    ``jobs.channel.ChildJob`` does (the final event as its ``Result``); ``cancel`` ends it
    with ``cancelled``. ``refuse`` makes ``start`` raise, as a failed check does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.config = args[0] if args else None
        self.refuse: str | None = None
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.stream: JobStream[Any] = JobStream(on_cancel=self.cancel)
        self._final: Any = None

    def start(self) -> None:
        if self.refuse:
            raise WorkbenchError(self.refuse)
        self.started.set()

    def feed(self, *events: Any) -> None:
        for event in events:
            if isinstance(event, FINALS):
                if self._final is None:
                    self._final = event
                    self.stream.put(Result(event))
            else:
                self.stream.put(event)

    def cancel(self) -> None:
        self.cancelled.set()
        self.feed(self.cancelled_event())

    def cancelled_event(self) -> Any:
        return TrainFailed("training cancelled", "cancelled")

    @property
    def done(self) -> bool:
        return self._final is not None

    @property
    def final(self) -> Any:
        return self._final


class FakeFuseJob(FakeJob):
    def cancelled_event(self) -> Any:
        return FuseFailed("fuse cancelled", "cancelled")


class Jobs:
    """The factory the controller is given: it keeps every job it made."""

    def __init__(self, kind: type[FakeJob] = FakeJob, refuse: str | None = None,
                 on_start: Any = None) -> None:
        self.kind, self.refuse, self.on_start = kind, refuse, on_start
        self.made: list[FakeJob] = []

    def __call__(self, *args: Any, **kwargs: Any) -> FakeJob:
        job = self.kind(*args, **kwargs)
        job.refuse = self.refuse
        if self.on_start is not None:
            self.on_start(job)
        self.made.append(job)
        return job


def progress(it: int, loss: float, total: int = 100) -> TrainProgress:
    return TrainProgress(iteration=it, train_loss=loss, learning_rate=1e-5,
                         iterations_per_second=2.5, tokens_per_second=1840.0,
                         trained_tokens=it * 300, peak_memory=1_200_000_000,
                         eta_s=(total - it) / 2.5)


def started(path: str, total: int = 100) -> TrainStarted:
    return TrainStarted(adapter_path=path, total_iters=total, train_examples=90,
                        valid_examples=10, trainable_parameters=1_310_720,
                        estimate_bytes=2_000_000_000)


def curve(path: str, upto: int, total: int = 600) -> list[Any]:
    """A run's events up to iteration ``upto``: a report every 10 iterations, a validation
    every 50, the best validation loss tracked as the runner does."""
    events: list[Any] = [started(path, total)]
    best, best_at = math.inf, 0
    for it in range(10, upto + 1, 10):
        loss = 1.05 + 1.9 * math.exp(-it / 110) + 0.08 * math.sin(it / 7.0)
        events.append(progress(it, round(loss, 4), total))
        if it % 50 == 0:
            val = round(1.2 + 1.7 * math.exp(-it / 140) + 0.004 * max(0, it - 350) / 10, 4)
            if val < best:
                best, best_at = val, it
            events.append(ValProgress(it, val, best_at, best))
    return events
