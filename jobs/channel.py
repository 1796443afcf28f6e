"""One channel for the jobs that run in a child process: training and fuse.

Both are MLX work that must never take the app (or its engine thread) down, so both run as
``python -m jobs.<child>`` and talk back over one protocol: one JSON event per stdout line,
written and read by one versioned ``Codec`` that raises ``ProtocolError`` on a line it cannot
read (an unknown event, an unknown or missing field, another version) instead of dropping
it, so a parent and a child that disagree fail in one line, not in silence.

``ChildJob`` is the parent's side, shared by ``TrainJob`` and ``FuseJob``: it spawns the
child, keeps the tail of its stderr for the failure line, and hands the events out through
one ``JobStream`` (an ``EventStream``: the app awaits it like every engine request; scripts
use ``poll``/``events``/``wait``). Its rules are the same for every job:

- cancel: SIGTERM, then SIGKILL after ``CANCEL_GRACE_S``, from a timer thread; ``cancel``
  itself never waits (it is called on the UI thread).
- out of memory: ``out_of_memory`` (a child's ``MemoryError`` or allocation words on its
  stderr); a child killed by SIGKILL is a crash whose line says memory may be why.
- the end: one final event, once the child's output is settled (``_conclude``); a job still
  running when this process exits is cancelled and waited for, and a child whose parent has
  gone (its stdin closes) stops itself (``watch_parent``).

Nothing here imports MLX, textual, rich or prompt_toolkit.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, Generic, TextIO, TypeVar

from common.errors import WorkbenchError
from engine.events import Result
from engine.stream import EventStream

ROOT = Path(__file__).resolve().parents[1]  # the folder that holds the jobs package
CANCEL_GRACE_S = 10.0  # a cancelled child that has not ended by then is killed
TAIL_LINES = 60  # the child's last stderr lines kept for the failure line
MEMORY_WORDS = ("bad_alloc", "out of memory", "unable to allocate", "memoryerror")

F = TypeVar("F")


class ProtocolError(WorkbenchError):
    """A line of a child's output that is not an event of this workbench's protocol."""

    kind = "crashed"


class Codec:
    """The JSON line of each event class in ``classes``, tagged with ``version``."""

    def __init__(self, name: str, version: int, *classes: type) -> None:
        self.name, self.version = name, version
        self._classes = {cls.__name__: cls for cls in classes}

    def encode(self, event: Any) -> str:
        if type(event).__name__ not in self._classes:
            raise ProtocolError(f"{type(event).__name__} is not a {self.name} event")
        return json.dumps({"v": self.version, "event": type(event).__name__, **asdict(event)})

    def decode(self, line: str) -> Any:
        """The event on ``line``; ``ProtocolError`` says what is wrong with it."""
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ProtocolError(f"not a {self.name} event: {line.strip()[:120]!r}")
        version, name = data.pop("v", None), data.pop("event", None)
        if version != self.version:
            raise ProtocolError(f"{self.name} event of protocol version {version!r}; this "
                                f"workbench reads version {self.version}")
        cls = self._classes.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ProtocolError(f"unknown {self.name} event {name!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtocolError(f"{name} has unknown field{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ProtocolError(f"{name} is missing a field ({exc})") from None


# -- the out-of-memory rule -----------------------------------------------------------------

def out_of_memory(exc: BaseException | None = None, tail: list[str] | tuple[str, ...] = ()
                  ) -> bool:
    """Did the work run out of memory: a ``MemoryError``, or MLX's allocation words in the
    exception's text or the child's stderr ``tail``."""
    if isinstance(exc, MemoryError):
        return True
    text = " ".join([str(exc) if exc is not None else "", *tail]).lower()
    return any(word in text for word in MEMORY_WORDS)


# -- the parent's side ----------------------------------------------------------------------

class JobStream(EventStream[F]):
    """A job's events; the last is ``Result(final)``. ``cancel()`` cancels the job."""

    def __init__(self, on_cancel: Callable[[], object] | None = None) -> None:
        super().__init__()
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        super().cancel()
        if self._on_cancel is not None:
            self._on_cancel()


def unwrapped(batch: list[Any]) -> list[Any]:
    """A batch of a ``JobStream`` with the final ``Result`` replaced by the job's final event."""
    return [e.value if isinstance(e, Result) else e for e in batch]


@dataclass(frozen=True, slots=True)
class Ended:
    """How the child ended, for ``_conclude``."""

    code: int
    cancelled: bool
    tail: tuple[str, ...]
    protocol_error: ProtocolError | None = None

    def last_line(self) -> str:
        return next((ln.strip()[:200] for ln in reversed(self.tail)
                     if ln.strip() and not ln.startswith(" ")), "")


_running: weakref.WeakSet[ChildJob[Any]] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """No child outlives the process that started it (nor leaves a partial folder)."""
    for job in list(_running):
        job.cancel()
        job.wait(CANCEL_GRACE_S)


class ChildJob(Generic[F]):
    """The parent's side of one child-process job. Subclasses say what to run (``_spawn``
    with the module and its arguments), how events read (``codec``, ``finals``) and how the
    job ends (``_conclude``)."""

    codec: Codec
    finals: tuple[type, ...]
    what = "job"  # for the lines: "the training process", "the fuse process"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self.stream: JobStream[F] = JobStream(on_cancel=self.cancel)
        self._proc: subprocess.Popen[str] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._final: F | None = None

    # -- starting ------------------------------------------------------------------------
    def _spawn(self, module: str, args: list[str]) -> None:
        """Start ``python -m module args`` and the threads that read it. A cancel that came
        before is carried out at once."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", module, *args], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                errors="replace", bufsize=1, env=env, start_new_session=True)
        except OSError as exc:
            raise WorkbenchError(f"{self.what} could not start ({exc.strerror or exc}): "
                                 f"check {self.python}") from None
        _running.add(self)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        stderr = threading.Thread(target=self._read_stderr, args=(self._proc.stderr,),
                                  name=f"{module}-stderr", daemon=True)
        stderr.start()
        threading.Thread(target=self._read_events, args=(self._proc.stdout, stderr),
                         name=f"{module}-events", daemon=True).start()
        if self._cancelled.is_set():
            self._terminate(self._proc)

    # -- the child's output --------------------------------------------------------------
    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            if line.strip():
                self._tail.append(line.rstrip("\n"))

    def _read_events(self, stream: IO[str], stderr: threading.Thread) -> None:
        proc = self._proc
        assert proc is not None
        child_final: Any = None
        problem: ProtocolError | None = None
        try:
            for line in stream:
                event = self.codec.decode(line)
                if isinstance(event, self.finals):
                    child_final = event
                else:
                    self.stream.put(event)
        except ProtocolError as exc:
            problem = exc
            self._terminate(proc)
        code = proc.wait()
        stderr.join(5.0)  # its last lines may say why the child ended
        ended = Ended(code, self._cancelled.is_set(), tuple(self._tail), problem)
        try:
            final = self._conclude(child_final, ended)
        except Exception as exc:  # noqa: BLE001 - the job must always end with an event
            final = self._failed(f"{self.what} could not be finished: {exc}", "crashed")
        self._finish(final)
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def _conclude(self, child_final: Any, ended: Ended) -> F:
        raise NotImplementedError

    def _failed(self, message: str, kind: str) -> F:
        raise NotImplementedError

    def crash_line(self, ended: Ended, kept: str, memory_advice: str) -> tuple[str, str]:
        """The line and kind of a child that ended without saying how. ``kept``: what was
        left as it was; ``memory_advice``: what to do when memory may be why."""
        if ended.protocol_error is not None:
            return (f"{self.what} sent what this workbench cannot read "
                    f"({ended.protocol_error}): {kept}", "crashed")
        if out_of_memory(tail=ended.tail):
            return f"{self.what} ran out of memory: {memory_advice} ({kept})", "memory"
        if ended.code < 0:
            hint = (f" (the system may have run out of memory: {memory_advice})"
                    if -ended.code == signal.SIGKILL else "")
            return (f"{self.what} was killed by {_signal_name(-ended.code)}{hint}: {kept}",
                    "crashed")
        last = ended.last_line()
        return (f"{self.what} ended with exit code {ended.code}"
                f"{f' ({last})' if last else ''}: {kept}", "crashed")

    def _finish(self, final: F) -> None:
        self._final = final
        self._done.set()
        self.stream.put(Result(final))
        _running.discard(self)

    # -- the consumer's side -------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the child: SIGTERM now, SIGKILL after ``CANCEL_GRACE_S``. Never waits."""
        if self._done.is_set():
            return
        self._cancelled.set()
        if self._proc is not None:
            self._terminate(self._proc)

    def _terminate(self, proc: subprocess.Popen[str]) -> None:
        try:
            proc.send_signal(signal.SIGTERM)
        except (ProcessLookupError, OSError):
            return

        def kill_later() -> None:
            try:
                proc.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()

        threading.Thread(target=kill_later, name="job-kill", daemon=True).start()

    def poll(self) -> list[Any]:
        """The events that arrived since the last call (never waits); the final one last."""
        return unwrapped(self.stream.drain()[0])

    def events(self, timeout: float | None = None) -> Iterator[Any]:
        """Events as they arrive, the final one last. ``timeout``: the longest wait for one
        event; when it passes the iterator ends (the job goes on)."""
        while True:
            batch, done = self.stream.take(timeout)
            if not batch:
                return
            yield from unwrapped(batch)
            if done:
                return

    def wait(self, timeout: float | None = None) -> F | None:
        """Block until the job has ended; its final event (None on timeout)."""
        self._done.wait(timeout)
        return self._final

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def final(self) -> F | None:
        return self._final

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self) -> list[str]:
        """The child's last lines of stderr (mlx-lm's own output, tracebacks)."""
        return list(self._tail)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- the child's side -----------------------------------------------------------------------

def event_writer(codec: Codec) -> Callable[[Any], None]:
    """In the child: a function that sends one event to the parent. Whatever else is
    printed (mlx-lm, MLX, transformers, at the Python or the C level) goes to stderr, and a
    thread stops the child when the parent goes away."""
    out: TextIO = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()

    def emit(event: Any) -> None:
        out.write(codec.encode(event) + "\n")
        out.flush()

    return emit


def watch_parent() -> None:
    """End the child (SIGTERM, its cancel) when the parent goes away: its stdin closes."""
    try:  # the raw descriptor: a buffered read would hold a lock at interpreter exit
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
