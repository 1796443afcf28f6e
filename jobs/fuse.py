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
fuse leaves nothing that looks like a model. The child's life (spawn, events, cancel,
out of memory) is the jobs' one channel, ``channel.ChildJob``. The fused folder is an
ordinary model folder: ``workbench --model OUT`` loads it. (To have the models screen list
it, the face that started the fuse registers the folder,
``workbench.recent.add_model_folder``, as ``workbench quantize`` does.)

GGUF: mlx-lm exports llama, mistral and mixtral only, and only from unquantized weights
(a quantized base needs ``dequantize``); both are refused before anything starts.

This module is the job: the child process's life, from start to the folder in place. What
is refused before it starts is in ``fuse_checks.py``, the events and their JSON lines in
``fuse_events.py``; their names are importable from here too.
Nothing here imports MLX, textual, rich or prompt_toolkit.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from common.errors import WorkbenchError
from jobs.channel import CANCEL_GRACE_S, ChildJob, Ended
from jobs.fuse_checks import (
    GGUF_MODEL_TYPES,
    FuseError,
    check_adapter_for,
    check_request,
    check_save_path,
    gguf_target,
)
from jobs.fuse_events import (
    CODEC,
    FuseEvent,
    FuseFailed,
    FuseFinished,
    FuseProgress,
    from_json,
    to_json,
)

__all__ = [
    "CANCEL_GRACE_S", "DEFAULT_GGUF_PATH", "GGUF_MODEL_TYPES", "FuseError", "FuseEvent",
    "FuseFailed", "FuseFinished", "FuseJob", "FuseProgress", "check_adapter_for",
    "check_request", "check_save_path", "from_json", "gguf_target", "to_json",
]

DEFAULT_GGUF_PATH = "ggml-model-f16.gguf"  # mlx_lm fuse's --gguf-path default
KEPT = "nothing was written"


class FuseJob(ChildJob[FuseFinished | FuseFailed]):
    """One fuse, in a child process (``channel.ChildJob``). ``start()`` checks and launches;
    read events from ``stream``, with ``poll()`` (no waiting) or ``events()`` (blocking);
    ``cancel()`` stops it."""

    codec = CODEC
    finals = (FuseFinished, FuseFailed)
    what = "the fuse process"

    def __init__(self, model: str, adapter_path: str, save_path: str, *,
                 dequantize: bool = False, export_gguf: bool = False,
                 gguf_path: str = DEFAULT_GGUF_PATH, trust_remote_code: bool = False,
                 python: str | None = None) -> None:
        super().__init__(python)
        self.model = model
        self.adapter_path = adapter_path
        self.save_path = save_path
        self.dequantize = dequantize
        self.export_gguf = export_gguf
        self.gguf_path = gguf_path
        self.trust_remote_code = trust_remote_code
        self._tmp: Path | None = None
        self._target: Path | None = None
        self._gguf_outside: Path | None = None
        self._started = 0.0

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
        args = ["--model", str(model), "--adapter-path", str(adapter), "--save-path",
                str(self._tmp), "--gguf-path", gguf_arg]
        args += [flag for flag, on in (("--dequantize", self.dequantize),
                                       ("--export-gguf", self.export_gguf),
                                       ("--trust-remote-code", self.trust_remote_code)) if on]
        self._started = time.perf_counter()
        self.stream.put(FuseProgress("start", f"fusing {adapter.name} into {model.name}"))
        try:
            self._spawn("jobs.fuse_child", args)
        except WorkbenchError as exc:
            self._cleanup()
            raise FuseError(str(exc)) from None

    # -- the child's output --------------------------------------------------------------
    def _conclude(self, child: FuseFinished | FuseFailed | None, ended: Ended
                  ) -> FuseFinished | FuseFailed:
        if ended.cancelled:
            return FuseFailed(f"fuse cancelled: {KEPT}", "cancelled")
        if isinstance(child, FuseFailed) and ended.protocol_error is None:
            return child
        if not isinstance(child, FuseFinished) or ended.code != 0 or ended.protocol_error:
            return FuseFailed(*self.crash_line(
                ended, KEPT, "close other programs or fuse on a machine with more memory"))
        return self._move_into_place()

    def _failed(self, message: str, kind: str) -> FuseFailed:
        return FuseFailed(message, kind)

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
        super()._finish(final)

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        outside = self._gguf_outside
        if outside is not None and not isinstance(self._final, FuseFinished):
            with contextlib.suppress(OSError):
                if outside.is_file():
                    outside.unlink()
