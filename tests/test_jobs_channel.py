"""The jobs' one child-process channel (``jobs.channel``): its codec, its cancel policy and
its out-of-memory rule, on a tiny child of its own (this file, run as
``python -m tests.test_jobs_channel MODE``), so no MLX is needed.

What a user notices: a child that says something this workbench cannot read ends the job
with one line naming it (not a silent drop and a job that never ends); Cancel never freezes
the app (it returns at once, the child is killed later if it will not stop); a child that
ran out of memory is said to have, whichever job it was.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytest

from jobs import channel
from jobs.channel import ChildJob, Codec, Ended, ProtocolError, event_writer, out_of_memory
from jobs.events import CODEC as TRAIN_CODEC
from jobs.events import TrainNotice
from jobs.fuse_events import CODEC as FUSE_CODEC
from jobs.fuse_events import FuseProgress


@dataclass(frozen=True, slots=True)
class Tick:
    n: int


@dataclass(frozen=True, slots=True)
class Done:
    ok: bool


@dataclass(frozen=True, slots=True)
class Failed:
    message: str
    kind: str


@dataclass(frozen=True, slots=True)
class Bogus:
    """An event only the child knows (a child newer than its parent)."""


CODEC = Codec("test", 1, Tick, Done, Failed)
CHILD_CODEC = Codec("test", 1, Tick, Done, Failed, Bogus)


# -- the codec ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec,event", [(TRAIN_CODEC, TrainNotice("hi")),
                                         (FUSE_CODEC, FuseProgress("load", "loading", 1, 2))])
def test_the_jobs_events_round_trip_through_the_one_codec(codec: Codec, event: Any) -> None:
    assert codec.decode(codec.encode(event)) == event


@pytest.mark.parametrize("line,says", [
    ('{"v": 1, "event": "Bogus"}', "unknown test event 'Bogus'"),
    ('{"v": 1, "event": "Tick", "n": 1, "extra": 2}', "Tick has unknown field extra"),
    ('{"v": 1, "event": "Failed", "message": "x"}', "Failed is missing a field"),
    ('{"v": 2, "event": "Tick", "n": 1}', "protocol version 2; this workbench reads version 1"),
    ('{"event": "Tick", "n": 1}', "protocol version None"),
    ("Traceback (most recent call last):", "not a test event: 'Traceback"),
    ("[1, 2]", "not a test event"),
])
def test_a_line_the_codec_cannot_read_raises_and_says_why(line: str, says: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        CODEC.decode(line)
    assert says in str(exc.value)
    assert exc.value.kind == "crashed"


def test_the_codec_refuses_to_send_an_event_of_another_protocol() -> None:
    with pytest.raises(ProtocolError, match="TrainNotice is not a test event"):
        CODEC.encode(TrainNotice("x"))


# -- the out-of-memory rule -----------------------------------------------------------------

def test_one_out_of_memory_rule() -> None:
    assert out_of_memory(MemoryError())
    assert out_of_memory(RuntimeError("[metal::malloc] Unable to allocate 8589934592 bytes"))
    assert out_of_memory(None, ("libc++abi: terminating: std::bad_alloc",))
    assert not out_of_memory(RuntimeError("shape mismatch"), ("Traceback", "ValueError: x"))


# -- a child job of this file's own -----------------------------------------------------------

class EchoJob(ChildJob[Any]):
    codec = CODEC
    finals = (Done, Failed)
    what = "the test process"

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def start(self) -> None:
        self._spawn("tests.test_jobs_channel", [self.mode])

    def _conclude(self, child_final: Any, ended: Ended) -> Any:
        if ended.cancelled:
            return Failed("cancelled", "cancelled")
        if child_final is not None and ended.protocol_error is None:
            return child_final
        return Failed(*self.crash_line(ended, "nothing was kept", "close other programs"))

    def _failed(self, message: str, kind: str) -> Any:
        return Failed(message, kind)


def run(mode: str) -> tuple[list[Any], EchoJob]:
    job = EchoJob(mode)
    job.start()
    return list(job.events(timeout=60)), job


def test_a_child_job_reports_its_events_and_how_it_ended() -> None:
    events, job = run("ticks")
    assert events == [Tick(1), Tick(2), Done(True)]
    assert job.done and job.final == Done(True) and job.poll() == []


def test_an_event_the_parent_cannot_read_ends_the_job_in_one_line() -> None:
    events, job = run("unknown")
    assert events[0] == Tick(1)
    final = events[-1]
    assert isinstance(final, Failed) and final.kind == "crashed", final
    assert "the test process sent what this workbench cannot read" in final.message
    assert "unknown test event 'Bogus'" in final.message and "\n" not in final.message
    assert job.wait(60) == final  # the child (which would sleep on) was stopped


def test_a_child_out_of_memory_is_said_to_be() -> None:
    events, _job = run("oom")
    assert events[-1] == Failed("the test process ran out of memory: close other programs "
                                "(nothing was kept)", "memory")


def test_a_child_killed_by_sigkill_is_a_crash_that_names_memory_as_a_cause() -> None:
    events, _job = run("sigkill")
    final = events[-1]
    assert final.kind == "crashed" and "killed by SIGKILL" in final.message
    assert "may have run out of memory: close other programs" in final.message


def test_a_child_that_fails_on_its_own_says_its_last_line() -> None:
    events, _job = run("exit3")
    assert events[-1] == Failed("the test process ended with exit code 3 (RuntimeError: "
                                "broken): nothing was kept", "crashed")


# -- the cancel policy ----------------------------------------------------------------------

def started(job: EchoJob) -> list[Any]:
    seen: list[Any] = []
    for event in job.events(timeout=60):
        seen.append(event)
        if event == Tick(0):
            break
    return seen


def test_cancel_sends_sigterm_and_returns_without_waiting(monkeypatch) -> None:
    monkeypatch.setattr(channel, "CANCEL_GRACE_S", 600.0)  # no kill within this test
    job = EchoJob("stubborn")
    job.start()
    assert started(job) == [Tick(0)]
    job.cancel()  # the child ignores SIGTERM: a blocking cancel would hang here
    assert next(job.events(timeout=60)) == Tick(-signal.SIGTERM)  # it got the signal
    assert not job.done
    assert job.pid is not None
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait(60) == Failed("cancelled", "cancelled")


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(monkeypatch) -> None:
    monkeypatch.setattr(channel, "CANCEL_GRACE_S", 0.2)
    job = EchoJob("stubborn")
    job.start()
    started(job)
    job.cancel()
    assert job.wait(60) == Failed("cancelled", "cancelled")
    assert job.stream.done


def test_a_cancel_before_the_child_starts_stops_it_as_soon_as_it_does() -> None:
    job = EchoJob("sleep")
    job.cancel()
    job.start()
    assert job.wait(60) == Failed("cancelled", "cancelled")


def test_cancelling_the_stream_cancels_the_job() -> None:
    job = EchoJob("sleep")
    job.start()
    job.stream.cancel()  # what ``follow`` does when the app closes mid-job
    assert job.wait(60) == Failed("cancelled", "cancelled")


# -- the child ------------------------------------------------------------------------------

def _child(mode: str) -> int:
    emit = event_writer(CHILD_CODEC)
    if mode == "ticks":
        emit(Tick(1))
        emit(Tick(2))
        emit(Done(True))
    elif mode == "unknown":
        emit(Tick(1))
        emit(Bogus())
        time.sleep(120)
    elif mode == "oom":
        print("libc++abi: terminating due to uncaught exception of type std::bad_alloc",
              file=sys.stderr, flush=True)
        return 134
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "exit3":
        print("RuntimeError: broken", file=sys.stderr, flush=True)
        return 3
    elif mode == "stubborn":
        got: list[int] = []  # the handler only notes it: writing there could re-enter emit
        signal.signal(signal.SIGTERM, lambda signum, _frame: got.append(signum))
        emit(Tick(0))
        while True:
            if got:
                emit(Tick(-got.pop()))
            time.sleep(0.05)
    elif mode == "sleep":
        time.sleep(120)
    elif mode == "ready":
        emit(Tick(0))
        time.sleep(120)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
