"""Fuse a LoRA/DoRA adapter into its base model with mlx-lm's fuse, as a child process.

``mlx_lm fuse`` loads the model with the adapter, replaces each adapted layer by its
``fuse()`` result, optionally dequantizes, saves the folder (``mlx_lm.utils.save``) and
optionally exports GGUF. The child (``python -m jobs.fuse_child``) runs exactly those
steps and prints one JSON event per line; ``FuseJob`` starts it, turns the lines back into
``FuseProgress`` / ``FuseFinished`` / ``FuseFailed`` and can cancel it. A crash or an
out-of-memory there never takes the app (or its engine thread) down, and the MLX work of a
fuse does not stall a chat.

Nothing is ever overwritten: the save path must be new or an empty folder; the child writes
into a hidden folder beside it, renamed into place at the end, so a cancelled or failed
fuse leaves nothing that looks like a model. The fused folder is an ordinary model folder:
``workbench --model OUT`` loads it. (To have the models screen list it, the face that
started the fuse registers the folder, ``workbench.recent.add_model_folder``, as
``workbench quantize`` does.)

GGUF: mlx-lm exports llama, mistral and mixtral only, and only from unquantized weights
(a quantized base needs ``dequantize``); both are refused before anything starts.

This module is the job: the child process's life, from start to the folder in place. What
is refused before it starts is in ``fuse_checks.py``, the events and their JSON lines in
``fuse_events.py``; their names are importable from here too.
Nothing here imports MLX, textual, rich or prompt_toolkit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.fuse_checks import (
    GGUF_MODEL_TYPES,
    FuseError,
    check_adapter_for,
    check_request,
    check_save_path,
    gguf_target,
)
from jobs.fuse_events import FuseEvent, FuseFailed, FuseFinished, FuseProgress, from_json, to_json

__all__ = [
    "CANCEL_GRACE_S", "DEFAULT_GGUF_PATH", "GGUF_MODEL_TYPES", "FuseError", "FuseEvent",
    "FuseFailed", "FuseFinished", "FuseJob", "FuseProgress", "check_adapter_for",
    "check_request", "check_save_path", "from_json", "gguf_target", "to_json",
]

DEFAULT_GGUF_PATH = "ggml-model-f16.gguf"  # mlx_lm fuse's --gguf-path default
CANCEL_GRACE_S = 5.0
_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the engine package


# -- the job --------------------------------------------------------------------------------

_running: weakref.WeakSet[FuseJob] = weakref.WeakSet()


@atexit.register
def _cancel_all() -> None:
    """A fuse does not outlive the app that started it (nor leave its partial folder)."""
    for job in list(_running):
        job.cancel()
        job.wait(CANCEL_GRACE_S)


class FuseJob:
    """One fuse, in a child process. ``start()`` checks and launches; read events with
    ``poll()`` (no waiting) or ``events()`` (blocking); ``cancel()`` stops it."""

    def __init__(self, model: str, adapter_path: str, save_path: str, *,
                 dequantize: bool = False, export_gguf: bool = False,
                 gguf_path: str = DEFAULT_GGUF_PATH, trust_remote_code: bool = False,
                 python: str | None = None) -> None:
        self.model = model
        self.adapter_path = adapter_path
        self.save_path = save_path
        self.dequantize = dequantize
        self.export_gguf = export_gguf
        self.gguf_path = gguf_path
        self.trust_remote_code = trust_remote_code
        self.python = python or sys.executable
        self._proc: subprocess.Popen[str] | None = None
        self._events: queue.Queue[Any] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=40)
        self._tmp: Path | None = None
        self._target: Path | None = None
        self._gguf_outside: Path | None = None
        self._started = 0.0
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._final: FuseFinished | FuseFailed | None = None

    # -- starting ------------------------------------------------------------------------
    def _check(self) -> tuple[Path, Path, Path]:
        model, adapter, save, self._gguf_outside = check_request(
            self.model, self.adapter_path, self.save_path, dequantize=self.dequantize,
            export_gguf=self.export_gguf, gguf_path=self.gguf_path)
        return model, adapter, save

    def start(self) -> None:
        """Check the request (one-line ``FuseError``; nothing is written then) and start the
        child. Events follow."""
        if self._proc is not None:
            raise FuseError("this fuse has already started")
        model, adapter, save = self._check()
        save.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{save.name}.", suffix=".partial",
                                              dir=save.parent))
        except OSError as exc:
            raise FuseError(f"cannot write in {save.parent}: {exc.strerror or exc}") from None
        self._target = save
        gguf_arg = str(self._gguf_outside) if self._gguf_outside else self.gguf_path
        cmd = [self.python, "-m", "jobs.fuse_child", "--model", str(model),
               "--adapter-path", str(adapter), "--save-path", str(self._tmp),
               "--gguf-path", gguf_arg]
        if self.dequantize:
            cmd.append("--dequantize")
        if self.export_gguf:
            cmd.append("--export-gguf")
        if self.trust_remote_code:
            cmd.append("--trust-remote-code")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        self._started = time.perf_counter()
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL, text=True, env=env)
        except OSError as exc:
            self._cleanup()
            raise FuseError(f"cannot start the fuse process: {exc.strerror or exc}") from None
        _running.add(self)
        self._events.put(FuseProgress("start", f"fusing {adapter.name} into {model.name}"))
        threading.Thread(target=self._read_stderr, name="fuse-stderr", daemon=True).start()
        threading.Thread(target=self._read_stdout, name="fuse-stdout", daemon=True).start()

    # -- the child's output --------------------------------------------------------------
    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        child_final: FuseFinished | FuseFailed | None = None
        try:
            for line in proc.stdout:
                event = from_json(line)
                if isinstance(event, FuseProgress):
                    self._events.put(event)
                elif isinstance(event, FuseFinished | FuseFailed):
                    child_final = event
            proc.wait()
            final = self._conclude(proc.returncode, child_final)
        except Exception as exc:  # noqa: BLE001 - the job must always end with an event
            final = FuseFailed(f"the fuse could not be finished: {exc}", "crashed")
        self._finish(final)

    def _conclude(self, code: int, child: FuseFinished | FuseFailed | None
                  ) -> FuseFinished | FuseFailed:
        if self._cancelled.is_set():
            return FuseFailed("fuse cancelled: nothing was written", "cancelled")
        if isinstance(child, FuseFailed):
            return child
        if not isinstance(child, FuseFinished) or code != 0:
            return FuseFailed(self._crash_line(code), "memory" if code in (-9, 137) else
                              "crashed")
        return self._move_into_place()

    def _crash_line(self, code: int) -> str:
        last = next((ln for ln in reversed(self._stderr)
                     if ln.strip() and not ln.startswith(" ")), "")
        if code in (-9, 137):
            return ("the fuse process was killed (out of memory?): nothing was written; close "
                    "other programs or fuse on a machine with more memory")
        return (f"the fuse process ended unexpectedly (exit {code})"
                + (f": {last}" if last else "") + ": nothing was written")

    def _move_into_place(self) -> FuseFinished | FuseFailed:
        assert self._tmp is not None and self._target is not None
        target = self._target
        try:
            if target.exists():
                if not target.is_dir() or next(target.iterdir(), None) is not None:
                    return FuseFailed(f"{target} was filled while fusing: the fused model was "
                                      "not saved", "exists")
                target.rmdir()
            self._tmp.rename(target)
        except OSError as exc:
            return FuseFailed(f"cannot move the fused model into {target}: "
                              f"{exc.strerror or exc}", "crashed")
        self._tmp = None
        gguf: str | None = None
        if self.export_gguf:
            gguf = str(self._gguf_outside or gguf_target(target, self.gguf_path))
        return FuseFinished(str(target), round(time.perf_counter() - self._started, 3), gguf)

    def _finish(self, final: FuseFinished | FuseFailed) -> None:
        if isinstance(final, FuseFailed):
            self._cleanup()
        self._final = final
        self._events.put(final)
        self._done.set()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        outside = self._gguf_outside
        if outside is not None and not isinstance(self._final, FuseFinished):
            with contextlib.suppress(OSError):
                if outside.is_file():
                    outside.unlink()

    # -- the consumer's side -------------------------------------------------------------
    def poll(self) -> list[object]:
        """The events that arrived since the last call, without waiting; the last one is
        ``FuseFinished`` or ``FuseFailed`` once the job has ended."""
        out: list[object] = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def events(self, timeout: float | None = None) -> Iterator[object]:
        """Every event as it arrives, the final one last. With ``timeout``, stop (without a
        final event) after that many seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = self._events.get(timeout=wait)
            except queue.Empty:
                return
            yield event
            if isinstance(event, FuseFinished | FuseFailed):
                return

    def wait(self, timeout: float | None = None) -> FuseFinished | FuseFailed | None:
        """Block until the job ends; its final event (None on timeout)."""
        self._done.wait(timeout)
        return self._final

    def cancel(self) -> None:
        """Stop the child (terminate, then kill after a grace period); nothing is kept."""
        proc = self._proc
        if proc is None or self._done.is_set():
            return
        self._cancelled.set()
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def final(self) -> FuseFinished | FuseFailed | None:
        return self._final
