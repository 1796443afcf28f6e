"""The help screen: every key binding, as remapped by the config, with its id."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ...keymap import KeyRow

INTRO = ("Remap any key in the [keys] table of the config file, by id, e.g. "
         'regenerate = "ctrl+g". Every action is also in the command palette.')


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1,q", "dismiss_help", "Close", show=False),
    ]

    def __init__(self, rows: list[KeyRow]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, show_edge=False, pad_edge=False,
                      header_style="bold")
        table.add_column("keys", no_wrap=True)
        table.add_column("does")
        table.add_column("id", style="dim", no_wrap=True)
        for row in self.rows:
            table.add_row(row.keys, row.description, row.binding_id)
        with Vertical(id="help-dialog", classes="dialog"):
            yield Label("Keys", classes="dialog-title")
            yield Static(INTRO, classes="dialog-intro", markup=False)
            with VerticalScroll():
                yield Static(table, id="help-table")
            yield Label("Esc closes", classes="dialog-hint")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
