"""Training adapters from the app: a child process, watched from a thread.

``TrainingController`` owns the app's training run (``run``, a ``TrainRun``, in
``train_run.py``). It runs in a child process (``jobs.runner.TrainJob``), never on
the engine thread, so the chat goes on meanwhile (slower: the child uses the same GPU), and
is watched by the shared ``watch`` worker (``child_jobs.py``), which awaits its stream. The
job class is a parameter, so the tests run the app on scripted fakes.

When a run finishes, its adapter folder is added to the Adapters pane (listed and checked
again) and can be used at once ("Use it now" on the Train screen). A failed or cancelled
run is one notification; the adapters that were there are as they were.

It is also the app's one way in to the jobs about adapters (``app.training``): the fuse job
is ``fusing`` (a ``FuseController``, ``fusing.py``) and the Eval screen ``evaluation`` (an
``EvalController``, ``evaluation.py``); ``fuse``, ``fuse_job``, ``evaluate`` and the
``open_``/``start_``/``cancel_`` methods below hand on to them, and the names that used to
live here (``JobEvents``, ``watch``, ``TrainRun``, ``FuseRun``...) are importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import WorkbenchError

from .child_jobs import ChildJob, JobEvents, duration, first_line, unique_folder, watch
from .evaluation import EvalController
from .fusing import FuseController, FuseJobFactory, FuseRun
from .train_run import TrainRun

if TYPE_CHECKING:
    from ..app import WorkbenchApp

__all__ = [
    "ChildJob", "FuseJobFactory", "FuseRun", "JobEvents", "TrainJobFactory", "TrainRun",
    "TrainingController", "duration", "first_line", "unique_folder", "watch",
]

TrainJobFactory = Callable[[Any], ChildJob]


def _real_train_job(config: Any) -> ChildJob:
    from jobs.runner import TrainJob

    return TrainJob(config)


def _train_refused(message: str, kind: str) -> Any:
    from jobs.events import TrainFailed

    return TrainFailed(message, kind if kind != "error" else "bad-setting")


class TrainingController:
    def __init__(self, app: WorkbenchApp, *, train_job: TrainJobFactory | None = None,
                 fuse_job: FuseJobFactory | None = None,
                 evaluate: Callable[..., Any] | None = None) -> None:
        self.app = app
        self.train_job = train_job or _real_train_job
        self.run: TrainRun | None = None
        self._badge: Any = None
        self.fusing = FuseController(app, self.model_spec, fuse_job=fuse_job)
        self.evaluation = EvalController(app, evaluate=evaluate)

    # -- the screens ---------------------------------------------------------------------
    def open_screen(self) -> None:
        from ..screens.train import TrainScreen

        if isinstance(self.app.screen, TrainScreen):
            return
        self.app.push_screen(TrainScreen(self))

    def model_spec(self) -> str | None:
        """What the run trains on: the loaded model (its repo id, else its folder)."""
        from .models import model_spec

        info = self.app.models.info
        return model_spec(info) if info is not None else None

    def demo_data_folder(self) -> Path | None:
        """On the demo chat model: the kit's small training set (so a first run needs no
        data of one's own); else None."""
        info = self.app.models.info
        if info is None or not info.is_demo:
            return None
        folder = Path(info.path).parent / "train-data"
        return folder if (folder / "train.jsonl").is_file() else None

    def default_adapter_folder(self) -> Path:
        """A new folder in the adapters folder, named after the model and the day."""
        info = self.app.models.info
        model = (info.name.rsplit("/", 1)[-1] if info is not None else "adapter")
        return unique_folder(self.app.config.adapters_path(),
                             f"{model}-{time.strftime('%Y%m%d')}")

    # -- training ------------------------------------------------------------------------
    def start(self, config: Any) -> str | None:
        """Start training with ``config`` (a ``TrainConfig``); None, or why not."""
        if self.run is not None and self.run.running:
            return (f"A training run is going already ({self.run.name}): cancel it first, "
                    "or wait for it")
        try:
            job = self.train_job(config)
        except WorkbenchError as exc:
            return first_line(str(exc))
        run = TrainRun(config, str(getattr(config, "adapter_path", "") or ""), job=job)
        self.run = run
        self.app.run_worker(
            watch(self.app.post_message, "train", job, _train_refused),
            group="train", exclusive=True, exit_on_error=False, description="train an adapter")
        self._show()
        return None

    def cancel(self) -> None:
        if self.run is not None and self.run.running:
            self.run.job.cancel()
            self.run.notice = "cancelling…"
            self._show()

    def cancel_all(self) -> None:
        """Ask the children to stop (``cancel`` never waits: SIGTERM, then a kill later)."""
        for run in (self.run, self.fuse):
            if run is not None and run.running and run.job is not None:
                try:
                    run.job.cancel()
                except Exception:  # noqa: BLE001 - at exit: stop what can be stopped
                    pass

    def running_work(self) -> str | None:
        """What quitting now would stop and lose (a training run, a fuse), in words."""
        run, fuse = self.run, self.fuse
        if run is not None and run.running:
            done = run.progress.iteration if run.progress is not None else 0
            return (f"Training {run.name} is going (iteration {done}/{run.total_iters}): "
                    "quitting stops it, and the run is lost.")
        if fuse is not None and fuse.running:
            return "A fuse is going: quitting stops it and the fused model is not written."
        return None

    def stop_all(self) -> None:
        """At exit: stop the children now (a child left running would go on training)."""
        self.cancel_all()

    def arrived(self, message: JobEvents) -> None:
        """A batch of a job's events (on the UI thread)."""
        if message.kind == "fuse":
            self.fusing.arrived(message)
            return
        run = self.run
        if run is None:
            return
        for event in message.events:
            run.record(event)
        if message.ended and run.running:  # ended without saying how
            run.state = "failed"
        self._show()
        if message.ended:
            self._ended(run)

    def _ended(self, run: TrainRun) -> None:
        line = run.outcome()
        if run.state == "done":
            self.app.adapters.add_folder(run.adapter_path)
            if run.usable:
                line += " · Use it now on the Train screen (F6), or in the Adapters pane."
            else:
                line += " · A full fine-tune is a model: fuse it or load it with mlx_lm."
            self.app.notify(line, title="Training", timeout=15)
        elif run.state == "cancelled":
            self.app.notify(line, title="Training", severity="warning", timeout=8)
        else:
            self.app.notify(line, title="Training", severity="error", timeout=15)

    def use_new_adapter(self) -> None:
        """Swap the adapter of the finished run in, from the next reply on."""
        run = self.run
        if run is None or not run.usable:
            self.app.notify("No trained adapter to use yet.", severity="warning")
            return
        run.used = True
        self.app.adapters.choose(run.adapter_path, run.name)

    # -- what shows it -------------------------------------------------------------------
    def _show(self) -> None:
        from ..screens.train import TrainScreen

        run = self.run
        for screen in self.app.screen_stack:
            if isinstance(screen, TrainScreen) and run is not None:
                screen.show_run(run)
        self._show_badge()

    def _show_badge(self) -> None:
        from textual.css.query import NoMatches

        from ..widgets.train_badge import TrainBadge

        run = self.run
        if self._badge is None:
            if run is None or not run.running:
                return
            try:
                column = self.app.query_one("#chat-column")
                self._badge = TrainBadge()
                column.mount(self._badge, before="#status")
            except NoMatches:
                return
        self._badge.show_line(run.chat_line() if run is not None and run.running else "")

    # -- fusing and evaluating: handed on ------------------------------------------------
    @property
    def fuse(self) -> FuseRun | None:
        return self.fusing.fuse

    @property
    def fuse_job(self) -> FuseJobFactory:
        return self.fusing.fuse_job

    @fuse_job.setter
    def fuse_job(self, factory: FuseJobFactory) -> None:
        self.fusing.fuse_job = factory

    @property
    def evaluate(self) -> Callable[..., Any] | None:
        return self.evaluation.evaluate  # None: jobs.evaluate.evaluate_on_engine

    @evaluate.setter
    def evaluate(self, evaluate: Callable[..., Any] | None) -> None:
        self.evaluation.evaluate = evaluate

    def default_fuse_folder(self, adapter_name: str) -> Path:
        return self.fusing.default_fuse_folder(adapter_name)

    def open_fuse(self, path: str, name: str) -> None:
        self.fusing.open_fuse(path, name)

    def start_fuse(self, adapter_path: str, adapter_name: str, save_path: str, *,
                   dequantize: bool = False, export_gguf: bool = False) -> str | None:
        return self.fusing.start_fuse(adapter_path, adapter_name, save_path,
                                      dequantize=dequantize, export_gguf=export_gguf)

    def cancel_fuse(self) -> None:
        self.fusing.cancel_fuse()

    def open_eval(self) -> None:
        """The Eval screen; its prompts to begin with: the last run's data, if any."""
        run = self.run
        self.evaluation.open_eval(
            str(getattr(run.config, "data", "") or "") if run is not None else "")

    # -- the palette ---------------------------------------------------------------------
    def commands(self) -> Sequence[tuple[str, str, Callable[[], Any]]]:
        """(title, help, run) of what the palette offers about training now."""
        found: list[tuple[str, str, Callable[[], Any]]] = []
        run = self.run
        if run is not None and run.running:
            found.append(("Cancel the training run", f"Stop training {run.name} (no new "
                          "adapter is kept)", self.cancel))
        if run is not None and run.usable:
            found.append((f"Use the new adapter: {run.name}", "Swap in the adapter just "
                          "trained, from the next reply on", self.use_new_adapter))
        return found
