"""The watching of a child-process job from the app: one awaited stream, batched messages.

Training and fusing run in child processes (``jobs.runner.TrainJob``,
``jobs.fuse.FuseJob``, both ``jobs.channel.ChildJob``), never on the engine thread. Each job
is watched by an asyncio worker (``watch``) that starts it in a thread (its checks may take
a while), then awaits its ``stream`` as every engine request is awaited: each batch of what
arrived since the last wake-up is posted as one ``JobEvents`` message, so nothing polls and
the UI thread never waits on the child. Its own module because the training and the fuse
controllers (``training.py``, ``fusing.py``) share it, with the small helpers of their lines
(``first_line``, ``duration``) and of their new folders (``unique_folder``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from textual.message import Message

from common.errors import WorkbenchError
from engine.events import Result
from engine.stream import EventStream
from jobs.channel import unwrapped


class ChildJob(Protocol):
    """What ``TrainJob`` and ``FuseJob`` have in common (and the tests' fakes keep)."""

    @property
    def stream(self) -> EventStream[Any]: ...

    def start(self) -> None: ...

    def cancel(self) -> None: ...


@dataclass
class JobEvents(Message):
    """What a child job said since the last message."""

    kind: str  # "train" | "fuse"
    events: tuple[Any, ...]
    ended: bool  # the job is over: the last of its events is how it ended


async def watch(post: Callable[[Message], Any], kind: str, job: ChildJob,
                refused: Callable[[str, str], Any]) -> None:
    """Start ``job`` and relay its events to ``post`` in batches until it ends (an asyncio
    worker's body). A ``WorkbenchError`` from ``start`` ends it with ``refused(message,
    kind)``; a worker cancelled before the job ended (the app closing) cancels the job."""
    try:
        await asyncio.to_thread(job.start)
    except WorkbenchError as exc:
        post(JobEvents(kind, (refused(first_line(str(exc)), exc.kind),), True))
        return
    except Exception as exc:  # noqa: BLE001 - a bug in the job must not kill the app
        post(JobEvents(kind, (refused(f"{type(exc).__name__}: {exc}", "crashed"),), True))
        return
    ended = False
    try:
        async for batch in job.stream.batches():
            ended = isinstance(batch[-1], Result)
            post(JobEvents(kind, tuple(unwrapped(batch)), ended))
    finally:
        if not ended:
            job.cancel()


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
