"""Fusing an adapter into the loaded model from the app: a child process, watched from a
thread.

``FuseController`` owns the app's fuse job (``fuse``, a ``FuseRun``): at most one, started
from the Fuse screen, run by ``jobs.fuse.FuseJob`` in a child process (never on the
engine thread, so the chat goes on meanwhile) and watched by the shared ``watch`` worker
(``child_jobs.py``), which awaits its stream. The job class is a parameter, so the tests
run the app on scripted fakes. A fused model is remembered as a model folder, so it shows in
the models screen; how the fuse ended is one notification. Its own module because a fuse is
a job of its own, apart from training (``training.py``, which hands the app's fuse requests
on to it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import WorkbenchError

from ... import recent
from .child_jobs import ChildJob, JobEvents, duration, first_line, unique_folder, watch

if TYPE_CHECKING:
    from ..app import WorkbenchApp


@dataclass
class FuseRun:
    adapter_name: str
    adapter_path: str
    model: str
    save_path: str
    state: str = "running"  # running | done | failed | cancelled
    message: str = "starting…"
    final: Any = None
    job: Any = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def record(self, event: Any) -> None:
        from jobs.fuse import FuseFailed, FuseFinished, FuseProgress

        if isinstance(event, FuseProgress):
            self.message = first_line(event.message) or event.stage
        elif isinstance(event, FuseFinished):
            self.final, self.state = event, "done"
            self.message = (f"Fused model written to {event.save_path} in "
                            f"{duration(event.seconds)}: it is in the models list (F5).")
        elif isinstance(event, FuseFailed):
            self.final = event
            self.state = "cancelled" if event.kind == "cancelled" else "failed"
            self.message = ("Fuse cancelled: nothing was kept." if self.state == "cancelled"
                            else f"Fuse failed: {first_line(event.message)}")


FuseJobFactory = Callable[..., ChildJob]


def _real_fuse_job(model: str, adapter_path: str, save_path: str, *,
                   dequantize: bool = False, export_gguf: bool = False) -> ChildJob:
    from jobs.fuse import FuseJob

    return FuseJob(model, adapter_path, save_path, dequantize=dequantize,
                   export_gguf=export_gguf)


def _fuse_refused(message: str, kind: str) -> Any:
    from jobs.fuse import FuseFailed

    return FuseFailed(message, kind)


class FuseController:
    def __init__(self, app: WorkbenchApp, model_spec: Callable[[], str | None], *,
                 fuse_job: FuseJobFactory | None = None) -> None:
        self.app = app
        self.model_spec = model_spec  # what the fuse is into: the loaded model
        self.fuse_job = fuse_job or _real_fuse_job
        self.fuse: FuseRun | None = None

    def default_fuse_folder(self, adapter_name: str) -> Path:
        info = self.app.models.info
        model = info.name.rsplit("/", 1)[-1] if info is not None else "model"
        return unique_folder(recent.model_folders()[0], f"{model}-{adapter_name}-fused")

    def open_fuse(self, path: str, name: str) -> None:
        from ..screens.fuse import FuseScreen

        if self.fuse is not None and self.fuse.running and self.fuse.adapter_path != path:
            self.app.notify(f"A fuse is running already ({self.fuse.adapter_name}): wait for "
                            "it, or cancel it on its screen.", severity="warning")
            path, name = self.fuse.adapter_path, self.fuse.adapter_name
        self.app.push_screen(FuseScreen(self, path, name))

    def start_fuse(self, adapter_path: str, adapter_name: str, save_path: str, *,
                   dequantize: bool = False, export_gguf: bool = False) -> str | None:
        """Fuse the adapter into the loaded model, into the new folder ``save_path``."""
        if self.fuse is not None and self.fuse.running:
            return f"A fuse is running already ({self.fuse.adapter_name})"
        model = self.model_spec()
        if model is None:
            return "Load the model the adapter was trained on first (F5)"
        if not save_path.strip():
            return "Give a new folder to write the fused model to"
        target = Path(save_path.strip()).expanduser()
        if target.exists():
            return f"{target} exists already: give a new folder (nothing is overwritten)"
        try:
            job = self.fuse_job(model, adapter_path, str(target), dequantize=dequantize,
                                export_gguf=export_gguf)
        except WorkbenchError as exc:
            return first_line(str(exc))
        self.fuse = FuseRun(adapter_name, adapter_path, model, str(target), job=job)
        self.app.run_worker(
            watch(self.app.post_message, "fuse", job, _fuse_refused),
            group="fuse", exclusive=True, exit_on_error=False, description="fuse an adapter")
        return None

    def cancel_fuse(self) -> None:
        if self.fuse is not None and self.fuse.running:
            self.fuse.job.cancel()
            self.fuse.message = "cancelling…"
            self._show_fuse()

    def arrived(self, message: JobEvents) -> None:
        """A batch of the fuse's events (on the UI thread)."""
        fuse = self.fuse
        if fuse is None:
            return
        for event in message.events:
            fuse.record(event)
        if message.ended and fuse.running:
            fuse.state, fuse.message = "failed", "Fuse failed: the job stopped without a word"
        if message.ended:
            if fuse.state == "done":
                try:
                    recent.add_model_folder(fuse.save_path)
                except OSError as exc:
                    fuse.message += f" (could not remember the folder: {exc})"
            self.app.notify(fuse.message, title="Fuse", timeout=12, severity=(
                "information" if fuse.state == "done" else
                "warning" if fuse.state == "cancelled" else "error"))
        self._show_fuse()

    def _show_fuse(self) -> None:
        from ..screens.fuse import FuseScreen

        for screen in self.app.screen_stack:
            if isinstance(screen, FuseScreen) and self.fuse is not None:
                screen.show_fuse(self.fuse)
