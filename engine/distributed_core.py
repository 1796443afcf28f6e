"""The mirrored core of distributed mode (issue 14): ``DistributedCore`` and ``SyncedCancel``.

Rank 0's engine thread and every follower run a ``DistributedCore``. On rank 0, the outermost
call of each state-changing method (load, turn, prefill, reset, unload, ...) is first sent to
the followers (``World.broadcast``), whose loop (``follow``, below) calls the same
method on their own core; every collective inside then pairs up rank for rank. Imported on
the engine thread only (it imports the core, hence mlx-lm's users).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from common.errors import AdapterError, WorkbenchError

from .core import EngineCore
from .distributed import PREFILL_STEP, World, current
from .events import ModelInfo, TokenText, TurnDone

Emit = Callable[[Any], None]

LOAD_TIMEOUT_S = 900.0  # a big model read from disk on the slowest rank
FIRST_TURN_FACTOR = 10  # the first prefill after a load compiles kernels (CUDA: ~50 s)
ADAPTERS_REFUSED = ("adapters are not available in distributed mode (a LoRA around sharded "
                    "layers would be wrong): run without mlx.launch to use them")


# -- lockstep cancel ----------------------------------------------------------------------
class SyncedCancel(threading.Event):
    """A cancel flag every rank reads the same: ``is_set`` all_sums rank 0's local flag (the
    followers add 0). Called at the same points on every rank, so all stop together. An
    ``Event`` to whoever takes one (``run_turn``, ``EngineCore.prefill``)."""

    def __init__(self, world: World, local: threading.Event | None) -> None:
        super().__init__()
        self.world = world
        self.local = local
        self.calls = 0
        self.seconds = 0.0

    def is_set(self) -> bool:
        mine = 1 if self.local is not None and self.local.is_set() else 0
        start = time.perf_counter()
        (total,) = self.world.all_sum_ints([mine])
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return total > 0

    def set(self) -> None:
        if self.local is not None:
            self.local.set()


class _Mirror:
    """Counts nested calls: only the outermost request of rank 0 is sent to the followers
    (a load's inner unload or adapter step runs on every rank by itself)."""

    def __init__(self) -> None:
        self.depth = 0


class DistributedCore(EngineCore):
    """A core whose state-changing requests rank 0 mirrors to the followers, which run the
    same methods on their shard (see engine/distributed.py)."""

    def __init__(self, world: World, *core_args: Any) -> None:
        super().__init__(*core_args)
        self.world = world
        self._mirror = _Mirror()
        self._layers: tuple[int, int] = (0, 0)
        self._load_peak = 0
        self._parameters = 0
        self._turns_since_load = 0
        self._test_cancel = int(os.environ.get("WORKBENCH_DIST_TEST_CANCEL", "0") or 0)
        self._test_kill = int(os.environ.get("WORKBENCH_DIST_TEST_KILL", "0") or 0)

    # -- sending ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _request(self, name: str, *args: Any, timeout_s: float | None = None,
                 first_s: float | None = None, **kwargs: Any) -> Iterator[bool]:
        """Send ``name(*args, **kwargs)`` to the followers if this is rank 0's outermost
        call; yields whether it was (the watchdog watches it meanwhile)."""
        outer = self._mirror.depth == 0
        self._mirror.depth += 1
        try:
            if outer and self.world.rank == 0 and not self.world.closed:
                with self.world.watching(name, timeout_s):
                    self._guarded(lambda: self.world.broadcast((name, args, kwargs)))
                    with self.world.watching(name, timeout_s, first_s):
                        yield True
            else:
                yield outer
        finally:
            self._mirror.depth -= 1

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        """A collective that fails (a peer's socket closed) ends the job on rank 0."""
        try:
            return fn()
        except RuntimeError as exc:
            if self.world.rank == 0:
                text = str(exc).strip().splitlines()
                line = text[0] if text else type(exc).__name__
                peer = any(word in line for word in ("[ring]", "[jaccl]", "[nccl]", "[mpi]",
                                                      "peer", "socket"))
                self.world.fail(f"{self.world.blame()} failed ({line})" if peer
                                else f"rank 0 failed ({line}); the ranks cannot go on apart")
            raise

    def configure(self, prefill_step: int, max_kv_size: int | None) -> None:
        with self._request("configure", prefill_step, max_kv_size):
            self.prefill_step = int(prefill_step)
            self.max_kv_size = max_kv_size

    def close_world(self) -> None:
        if not self.world.closed:
            with self._request("close"):
                self.world.closed = True

    # -- load ------------------------------------------------------------------------
    def load(self, spec: str, adapter: str | None, emit: Emit,
             cancel: threading.Event | None = None) -> ModelInfo:
        with self._request("load", spec, adapter, timeout_s=LOAD_TIMEOUT_S):
            error: BaseException | None = None
            try:
                with self._sharded_loads():
                    info = super().load(spec, adapter, emit, cancel)
            except Exception as exc:  # noqa: BLE001 - every rank must reach the barrier
                error = exc
                if self.world.rank != 0:
                    print(f"workbench: rank {self.world.rank}: the model could not be "
                          f"loaded: {exc}", file=sys.stderr)
            (ok,) = self.world.all_sum_ints([0 if error else 1])
            if error is not None:
                raise error
            if ok != self.world.size:
                self.unload()
                raise WorkbenchError(f"{spec} could not be loaded on {self.world.size - ok}"
                                     " of the other ranks (their error is above)")
            from .distributed_shard import local_weight_bytes

            assert self.loaded is not None
            self._check_same_weights(spec)
            weights = local_weight_bytes(self.loaded.model)
            records = self.world.gather({"layers": list(self._layers), "weights": weights,
                                         "peak": self._load_peak})
            world = replace(self.world.info([tuple(r["layers"]) for r in records],
                                            [int(r["weights"]) for r in records]),
                            load_peak_bytes=tuple(int(r["peak"]) for r in records))
            self.loaded.info = replace(self.loaded.info, world=world, weight_bytes=weights,
                                       num_parameters=self._parameters or info.num_parameters)
            self._turns_since_load = 0
            return self.loaded.info

    def _check_same_weights(self, spec: str) -> None:
        """Every rank must have read the same model: a relative path that names another folder
        on another host, or a snapshot of another revision, gives garbage otherwise (issue 19
        #23). The fingerprints (config, tokenizer, weight headers and samples) are compared;
        on a mismatch every rank unloads and rank 0 says which ranks differ."""
        from models.fingerprint import model_fingerprint

        assert self.loaded is not None
        prints = [r["fp"] for r in self.world.gather(
            {"fp": model_fingerprint(self.loaded.info.path)})]
        odd = [r for r in range(1, len(prints)) if prints[r] != prints[0]]
        if not odd:
            return
        self.unload()
        hosts = self.world.hosts
        names = ", ".join(f"rank {r} ({hosts[r] if r < len(hosts) else '?'})" for r in odd)
        raise WorkbenchError(f"{names} loaded other weights for {spec} than rank 0: give every "
                             "rank the same model (an absolute path to identical files on "
                             "each host, or the same Hugging Face revision)")

    @contextlib.contextmanager
    def _sharded_loads(self) -> Iterator[None]:
        """While ``EngineCore.load`` runs, its ``LoadedModel.load`` reads this rank's shard
        (``load_sharded``) and checks the fit for this rank's share of the weights. Scoped to
        the call, on the engine thread: ``EngineCore.load`` itself stays the one load."""
        from . import core as core_module
        from .distributed_shard import load_sharded

        base = core_module.LoadedModel
        this = self

        def loader(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
            import mlx.core as mx

            mx.reset_peak_memory()
            model, tokenizer, config, this._layers, this._parameters = load_sharded(
                folder, this.world.group, this.world.shard)
            this._load_peak = int(mx.get_peak_memory())
            return model, tokenizer, config

        class ShardedLoad(base):  # type: ignore[misc, valid-type]
            @classmethod
            def load(cls, spec: str, path: Path, emit: Emit, **kwargs: Any) -> Any:
                kwargs.update(loader=loader, fit_share=1.0 / this.world.size)
                return base.load(spec, path, emit, **kwargs)

        core_module.LoadedModel = ShardedLoad  # type: ignore[misc]
        try:
            yield
        finally:
            core_module.LoadedModel = base  # type: ignore[misc]

    # -- decoding settings (engine/speculative.py) -----------------------------------------
    def set_decoding(self, settings: Any) -> Any:
        """KV quantization and prompt lookup run the same on every rank: mirrored."""
        with self._request("set_decoding", settings):
            return super().set_decoding(settings)

    def load_draft(self, spec: str | None, emit: Emit,
                   cancel: threading.Event | None = None) -> Any:
        if spec is None:
            return None  # none is ever loaded here
        raise WorkbenchError("speculative decoding with a draft model is not available in "
                             "distributed mode: run without mlx.launch to use one")

    def unload(self) -> None:
        with self._request("unload"):
            super().unload()

    # -- caches ----------------------------------------------------------------------
    def reset_cache(self) -> None:
        with self._request("reset_cache"):
            super().reset_cache()

    def prefill(self, tokens: list[int], emit: Emit,
                cancel: threading.Event) -> tuple[int, bool]:
        with self._request("prefill", list(tokens), None, None):
            synced = SyncedCancel(self.world, cancel if self.world.rank == 0 else None)
            result: tuple[int, bool] = self._guarded(
                lambda: EngineCore.prefill(self, tokens, emit, synced))
            return result

    def snapshot(self, valid: list[int] | None = None) -> Any:
        import errno

        raise OSError(errno.EOPNOTSUPP, "prompt caches are not saved in distributed mode "
                                        "(each rank holds only its shard); the transcript "
                                        "is saved")

    def restore(self, cache: list[Any], tokens: list[int]) -> None:
        """A saved cache is for one process: rebuild it on every rank instead."""
        del cache
        with self._request("restore_tokens", list(tokens)):
            self.restore_tokens(list(tokens))

    def restore_tokens(self, tokens: list[int]) -> None:
        self.caches.drop(self.cache_key)
        self.prefill(tokens, lambda _e: None, threading.Event())

    # -- adapters --------------------------------------------------------------------
    def use_adapter(self, path: str | Path | None, scale: float | None = None) -> Any:
        if path is None:
            return self.adapter_state()
        raise AdapterError(ADAPTERS_REFUSED)

    def set_adapter_scale(self, scale: float) -> Any:
        raise AdapterError(ADAPTERS_REFUSED)

    def set_adapter_mode(self, mode: str) -> Any:
        """No adapter runs here, but the mode names the cache: kept the same everywhere."""
        with self._request("set_adapter_mode", mode):
            return super().set_adapter_mode(mode)

    # -- a chat turn -----------------------------------------------------------------
    def turn(self, messages: Any, params: Any, cancel: threading.Event | None,
             submitted: float, *args: Any, **kwargs: Any) -> Iterator[Any]:
        if self.world.rank == 0 and params.temperature > 0 and params.seed is None:
            params = replace(params, seed=random.randrange(1 << 31))  # same draw everywhere
        first = self._turns_since_load == 0
        self._turns_since_load += 1
        # The first prefill chunk after a load may compile kernels (CUDA: ~50 s).
        lenient = self.world.timeout_s * FIRST_TURN_FACTOR if first else None
        with self._request("turn", list(messages), params, None, submitted, *args,
                           first_s=lenient, **kwargs):
            local = cancel if self.world.rank == 0 else None
            synced = SyncedCancel(self.world, local)
            events = super().turn(messages, params, synced, submitted, *args, **kwargs)
            while True:
                event = self._guarded(lambda: next(events, None))
                if event is None:
                    return
                if isinstance(event, TokenText):
                    self._test_hooks(event.generated, local)
                if isinstance(event, TurnDone):
                    event = self._finish(event, synced)
                yield event

    def _test_hooks(self, generated: int, local: threading.Event | None) -> None:
        if self._test_cancel and local is not None and generated >= self._test_cancel:
            self._test_cancel = 0
            local.set()
        if self._test_kill and self.world.rank == 1 and generated >= self._test_kill:
            self._test_kill = 0
            how = os.environ.get("WORKBENCH_DIST_TEST_SIGNAL", "KILL")
            os.kill(os.getpid(), getattr(signal, f"SIG{how}"))

    def _finish(self, done: TurnDone, synced: SyncedCancel) -> TurnDone:
        import mlx.core as mx

        peaks = self.world.gather({"peak": int(mx.get_peak_memory())})
        return replace(done, stats=replace(
            done.stats,
            comm_ms_per_token=round(1000 * synced.seconds / max(1, synced.calls), 3),
            rank_peak_memory=tuple(int(p["peak"]) for p in peaks),
        ))


# -- the engine's core ----------------------------------------------------------------------
def make_core(core_args: tuple[Any, ...]) -> EngineCore:
    """The engine's core: a ``DistributedCore`` for the first engine of rank 0 under
    mlx.launch, a plain ``EngineCore`` otherwise."""
    world = current()
    if world is None or world.rank != 0 or world.claimed:
        return EngineCore(*core_args)
    world.claimed = True
    core = DistributedCore(world, *core_args)
    core.configure(core_args[0] or PREFILL_STEP, core_args[1])
    return core


def release(core: EngineCore) -> None:
    """At engine shutdown (after ``unload``): the followers leave their loop."""
    if isinstance(core, DistributedCore) and core.world.rank == 0:
        core.close_world()


# -- the followers ----------------------------------------------------------------------------
def follow(world: World) -> int:
    """Run rank 0's requests on this rank until it closes the world. Exit code."""
    import mlx.core as mx

    os.dup2(2, 1)  # stdout is rank 0's (mlx.launch merges every rank's): say nothing there
    sys.stdout = sys.stderr
    threading.Thread(target=_drain_stdin, name="stdin-drain", daemon=True).start()
    core = DistributedCore(world)
    noop: Emit = lambda _event: None  # noqa: E731
    status = 0
    while True:
        try:
            name, args, kwargs = world.broadcast()
        except RuntimeError as exc:
            print(f"workbench: rank {world.rank}: rank 0 is gone ({exc})", file=sys.stderr)
            status = 1
            break
        if name == "close":
            break
        try:
            if name == "turn":
                messages, params, _cancel, submitted, *rest = args
                for _event in core.turn(messages, params, None, submitted, *rest, **kwargs):
                    pass
            elif name == "load":
                core.load(args[0], args[1], noop)
            elif name == "prefill":
                core.prefill(args[0], noop, threading.Event())
            else:
                getattr(core, name)(*args, **kwargs)
        except WorkbenchError:
            pass  # rank 0 raised the same error and tells the user
        except Exception as exc:  # noqa: BLE001 - say which rank, then leave (mlx.launch ends the job)
            print(f"workbench: rank {world.rank}: {name} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            if os.environ.get("WORKBENCH_DIST_DEBUG"):
                import traceback

                traceback.print_exc()
            status = 1
            break
    with contextlib.suppress(Exception):
        core.unload()
        mx.synchronize()
    return status


def _drain_stdin() -> None:
    """mlx.launch copies its stdin to every rank; a follower reads it and drops it (a full
    pipe would stop mlx.launch)."""
    with contextlib.suppress(Exception):
        while os.read(0, 65536):  # the file descriptor: no Python lock held at exit
            pass
