"""The Train screen: train an adapter on the loaded model, and watch its loss curves live.

The form has the choices of ``workbench train`` (a preset, then the data, the fine-tune
type, layers, iterations, batch size, learning rate, prompt masking, seed, how often to
validate, early-stopping patience and the new adapter's folder). The data is the current
conversation, saved sessions (several; optionally only the replies marked good) or a data
folder of ``train.jsonl``/``valid.jsonl``.

Starting hands a ``TrainConfig`` to the training controller (``controllers/training.py``),
which runs it in a child process: the screen is only a view of the run. Closing it (Esc)
leaves the run going, and the chat usable (slower); F6 shows it again. The run view has the
train and validation loss curves (``widgets/loss_plot.py``), the speed, memory, learning
rate and ETA, the best validation loss so far, Cancel, and once it is done "Use it now".
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    Checkbox,
    ContentSwitcher,
    Input,
    Label,
    Select,
    SelectionList,
    Static,
)

from common.errors import WorkbenchError

from ...keymap import TRAIN_BINDINGS
from ..widgets.loss_plot import LossPlot

if TYPE_CHECKING:
    from ..controllers.training import TrainingController, TrainRun

SOURCES = [("this conversation", "conversation"), ("saved sessions", "sessions"),
           ("a data folder", "folder")]
TUNE_TYPES = [("LoRA", "lora"), ("DoRA", "dora"), ("full (a new model)", "full")]
# Form field -> (TrainConfig key, label, what is allowed); each is a whole number unless
# parsed as a float below.
NUMBERS: dict[str, tuple[str, str]] = {
    "num_layers": ("layers", "layers to adapt, from the last one; -1 = all"),
    "iters": ("iterations", "whole number, at least 1"),
    "batch_size": ("batch size", "whole number, at least 1"),
    "learning_rate": ("learning rate", "a number above 0, such as 1e-5"),
    "seed": ("seed", "whole number, 0 or more"),
    "steps_per_eval": ("validate every", "iterations between validations, at least 1"),
    "patience": ("patience", "validations without progress before stopping; blank = never"),
}


def config_defaults() -> dict[str, Any]:
    """``TrainConfig``'s own defaults, field by field."""
    from jobs.config import TrainConfig

    out: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def presets() -> dict[str, dict[str, Any]]:
    from jobs.config import PRESETS

    return dict(PRESETS)


def shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_number(name: str, text: str) -> Any:
    """The value of a number field, or ``ValueError`` with what is allowed."""
    text = text.strip()
    allowed = NUMBERS[name][1]
    if name == "patience" and not text:
        return None
    try:
        value: Any = float(text) if name == "learning_rate" else int(text)
    except ValueError:
        raise ValueError(f"{NUMBERS[name][0]}: {text or 'nothing'} is not allowed ({allowed})"
                         ) from None
    low = {"num_layers": -1, "seed": 0}.get(name, 1)
    if (name == "learning_rate" and not value > 0) or (name != "learning_rate" and (
            value < low or (name == "num_layers" and value == 0))):
        raise ValueError(f"{NUMBERS[name][0]}: {text} is not allowed ({allowed})")
    return value


class TrainScreen(ModalScreen[None]):
    BINDINGS = TRAIN_BINDINGS  # type: ignore[assignment]
    CSS_PATH: ClassVar[str] = "screens.tcss"

    def __init__(self, controller: TrainingController) -> None:
        super().__init__()
        self.controller = controller
        # On the demo model a first run trains on the kit's own chat set, with the quick
        # preset (well under a minute on two cores); elsewhere mlx-lm's defaults.
        self.demo_data = controller.demo_data_folder()
        self.preset = "quick" if self.demo_data is not None else "default"
        self.defaults = {**config_defaults(), **presets().get(self.preset, {})}
        self.form_wanted = False  # "New run": the form stays while the old run is shown

    # -- layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        d = self.defaults
        preset_names = list(presets())
        with Vertical(id="train-dialog", classes="dialog"):
            yield Label(self._title(), id="train-title", classes="dialog-title", markup=False)
            with ContentSwitcher(initial="train-form", id="train-views"):
                with VerticalScroll(id="train-form"):
                    with Grid(id="train-grid"):
                        yield Label("preset", classes="train-label")
                        yield Select([(n, n) for n in preset_names], id="train-preset",
                                     value=self.preset if self.preset in preset_names
                                     else Select.NULL, compact=True)
                        yield Label("fine-tune", classes="train-label")
                        yield Select(TUNE_TYPES, id="train-fine_tune_type", compact=True,
                                     value=d.get("fine_tune_type", "lora"), allow_blank=False)
                        yield Label("data", classes="train-label")
                        yield Select(SOURCES, id="train-source",
                                     value="folder" if self.demo_data else "conversation",
                                     allow_blank=False, compact=True)
                        yield Label("", classes="train-label")
                        yield Checkbox("mask prompt", bool(d.get("mask_prompt")),
                                       id="train-mask_prompt", compact=True)
                        for name, (label, _allowed) in NUMBERS.items():
                            yield Label(label, classes="train-label")
                            yield Input(shown(d.get(name)), id=f"train-{name}", compact=True,
                                        placeholder="none" if name == "patience" else "")
                    with Vertical(id="train-sessions-box"):
                        yield Label("sessions to train on (space picks)", classes="train-label",
                                    id="train-sessions-label")
                        yield SelectionList[str](id="train-sessions", compact=True)
                    yield Checkbox("only the replies marked good", bool(d.get("only_good")),
                                   id="train-only_good", compact=True)
                    with Horizontal(id="train-folder-row", classes="train-row"):
                        yield Label("data folder", classes="train-label")
                        yield Input(str(self.demo_data or ""),
                                    placeholder="a folder with train.jsonl and valid.jsonl",
                                    id="train-data", compact=True)
                    with Horizontal(classes="train-row"):
                        yield Label("adapter folder", classes="train-label")
                        yield Input(str(self.controller.default_adapter_folder()),
                                    id="train-adapter_path", compact=True)
                    yield Static("", id="train-error", markup=False)
                with Vertical(id="train-run"):
                    yield LossPlot(id="train-plot")
                    yield Static("", id="train-stats", markup=False)
                    yield Static("", id="train-losses", markup=False)
                    yield Static("", id="train-notice", markup=False)
            with Horizontal(id="train-buttons"):
                yield Button("Start training", id="train-start", variant="primary",
                             compact=True)
                yield Button("Cancel run", id="train-cancel", variant="error", compact=True)
                yield Button("Use it now", id="train-use", variant="success", compact=True)
                yield Button("New run", id="train-new", compact=True)
                yield Button("Close", id="train-close", compact=True)

    def _title(self) -> str:
        run = self.controller.run
        if run is not None and run.running:
            return f"Training {run.name}"
        model = self.controller.model_spec()
        return f"Train an adapter on {model}" if model else "Train an adapter (no model loaded)"

    def on_mount(self) -> None:
        self._source_changed()
        self.load_sessions()
        run = self.controller.run
        if run is not None:
            self.show_run(run)
        else:
            self._show_form()

    @work(exclusive=True, group="train-sessions", exit_on_error=False,
          description="list the sessions")
    async def load_sessions(self) -> None:
        store = self.app.sessions.session_store  # type: ignore[attr-defined]
        if store is None:
            return
        try:
            rows = await asyncio.to_thread(store.list)
        except (WorkbenchError, OSError):
            rows = []
        picks = self.query_one("#train-sessions", SelectionList)
        picks.clear_options()
        for row in rows:
            if row.problem is None:
                picks.add_option((f"{row.name} · {row.turns} turns · {row.title}", row.name))
        if not picks.option_count:
            self.query_one("#train-sessions-label", Label).update(
                "no saved sessions yet: chat first, or use a data folder")

    # -- the form ------------------------------------------------------------------------
    def _show_form(self) -> None:
        self.query_one("#train-views", ContentSwitcher).current = "train-form"
        self._buttons(form=True)
        self.query_one("#train-title", Label).update(self._title())
        self.query_one("#train-start", Button).focus()

    def _buttons(self, *, form: bool, run: TrainRun | None = None) -> None:
        self.query_one("#train-start").display = form
        self.query_one("#train-cancel").display = not form and run is not None and run.running
        self.query_one("#train-use").display = (not form and run is not None and run.usable
                                                 and not run.used)
        self.query_one("#train-new").display = not form and run is not None and not run.running

    @on(Select.Changed, "#train-source")
    def _source_changed(self) -> None:
        source = self.query_one("#train-source", Select).value
        self.query_one("#train-sessions-box").display = source == "sessions"
        self.query_one("#train-only_good").display = source != "folder"
        self.query_one("#train-folder-row").display = source == "folder"

    @on(Select.Changed, "#train-preset")
    def _preset_chosen(self, event: Select.Changed) -> None:
        if not isinstance(event.value, str):
            return
        chosen = presets().get(event.value, {})
        for name in NUMBERS:
            if name in chosen:
                self.query_one(f"#train-{name}", Input).value = shown(chosen[name])
        if "fine_tune_type" in chosen:
            self.query_one("#train-fine_tune_type", Select).value = chosen["fine_tune_type"]
        if "mask_prompt" in chosen:
            self.query_one("#train-mask_prompt", Checkbox).value = bool(chosen["mask_prompt"])

    def _error(self, text: str) -> None:
        self.query_one("#train-error", Static).update(text)
        self.query_one("#train-error").set_class(bool(text), "-error")

    def values(self) -> dict[str, Any]:
        """The form as ``TrainConfig`` keys; ``ValueError`` with the first problem."""
        values: dict[str, Any] = {}
        preset = self.query_one("#train-preset", Select).value
        if isinstance(preset, str):
            values.update(copy.deepcopy(presets().get(preset, {})))
            values["preset"] = preset
        for name in NUMBERS:
            values[name] = parse_number(name, self.query_one(f"#train-{name}", Input).value)
        values["fine_tune_type"] = self.query_one("#train-fine_tune_type", Select).value
        values["mask_prompt"] = self.query_one("#train-mask_prompt", Checkbox).value
        output = self.query_one("#train-adapter_path", Input).value.strip()
        if not output:
            raise ValueError("give the folder the new adapter goes to")
        values["adapter_path"] = output
        source = self.query_one("#train-source", Select).value
        sessions = self.app.sessions  # type: ignore[attr-defined]
        if source == "folder":
            folder = self.query_one("#train-data", Input).value.strip()
            if not folder:
                raise ValueError("give the data folder (train.jsonl and valid.jsonl)")
            values["data"] = folder
        elif source == "conversation":
            conversation = self.app.chat.conversation  # type: ignore[attr-defined]
            if not conversation.ends_with_reply():
                raise ValueError("this conversation has no reply to learn from yet: chat "
                                 "first, or pick saved sessions or a data folder")
            # A copy: the chat goes on while the run reads it.
            values["conversations"] = [copy.deepcopy(conversation.session)]
        else:
            names = list(self.query_one("#train-sessions", SelectionList).selected)
            if not names:
                raise ValueError("pick at least one session (space marks it)")
            values["sessions"] = names
            values["sessions_dir"] = str(sessions.folder)
        if source != "folder":
            values["only_good"] = self.query_one("#train-only_good", Checkbox).value
        return values

    def build_config(self) -> Any:
        """The ``TrainConfig`` of the form (``ValueError``/``WorkbenchError`` if refused)."""
        from jobs.config import TrainConfig

        model = self.controller.model_spec()
        if model is None:
            raise ValueError("no model is loaded: load the model to train on first (F5)")
        return TrainConfig.from_values({**self.values(), "model": model})

    @on(Button.Pressed, "#train-start")
    def action_start_training(self) -> None:
        if self.query_one("#train-views", ContentSwitcher).current != "train-form":
            return
        try:
            config = self.build_config()
        except (ValueError, TypeError, WorkbenchError) as exc:
            self._error(f"Not started: {exc}")
            return
        problem = self.controller.start(config)
        if problem:
            self._error(f"Not started: {problem}")
            return
        self._error("")
        self.form_wanted = False
        if self.controller.run is not None:
            self.show_run(self.controller.run)

    # -- the run -------------------------------------------------------------------------
    def show_run(self, run: TrainRun) -> None:
        """Repaint from ``run`` (the controller calls it at most a few times a second)."""
        if self.form_wanted:
            return  # the user asked for a new run: the ended one stays out of the way
        switcher = self.query_one("#train-views", ContentSwitcher)
        was_form = switcher.current == "train-form"
        switcher.current = "train-run"
        self.query_one("#train-title", Label).update(
            f"Training {run.name}" if run.running else f"Adapter {run.name}: {run.state}")
        self.query_one("#train-plot", LossPlot).show(run.train_points, run.val_points,
                                                     run.total_iters)
        self.query_one("#train-stats", Static).update(run.stats_line())
        self.query_one("#train-losses", Static).update(run.loss_line())
        notice = self.query_one("#train-notice", Static)
        notice.update(run.outcome() or run.notice)
        notice.set_class(run.state in ("failed", "cancelled"), "-error")
        self._buttons(form=False, run=run)
        focused = self.focused
        if was_form or focused is None or not focused.display:
            for button in ("#train-use", "#train-cancel", "#train-new", "#train-close"):
                if self.query_one(button).display:
                    self.query_one(button, Button).focus()
                    break

    @on(Button.Pressed, "#train-cancel")
    def action_cancel_training(self) -> None:
        run = self.controller.run
        if run is not None and run.running:
            self.controller.cancel()

    @on(Button.Pressed, "#train-use")
    def _use(self) -> None:
        self.controller.use_new_adapter()
        self.dismiss(None)

    @on(Button.Pressed, "#train-new")
    def _new_run(self) -> None:
        self.form_wanted = True
        self.query_one("#train-adapter_path", Input).value = str(
            self.controller.default_adapter_folder())
        self._show_form()

    @on(Button.Pressed, "#train-close")
    def action_close_train(self) -> None:
        self.dismiss(None)
