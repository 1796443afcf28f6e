"""The watching of a child-process job from the app: one thread worker, batched messages.

Training and fusing run in child processes (``jobs.runner.TrainJob``,
``jobs.fuse.FuseJob``), never on the engine thread. Each job is watched by a thread
worker (``pump``) that starts it (its checks may take a while), polls it without blocking
and posts what it said as one ``JobEvents`` message at most every ``POST_EVERY_S``: the UI
thread never waits on the child, and the curves repaint a few times a second however often
the trainer reports. Its own module because the training and the fuse controllers
(``training.py``, ``fusing.py``) share it, with the small helpers of their lines
(``first_line``, ``duration``) and of their new folders (``unique_folder``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from textual.message import Message

from common.errors import WorkbenchError

POST_EVERY_S = 0.25  # a job's events reach the UI at most four times a second
POLL_S = 0.05  # how often the watching thread asks the child for news
CANCEL_WAIT_S = 10.0  # after a cancel, how long the thread waits for the job to end


class ChildJob(Protocol):
    """What ``TrainJob`` and ``FuseJob`` have in common (and the tests' fakes keep)."""

    def start(self) -> None: ...

    def poll(self) -> list[Any]: ...

    def cancel(self) -> None: ...

    @property
    def done(self) -> bool: ...

    @property
    def final(self) -> Any: ...


@dataclass
class JobEvents(Message):
    """What a child job said since the last message (posted from its watching thread)."""

    kind: str  # "train" | "fuse"
    events: tuple[Any, ...]
    ended: bool  # the job is over: the last of its events is how it ended


def pump(post: Callable[[Message], Any], kind: str, job: ChildJob, cancel: threading.Event,
         refused: Callable[[str, str], Any]) -> None:
    """Start ``job`` and relay its events to ``post`` in batches until it ends (a thread
    worker's body). A ``WorkbenchError`` from ``start`` ends it with ``refused(message,
    kind)``; ``cancel`` set asks the job to stop."""
    try:
        job.start()
    except WorkbenchError as exc:
        post(JobEvents(kind, (refused(first_line(str(exc)), exc.kind),), True))
        return
    except Exception as exc:  # noqa: BLE001 - a bug in the job must not kill the app
        post(JobEvents(kind, (refused(f"{type(exc).__name__}: {exc}", "crashed"),), True))
        return
    pending: list[Any] = []
    seen: set[type] = set()  # the kinds of event polled so far
    last_post = 0.0
    cancelled_at: float | None = None
    while True:
        if cancel.is_set() and cancelled_at is None:
            cancelled_at = time.monotonic()
            try:
                job.cancel()
            except Exception as exc:  # noqa: BLE001
                pending.append(refused(f"could not stop the job: {exc}", "crashed"))
        done = job.done  # before the poll: once done, that poll drains the rest
        polled = job.poll()
        seen.update(type(e) for e in polled)
        pending.extend(polled)
        if done or (cancelled_at is not None
                    and time.monotonic() - cancelled_at > CANCEL_WAIT_S):
            final = job.final
            if final is not None and type(final) not in seen:
                pending.append(final)  # said only through ``final``
            if final is None:
                pending.append(refused("the job stopped without saying how", "crashed"))
            post(JobEvents(kind, tuple(pending), True))
            return
        now = time.monotonic()
        if pending and now - last_post >= POST_EVERY_S:
            post(JobEvents(kind, tuple(pending), False))
            pending, last_post = [], now
        time.sleep(POLL_S)


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def duration(s: float) -> str:
    """``40 s``, ``2 min 40 s``, ``1 h 5 min``: an ETA or a run's length for people."""
    s = max(0, round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def unique_folder(parent: Path, stem: str) -> Path:
    """``parent/stem``, or ``stem-2``, ``stem-3``... the first that does not exist."""
    from sessions import sanitize_name

    stem = sanitize_name(stem, default="adapter")
    target, n = parent / stem, 1
    while target.exists():
        n += 1
        target = parent / f"{stem}-{n}"
    return target
