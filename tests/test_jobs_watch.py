"""The app's watcher of child jobs (``controllers.child_jobs.watch``) over the real channel
(``jobs.channel.ChildJob``, on the tiny child of ``test_jobs_channel.py``), not over a fake:
every event reaches the app in order, the last message ends the job with how it ended, a
refused start is one ended message, and a watcher cancelled mid-job (the app closing) stops
the child.
"""

from __future__ import annotations

import asyncio
from typing import Any

from test_jobs_channel import Done, EchoJob, Failed, Tick

from common.errors import WorkbenchError
from workbench.tui.controllers.child_jobs import JobEvents, watch


def refused(message: str, kind: str) -> Failed:
    return Failed(message, kind)


async def test_the_watcher_relays_every_event_and_ends_with_the_final_one() -> None:
    posted: list[Any] = []
    await watch(posted.append, "test", EchoJob("ticks"), refused)
    assert [e for message in posted for e in message.events] == [Tick(1), Tick(2), Done(True)]
    assert [message.ended for message in posted][-1] is True
    assert not any(message.ended for message in posted[:-1])
    assert {message.kind for message in posted} == {"test"}


async def test_a_refused_start_is_one_ended_message() -> None:
    class Refused(EchoJob):
        def start(self) -> None:
            raise WorkbenchError("no model given: pass --model")

    posted: list[Any] = []
    await watch(posted.append, "test", Refused("ticks"), refused)
    assert posted == [JobEvents("test", (Failed("no model given: pass --model", "error"),),
                                True)]


async def test_a_watcher_cancelled_mid_job_stops_the_child() -> None:
    posted: list[Any] = []
    job = EchoJob("ready")
    task = asyncio.create_task(watch(posted.append, "test", job, refused))
    for _ in range(6000):  # the child says Tick(0) once it runs
        if posted:
            break
        await asyncio.sleep(0.01)
    assert posted and posted[0].events == (Tick(0),)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await asyncio.to_thread(job.wait, 60) == Failed("cancelled", "cancelled")
