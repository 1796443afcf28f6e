"""One model over several processes, with MLX's own distributed layer (issue 14).

``mlx.launch -n 2 --backend ring -- python -m workbench ...`` starts the same command on every
rank. ``workbench.cli.main`` calls ``join`` first: rank 0 goes on to the face that was asked
for (the app, ``generate``, ``chat --plain``); every other rank calls ``follow`` and becomes a
headless follower of rank 0's engine.

Lockstep. Rank 0's engine thread builds a ``DistributedCore`` (``make_core``, from
``Engine``): each request that changes state (load, chat turn, prefill, reset, unload) is
first sent to the followers, which run the same ``DistributedCore`` method on their own
shard; inner calls (a load's adapter, a resume's reset) are not sent twice. Requests travel
through ``mx.distributed`` itself (``World.broadcast``: the pickled request's length, then its
bytes, each an ``all_sum`` to which the followers add zeros); no other transport.

- Sampling: a turn with temperature > 0 and no seed gets a fresh seed from rank 0, so every
  rank draws the same token. Prefill runs in fixed chunks (a time-sized chunk would differ
  between ranks, and so would the collectives).
- Cancel: ``run_turn`` asks ``cancel.is_set()`` at the same points on every rank (after each
  prefill chunk, after each token); ``SyncedCancel.is_set`` all_sums rank 0's flag with the
  followers' zeros, so every rank stops at the same token. Its time is the per-token
  communication time reported in ``TurnStats.comm_ms_per_token``.
- Adapters are refused in one line (LoRA wrappers around sharded layers would be wrong);
  prompt-cache files are not written (each rank holds only its shard: the transcript is saved,
  ``snapshot`` refuses); a resumed session's cache is rebuilt by a mirrored prefill.
- Failures: collectives block forever when a peer dies. On rank 0 a watchdog thread watches
  each mirrored request: when no collective has completed for ``WORKBENCH_DIST_TIMEOUT``
  seconds (default 60), or when mlx.launch sends SIGTERM because a rank exited, or when a
  collective fails, it prints one line naming the rank, runs the ``on_failure`` hooks (the
  faces save their transcript there) and ends the process with ``os._exit``. A rank that
  never joins: ``join`` gives up after ``WORKBENCH_DIST_JOIN_TIMEOUT`` seconds (default 60).

Test hooks (environment): ``WORKBENCH_DIST_TEST_CANCEL=N`` makes rank 0 cancel its first turn
after N tokens; ``WORKBENCH_DIST_TEST_KILL=N`` kills rank 1 after N tokens (SIGKILL, or
the signal named by ``WORKBENCH_DIST_TEST_SIGNAL``, e.g. STOP: a rank that hangs).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from common.errors import WorkbenchError

from .events import WorldInfo

if TYPE_CHECKING:
    pass

Emit = Callable[[Any], None]

TIMEOUT_ENV = "WORKBENCH_DIST_TIMEOUT"
JOIN_TIMEOUT_ENV = "WORKBENCH_DIST_JOIN_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_JOIN_TIMEOUT_S = 60.0
PREFILL_STEP = 512  # fixed: every rank must run the same chunks
INFO_BYTES = 512  # each rank's join record (host, pid) in the gather


def launched() -> bool:
    """Started by mlx.launch (or mpirun) with more than one rank?"""
    env = os.environ
    if "MLX_RANK" in env:
        return bool(env.get("MLX_HOSTFILE")) or int(env.get("MLX_WORLD_SIZE", "1")) > 1 \
            or "MLX_JACCL_COORDINATOR" in env
    return int(env.get("OMPI_COMM_WORLD_SIZE", env.get("PMI_SIZE", "1"))) > 1


def backend_name() -> str:
    env = os.environ
    if "MLX_JACCL_COORDINATOR" in env:
        return "jaccl"
    if env.get("MLX_HOSTFILE"):
        return "ring"
    if "MLX_WORLD_SIZE" in env:
        return "nccl"
    return "mpi"


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class World:
    """This process's place in the group: rank, size, hosts, and the collectives the
    engine's requests travel by. Rank 0 also keeps the watchdog."""

    def __init__(self, group: Any, backend: str, shard: str) -> None:
        self.group = group
        self.rank: int = group.rank()
        self.size: int = group.size()
        self.backend = backend
        self.shard = shard
        self.hosts: tuple[str, ...] = ()
        self.pids: tuple[int, ...] = ()
        self.timeout_s = _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
        self.comm_s = 0.0  # time spent in SyncedCancel's collectives (rank 0 reads it)
        self.comm_calls = 0
        self._failure_hooks: list[Callable[[], None]] = []
        self._failed = threading.Lock()
        self._watch: tuple[str, float] | None = None  # (what, timeout) while a request runs
        self._beat = time.monotonic()
        self._first: tuple[str, float] | None = None  # the deadline after the first beat
        self.claimed = False  # an engine's core mirrors through this world
        self.closed = False  # rank 0 told the followers to leave

    # -- collectives -----------------------------------------------------------------------
    @staticmethod
    def stream() -> Any:
        """The stream the model's own collectives run on (mlx-lm's generation stream, once
        it is imported). Ours must run there too: collectives on two streams run in two
        threads, and the ranks would pair them up in different orders."""
        generate = sys.modules.get("mlx_lm.generate")
        return getattr(generate, "generation_stream", None)

    def all_sum_ints(self, values: list[int]) -> list[int]:
        import mlx.core as mx

        out = mx.distributed.all_sum(mx.array(values, dtype=mx.int64), group=self.group,
                                     stream=self.stream())
        mx.eval(out)
        self.beat()
        return [int(v) for v in out.tolist()]  # type: ignore[union-attr, arg-type]

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (the others pass nothing)."""
        import mlx.core as mx
        import numpy as np

        data = pickle.dumps(obj) if self.rank == 0 else b""
        (length,) = self.all_sum_ints([len(data)])
        buf = np.frombuffer(data, dtype=np.uint8) if self.rank == 0 else \
            np.zeros(length, dtype=np.uint8)
        out = mx.distributed.all_sum(mx.array(buf), group=self.group, stream=self.stream())
        mx.eval(out)
        self.beat()
        return obj if self.rank == 0 else pickle.loads(bytes(np.array(out)))

    def gather(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's ``record`` (small JSON), in rank order."""
        import mlx.core as mx
        import numpy as np

        raw = json.dumps(record).encode()[:INFO_BYTES].ljust(INFO_BYTES)
        out = mx.distributed.all_gather(mx.array(np.frombuffer(raw, dtype=np.uint8)),
                                        group=self.group, stream=self.stream())
        mx.eval(out)
        self.beat()
        blob = bytes(np.array(out))
        return [json.loads(blob[i * INFO_BYTES:(i + 1) * INFO_BYTES].decode().strip())
                for i in range(self.size)]

    # -- the watchdog (rank 0) -------------------------------------------------------------
    def beat(self) -> None:
        self._beat = time.monotonic()
        if self._first is not None:  # the first collective came: the usual deadline now
            self._watch, self._first = self._first, None

    @contextlib.contextmanager
    def watching(self, what: str, timeout_s: float | None = None,
                 first_s: float | None = None) -> Iterator[None]:
        """While the block runs, the other ranks must keep completing collectives: at most
        ``timeout_s`` between two, ``first_s`` before the first (a first prefill compiles)."""
        previous = self._watch
        timeout = timeout_s or self.timeout_s
        self._watch = (what, max(timeout, first_s or 0.0))
        self._first = (what, timeout) if first_s else None
        self.beat()
        try:
            yield
        finally:
            self._watch = previous
            self._first = None
            self.beat()

    def start_watchdog(self) -> None:
        threading.Thread(target=self._watchdog, name="mlx-dist-watchdog", daemon=True).start()
        with contextlib.suppress(ValueError):  # not the main thread (tests)
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _watchdog(self) -> None:
        while True:
            time.sleep(0.2)
            watch = self._watch
            if watch is not None and time.monotonic() - self._beat > watch[1]:
                self.fail(f"{self.blame()} stopped answering during {watch[0]} "
                          f"(nothing for {watch[1]:.0f} s)")

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        self.fail(f"{self.blame()} ended, so mlx.launch is stopping the job")

    def blame(self) -> str:
        """Which rank(s) failed, as far as this host can tell."""
        here = socket.gethostname()
        dead = []
        for rank in range(1, len(self.pids)):
            if self.hosts[rank] == here:
                try:
                    os.kill(self.pids[rank], 0)
                except ProcessLookupError:
                    dead.append(rank)
                except OSError:
                    pass
        if dead:
            return ", ".join(f"rank {r} ({self.hosts[r]})" for r in dead)
        others = [r for r in range(1, self.size)]
        if len(others) == 1:
            host = self.hosts[1] if len(self.hosts) > 1 else "?"
            return f"rank 1 ({host})"
        return "one of ranks " + ", ".join(map(str, others))

    def on_failure(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` (any thread, keep it short: save what must not be lost) before the
        process ends because a rank failed. Returns the function that removes it."""
        self._failure_hooks.append(hook)
        return lambda: self._failure_hooks.remove(hook) if hook in self._failure_hooks \
            else None

    def fail(self, message: str) -> None:
        """One line, the hooks, and the end of this process (collectives cannot be undone)."""
        if not self._failed.acquire(blocking=False):
            return
        with contextlib.suppress(Exception):
            sys.stderr.write(f"\nworkbench: distributed: {message}; exiting\n")
            sys.stderr.flush()
        for hook in list(self._failure_hooks):
            with contextlib.suppress(Exception):
                hook()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        self._end_local_ranks()
        os._exit(1)

    def _end_local_ranks(self) -> None:
        """A rank that hangs (stopped, or blocked in a collective) would keep mlx.launch
        waiting for minutes: end the ranks on this host; say where others may still run."""
        here = socket.gethostname()
        remote = sorted({h for r, h in enumerate(self.hosts) if r and h != here})
        for rank in range(1, len(self.pids)):
            if self.hosts[rank] == here:
                with contextlib.suppress(OSError):
                    os.kill(self.pids[rank], signal.SIGKILL)
        if remote:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"workbench: distributed: ranks on {', '.join(remote)} may "
                                 "still be running: if mlx.launch does not end, stop the "
                                 "workbench there (Ctrl+C here ends mlx.launch)\n")
                sys.stderr.flush()

    def info(self, layers: list[tuple[int, int]], weights: list[int]) -> WorldInfo:
        return WorldInfo(size=self.size, backend=self.backend, shard=self.shard,
                         hosts=self.hosts, layers=tuple(layers), weight_bytes=tuple(weights))


_world: World | None = None

# The join guard's program: wait for our stdin to close (joined) or the deadline to pass;
# at the deadline print the one line and end the waiting process.
_JOIN_GUARD = """
import os, select, signal, sys
pid, limit, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], limit)
if not ready:
    sys.stderr.write(line + "\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


def current() -> World | None:
    """The world this process joined (None: a single process)."""
    return _world


def on_failure(hook: Callable[[], None]) -> Callable[[], None]:
    """``World.on_failure`` when distributed; a no-op otherwise."""
    if _world is None or _world.rank != 0:
        return lambda: None
    return _world.on_failure(hook)


def join(shard: str | None = None) -> World:
    """``mx.distributed.init`` with a deadline, then every rank's host and pid."""
    global _world
    import mlx.core as mx

    from .distributed_shard import SHARD_MODES

    shard = shard or "tensor"
    if shard not in SHARD_MODES:
        raise WorkbenchError(f"--shard must be one of {', '.join(SHARD_MODES)}")
    backend = backend_name()
    rank = os.environ.get("MLX_RANK", "?")
    limit = _seconds(JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT_S)
    line = (f"workbench: distributed: rank {rank}: not every rank joined the {backend} group "
            f"within {limit:.0f} s (is each host running the same command, and can the hosts "
            "reach each other?); exiting")
    # init holds the interpreter while it waits for its peers (no thread of ours would run),
    # so the deadline is kept by a small process that ends this one if init never returns.
    guard = subprocess.Popen([sys.executable, "-c", _JOIN_GUARD, str(os.getpid()), str(limit),
                              line], stdin=subprocess.PIPE, close_fds=True)
    group = mx.distributed.init(strict=True, backend=backend)
    world = World(group, backend, shard)
    records = world.gather({"host": socket.gethostname(), "pid": os.getpid()})
    assert guard.stdin is not None
    guard.stdin.close()  # joined: the guard leaves
    guard.wait()
    world.hosts = tuple(str(r["host"]) for r in records)
    world.pids = tuple(int(r["pid"]) for r in records)
    if world.rank == 0:
        world.start_watchdog()
        atexit.register(_close_at_exit, world)
    _world = world
    return world


def _close_at_exit(world: World) -> None:
    """Rank 0 ends without an engine having closed the world (a command that never started
    one, or an engine left open): let the followers go."""
    if not world.closed:
        world.closed = True
        with contextlib.suppress(Exception):
            world.broadcast(("close", (), {}))


# -- the terminal (the app on rank 0) ---------------------------------------------------------
def raw_terminal() -> bool:
    """For the full-screen app on rank 0 under mlx.launch: rank 0's stdin is a pipe that
    mlx.launch fills from its terminal, which is in line mode, so keys would arrive a line at
    a time. Put the terminal itself (``/dev/tty``, shared with mlx.launch) in raw mode, so
    each key is forwarded as it is typed; restored at exit. False when there is no terminal
    or rank 0 already owns one."""
    import termios
    import tty

    if sys.stdin.isatty():
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        saved = termios.tcgetattr(fd)
    except OSError:
        return False
    except termios.error:
        os.close(fd)
        return False

    def restore() -> None:
        with contextlib.suppress(Exception):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    tty.setraw(fd)
    atexit.register(restore)
    on_failure(restore)
    return True
