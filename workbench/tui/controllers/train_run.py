"""One training run as the app knows it: its events, recorded on the UI thread, and the
lines the Train screen and the chat show of it.

Its own module because this is the run's state and wording, apart from starting and
watching the child (``training.py``): the Train screen draws a ``TrainRun`` and the tests
read one, without a controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.formats import fmt_bytes

from .child_jobs import duration, first_line

if TYPE_CHECKING:
    from jobs.events import TrainFailed, TrainFinished, TrainProgress, TrainStarted, ValProgress


@dataclass
class TrainRun:
    """One training run as the UI knows it: every event recorded, on the UI thread."""

    config: Any  # the TrainConfig it was started with
    adapter_path: str
    state: str = "starting"  # starting | running | done | failed | cancelled
    started: TrainStarted | None = None
    progress: TrainProgress | None = None
    val: ValProgress | None = None
    train_points: list[tuple[int, float]] = field(default_factory=list)
    val_points: list[tuple[int, float]] = field(default_factory=list)
    notice: str = ""
    final: TrainFinished | TrainFailed | None = None
    job: Any = None  # the ChildJob
    used: bool = False  # "Use it now" was pressed

    @property
    def name(self) -> str:
        return Path(self.adapter_path).name

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running")

    @property
    def total_iters(self) -> int:
        if self.started is not None:
            return int(self.started.total_iters)
        return int(getattr(self.config, "iters", 0) or 0)

    @property
    def usable(self) -> bool:
        """Finished with an adapter that can be swapped in (a full fine-tune is a model)."""
        return (self.state == "done"
                and getattr(self.config, "fine_tune_type", "lora") in ("lora", "dora"))

    def record(self, event: Any) -> None:
        from jobs.events import (
            TrainFailed,
            TrainFinished,
            TrainNotice,
            TrainProgress,
            TrainStarted,
            ValProgress,
        )

        if isinstance(event, TrainStarted):
            self.started, self.state = event, "running"
            self.adapter_path = event.adapter_path or self.adapter_path
        elif isinstance(event, TrainProgress):
            self.progress, self.state = event, "running"
            self.train_points.append((event.iteration, event.train_loss))
        elif isinstance(event, ValProgress):
            self.val = event
            self.val_points.append((event.iteration, event.val_loss))
        elif isinstance(event, TrainNotice):
            self.notice = first_line(event.message)
        elif isinstance(event, TrainFinished):
            self.final, self.state = event, "done"
            self.adapter_path = event.adapter_path or self.adapter_path
        elif isinstance(event, TrainFailed):
            self.final = event
            self.state = "cancelled" if event.kind == "cancelled" else "failed"

    # -- what the screen and the chat's line say -----------------------------------------
    def stats_line(self) -> str:
        """Iterations, speed, tokens/s, peak memory, learning rate, ETA."""
        p, total = self.progress, self.total_iters
        if p is None:
            if self.started is not None:
                s = self.started
                return (f"training on {s.train_examples} examples ({s.valid_examples} for "
                        f"validation), {s.trainable_parameters:,} trainable parameters: the "
                        "first report comes soon…")
            return "starting: checking the data and the memory, loading the model…"
        eta = "–" if self.state != "running" else duration(p.eta_s)
        return (f"iteration {p.iteration}/{total} · {p.iterations_per_second:.2f} it/s · "
                f"{p.tokens_per_second:,.0f} tok/s · peak {fmt_bytes(p.peak_memory)} · "
                f"lr {p.learning_rate:.1e} · ETA {eta}")

    def loss_line(self) -> str:
        """The latest losses and the best validation loss so far."""
        train = f"{self.progress.train_loss:.3f}" if self.progress else "–"
        if self.val is None:
            return f"train loss {train} · val loss – (every {self._eval_every()} iterations)"
        v = self.val
        return (f"train loss {train} · val loss {v.val_loss:.3f} · best {v.best_val_loss:.3f}"
                f" at iteration {v.best_iteration}")

    def _eval_every(self) -> int:
        return int(getattr(self.config, "steps_per_eval", 0) or 0)

    def outcome(self) -> str:
        """How the run ended, in one line ("" while it runs)."""
        from jobs.events import TrainFailed, TrainFinished

        final = self.final
        if isinstance(final, TrainFinished):
            best = (f"best val loss {final.best_val_loss:.3f} at iteration "
                    f"{final.best_iteration}" if final.best_val_loss is not None
                    else f"{final.iterations} iterations")
            early = ", stopped early" if final.stopped_early else ""
            return (f"Adapter {self.name} trained in {duration(final.seconds)} ({best}{early})"
                    f": {final.adapter_path}")
        if isinstance(final, TrainFailed):
            if final.kind == "cancelled":
                return ("Training cancelled: no new adapter (the adapters you had are as "
                        "they were).")
            return f"Training failed: {first_line(final.message)}"
        return ""

    def chat_line(self) -> str:
        """The one line under the chat while the run goes on."""
        where = ""
        if self.progress is not None:
            p = self.progress
            where = (f": iteration {p.iteration}/{self.total_iters}, loss "
                     f"{p.train_loss:.3f}, ETA {duration(p.eta_s)}")
        return (f"Training {self.name}{where} · replies are slower meanwhile (same GPU) · "
                "F6 shows the curves")
