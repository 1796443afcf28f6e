"""Fuse an adapter into the loaded model: a new model folder, with mlx-lm's fuse.

Asks for the new folder (nothing is overwritten), whether to dequantize and whether to
export GGUF too, then hands the job to the fuse controller (``controllers/fusing.py``),
which runs it in a child process. The screen shows its progress; closing it (Esc) leaves the
fuse going, and a notification says how it ended. The fused model is remembered as a model
folder, so it is in the models screen (F5) afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from ...keymap import FUSE_BINDINGS

if TYPE_CHECKING:
    from ..controllers.fusing import FuseController, FuseRun


class FuseScreen(ModalScreen[None]):
    BINDINGS = FUSE_BINDINGS  # type: ignore[assignment]
    CSS_PATH: ClassVar[str] = "screens.tcss"

    def __init__(self, controller: FuseController, adapter_path: str,
                 adapter_name: str) -> None:
        super().__init__()
        self.controller = controller
        self.adapter_path = adapter_path
        self.adapter_name = adapter_name

    def compose(self) -> ComposeResult:
        model = self.controller.model_spec() or "(no model loaded)"
        with Vertical(id="fuse-dialog", classes="dialog"):
            yield Label(f"Fuse {self.adapter_name} into a model", classes="dialog-title",
                        markup=False)
            yield Static(f"base model: {model}\nadapter: {self.adapter_path}",
                         id="fuse-facts", classes="dialog-intro", markup=False)
            with Horizontal(classes="train-row"):
                yield Label("new folder", classes="train-label")
                yield Input(str(self.controller.default_fuse_folder(self.adapter_name)),
                            id="fuse-save-path", compact=True)
            with Horizontal(id="fuse-options"):
                yield Checkbox("dequantize", id="fuse-dequantize", compact=True)
                yield Checkbox("export GGUF too", id="fuse-gguf", compact=True)
            yield Static("", id="fuse-line", markup=False)
            with Horizontal(id="fuse-buttons"):
                yield Button("Fuse", id="fuse-start", variant="primary", compact=True)
                yield Button("Cancel fuse", id="fuse-cancel", variant="error", compact=True)
                yield Button("Close", id="fuse-close", compact=True)

    def on_mount(self) -> None:
        fuse = self.controller.fuse
        if fuse is not None and (fuse.running or fuse.adapter_path == self.adapter_path):
            self.show_fuse(fuse)
        else:
            self.query_one("#fuse-cancel").display = False
        self.query_one("#fuse-save-path", Input).focus()

    def show_fuse(self, fuse: FuseRun) -> None:
        line = self.query_one("#fuse-line", Static)
        line.update(fuse.message)
        line.set_class(fuse.state in ("failed", "cancelled"), "-error")
        self.query_one("#fuse-cancel").display = fuse.running
        self.query_one("#fuse-start").display = not fuse.running
        if fuse.running:
            self.query_one("#fuse-save-path", Input).value = fuse.save_path
        elif fuse.state == "done":
            self.query_one("#fuse-save-path", Input).value = str(
                self.controller.default_fuse_folder(self.adapter_name))
        focused = self.focused
        if focused is None or not focused.display:
            self.query_one("#fuse-close", Button).focus()

    @on(Button.Pressed, "#fuse-start")
    @on(Input.Submitted, "#fuse-save-path")
    def _start(self) -> None:
        problem = self.controller.start_fuse(
            self.adapter_path, self.adapter_name,
            self.query_one("#fuse-save-path", Input).value,
            dequantize=self.query_one("#fuse-dequantize", Checkbox).value,
            export_gguf=self.query_one("#fuse-gguf", Checkbox).value)
        if problem:
            line = self.query_one("#fuse-line", Static)
            line.update(f"Not started: {problem}")
            line.add_class("-error")
            return
        if self.controller.fuse is not None:
            self.show_fuse(self.controller.fuse)
            self.query_one("#fuse-cancel", Button).focus()

    @on(Button.Pressed, "#fuse-cancel")
    def _cancel(self) -> None:
        self.controller.cancel_fuse()

    @on(Button.Pressed, "#fuse-close")
    def action_close_fuse(self) -> None:
        self.dismiss(None)
