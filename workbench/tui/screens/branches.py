"""The conversation's branches, as a list: which one is shown, where each parts, its end.

Regenerating a reply, editing a message or continuing from another token makes a new
branch and keeps the old one (``sessions/branches.py``). This screen lists every branch
(every leaf of the tree) with its number, length, the positions where it forks from the
others and a preview of its last message; Enter shows the highlighted one in the chat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from ...keymap import BRANCHES_BINDINGS

if TYPE_CHECKING:
    from sessions.branches import BranchInfo


def branch_row(info: BranchInfo) -> Text:
    """``● 2  4 turns · forks at 2, 4 · "the last message…"``"""
    last = " ".join(info.last.split())
    forks = ", ".join(str(p + 1) for p in info.fork_points)
    row = Text.assemble(("● " if info.current else "  ", "bold"), (f"{info.number:>2}", "bold"),
                        f"  {info.turns} turn{'s' if info.turns != 1 else ''}")
    if forks:
        row.append(f" · forks at {forks}", "dim")
    row.append(f" · {last[:60]}{'…' if len(last) > 60 else ''}")
    row.no_wrap, row.overflow = True, "ellipsis"
    return row


class BranchesScreen(ModalScreen[int | None]):
    CSS_PATH: ClassVar[str] = "inside.tcss"
    BINDINGS = BRANCHES_BINDINGS  # type: ignore[assignment]

    def __init__(self, branches: list[BranchInfo]) -> None:
        super().__init__()
        self.branches = branches

    def compose(self) -> ComposeResult:
        with Vertical(id="branches-dialog", classes="dialog"):
            yield Label(f"Branches ({len(self.branches)})", classes="dialog-title")
            yield OptionList(*(Option(branch_row(b), id=str(b.number))
                               for b in self.branches), id="branches-list")
            yield Static("● the branch shown · Enter shows the highlighted one · Esc closes",
                         classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.focus()
        options.highlighted = next((i for i, b in enumerate(self.branches) if b.current), 0)

    @on(OptionList.OptionSelected, "#branches-list")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_close_branches(self) -> None:
        self.dismiss(None)
