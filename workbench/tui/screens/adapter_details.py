"""The details view of one adapter: everything the workbench checked, and its config.

Opened from the Adapters pane (``d``) or the command palette, with a fresh
``Engine.check_adapter`` result: the facts the pane has no room for (path, target layers,
tensors, parameters, trained scale, base model, notes), whether it can be used with the
loaded model and why not, and ``adapter_config.json`` as written by ``mlx_lm lora``. It
dismisses with the adapter's path when the user asks to use it, else None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from rich.table import Table
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from common.formats import fmt_bytes
from engine.adapter_swap import AdapterState
from engine.adapters import AdapterInfo

from ..labels import scale_label
from ..widgets.meters import count


def fact_rows(info: AdapterInfo) -> list[tuple[str, str]]:
    """The details view's rows, in reading order."""
    rows = [
        ("folder", info.path),
        ("type", info.type_label),
        ("rank", str(info.rank) if info.rank else "?"),
        ("trained scale", f"{info.scale:g}" if info.scale else "?"),
        ("dropout", f"{info.dropout:g}"),
        ("layers", f"{info.layers_label} (config: "
                   f"{'all' if info.num_layers == -1 else info.num_layers})"),
        ("targets", ", ".join(info.keys) if info.keys else "every linear layer"),
        ("tensors", str(info.num_tensors)),
        ("parameters", count(info.num_parameters) if info.num_parameters else "?"),
        ("weights file", fmt_bytes(info.size_bytes) if info.size_bytes else "?"),
        ("trained on", info.base_model or "not recorded"),
        ("checked against", info.checked_against or "its files only (no model loaded)"),
    ]
    return rows


def mode_line(state: AdapterState) -> str:
    """How the active adapter runs: fused (and what its copy costs) or unfused (and why)."""
    if state.mode == "fused":
        return (f"Runs fused: merged into a copy of the weights it touches "
                f"({fmt_bytes(state.fused_bytes)}), at the base model's speed "
                f"(adapter mode {state.adapter_mode}).")
    if state.adapter_mode == "unfused":
        return "Runs unfused (adapter mode unfused): no extra memory, slower decoding on a GPU."
    return f"Runs unfused: {state.mode_note}." if state.mode_note else "Runs unfused."


class AdapterDetailsScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close_details", "Close", show=False),
    ]

    @dataclass
    class FuseWanted(Message):
        """The user asked to fuse this adapter into a model (the app asks where)."""

        path: str
        name: str

    def __init__(self, info: AdapterInfo, active_scale: float | None = None,
                 state: AdapterState | None = None) -> None:
        """``active_scale`` is the scale it is used at when it is the active adapter;
        ``state`` the engine's AdapterState then (how it runs: fused or unfused)."""
        super().__init__()
        self.info = info
        self.active_scale = active_scale
        self.state = state

    def compose(self) -> ComposeResult:
        info = self.info
        table = Table(box=None, show_header=False, expand=True, show_edge=False,
                      pad_edge=False)
        table.add_column("what", style="dim", no_wrap=True, width=16)
        table.add_column("value", overflow="fold")
        for name, value in fact_rows(info):
            table.add_row(name, value)
        if info.valid:
            verdict = "Can be used with the loaded model."
            if self.active_scale is not None:
                verdict = f"Active now, at {scale_label(self.active_scale)} its trained scale."
        else:
            verdict = f"Cannot be used: {info.reason}"
        # The facts scroll; the title and the buttons stay (a small terminal shows both).
        with Vertical(id="adapter-details", classes="dialog"):
            yield Label(f"Adapter {info.name}", classes="dialog-title")
            with VerticalScroll(id="adapter-details-body"):
                yield Static(verdict, id="adapter-verdict", markup=False,
                             classes="" if info.valid else "-error")
                if self.state is not None and self.state.mode is not None:
                    yield Static(mode_line(self.state), id="adapter-mode", markup=False)
                for note in info.notes:
                    yield Static(f"Note: {note}", classes="adapter-note", markup=False)
                yield Static(table, id="adapter-facts")
                yield Label("adapter_config.json", classes="section")
                config = (json.dumps(info.config, indent=2, sort_keys=True, default=str)
                          if info.config else "(not readable)")
                yield Static(config, id="adapter-config", markup=False)
            with Horizontal(id="adapter-details-buttons"):
                yield Button("Use this adapter", id="use-adapter", variant="primary",
                             compact=True,
                             disabled=not info.valid or self.active_scale is not None)
                yield Button("Fuse into a model…", id="fuse-adapter", compact=True,
                             disabled=not info.valid)
                yield Button("Close", id="close-details", compact=True)

    def on_mount(self) -> None:
        self.query_one("#close-details", Button).focus()

    @on(Button.Pressed, "#use-adapter")
    def _use(self) -> None:
        self.dismiss(self.info.path)

    @on(Button.Pressed, "#fuse-adapter")
    def _fuse(self) -> None:
        self.app.post_message(self.FuseWanted(self.info.path, self.info.name))
        self.dismiss(None)

    @on(Button.Pressed, "#close-details")
    def action_close_details(self) -> None:
        self.dismiss(None)
