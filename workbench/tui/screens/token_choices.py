"""One token of a reply and the alternatives the model weighed for it.

Opened from the probability view (Enter on the token under the cursor): the token chosen,
its probability and the entropy of the distribution it came from, then the top
alternatives (``TokenLogprob.top``) with theirs. Choosing another one asks to continue the
reply from that point with it instead: the chat controller starts a new branch there (the
old reply is kept as its sibling) whose reply begins with the same tokens up to that
point and then the one chosen (``TurnOptions.reply_prefix``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from engine import TokenLogprob

from ...keymap import TOKEN_CHOICES_BINDINGS
from ..widgets.tokens import percent
from ..widgets.visible import visible


@dataclass(frozen=True)
class TokenChoice:
    """The alternative picked: continue from ``position`` with ``token`` instead."""

    position: int
    token: int
    text: str
    logprob: float


def shown(text: str) -> str:
    """A token's text where its spaces and newlines can be seen: ``␣list``, ``⏎``."""
    return visible(text).replace("\n", "⏎").replace(" ", "␣") or "∅"


class TokenChoicesScreen(ModalScreen[TokenChoice | None]):
    CSS_PATH: ClassVar[str] = "inside.tcss"
    BINDINGS = TOKEN_CHOICES_BINDINGS  # type: ignore[assignment]

    def __init__(self, token: TokenLogprob, position: int, before: str) -> None:
        super().__init__()
        self.token = token
        self.position = position
        self.before = before  # the reply's text just before the token, for context

    def compose(self) -> ComposeResult:
        token = self.token
        head = Text.assemble(("…" + visible(self.before[-48:]).replace("\n", " "), "dim"),
                             (visible(token.text), "bold reverse"))
        with Vertical(id="token-dialog", classes="dialog"):
            yield Label(f"Token {self.position + 1} of the reply", classes="dialog-title")
            yield Static(head, id="token-context")
            yield Static(f"chosen {shown(token.text)}  {percent(token.logprob)} · entropy "
                         f"{token.entropy:.2f} nats", id="token-facts", markup=False)
            options = []
            for token_id, text, logprob in token.top:
                mark = "  (chosen)" if token_id == token.token else ""
                label = Text.assemble((f"{percent(logprob):>5}  ", "bold"), shown(text),
                                      (mark, "dim"))
                options.append(Option(label, id=str(token_id), disabled=bool(mark)))
            yield OptionList(*options, id="token-options")
            yield Static("Enter: continue the reply from here with that token instead (a "
                         "new branch; this reply is kept) · Esc closes", classes="dialog-hint",
                         markup=False)

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.focus()
        first = next((i for i, o in enumerate(options.options) if not o.disabled), None)
        options.highlighted = first

    @on(OptionList.OptionSelected, "#token-options")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        token_id = int(event.option.id or 0)
        for top_id, text, logprob in self.token.top:
            if top_id == token_id:
                self.dismiss(TokenChoice(self.position, top_id, text, logprob))
                return

    def action_close_choices(self) -> None:
        self.dismiss(None)
