"""The conversation pane: the scrolling list of turns, and the turn the user selected.

With the focus here, Up/Down select a turn (``-selected``) and the chat's keys act on it
(``keymap.CHAT_BINDINGS``): Left/Right move the token cursor of a shaded reply, Enter opens
the token's alternatives (or the reasoning block), ``[``/``]`` go to the sibling branches,
``e`` edits a message and ``r`` writes a reply again, each as a new branch. What to do is
the chat controller's call: each key posts ``ChatView.TurnAction``. The scroll container
is anchored, so it follows a reply being written until the user scrolls up.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from ...keymap import CHAT_BINDINGS
from .chat import AssistantTurn, UserTurn
from .prompt import TakesNoText, redirect_typing

EMPTY_HINT = (
    "Type a message below and press Enter.\n\n"
    "Esc stops a reply · Ctrl+R regenerates it · Ctrl+L edits your last message · "
    "F2 settings · F1 all keys · Ctrl+P every command"
)


class ChatView(TakesNoText, VerticalScroll):
    """The scrolling list of turns (with a hint while there are none)."""

    BINDINGS = CHAT_BINDINGS  # type: ignore[assignment]

    @dataclass
    class TurnAction(Message):
        """The user asked for ``action`` on the selected turn (message ``index``);
        ``position`` is the token cursor's (``open`` on a shaded reply), else -1."""

        chat_view: ChatView
        action: str  # open | branch-prev | branch-next | edit | regenerate
        turn: UserTurn | AssistantTurn
        index: int
        position: int = -1

        @property
        def control(self) -> ChatView:
            return self.chat_view

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.selected: UserTurn | AssistantTurn | None = None
        self._turns_at_blur = -1  # how many turns there were when the focus left

    def compose(self) -> ComposeResult:
        yield Static(EMPTY_HINT, id="empty-hint", markup=False)

    def on_mount(self) -> None:
        self.anchor()

    def on_key(self, event: events.Key) -> None:
        redirect_typing(self, event)  # typing while the chat has the focus: a message

    def on_focus(self) -> None:
        turns = self.turns()
        if turns and len(turns) != self._turns_at_blur:  # new turns: start at the latest
            self.select(turns[-1])
        if self._current() is not None and self.selected is not None:
            self.selected.add_class("-focused")

    def _current(self) -> UserTurn | AssistantTurn | None:
        """The selected turn; the last one when none is (the chat was drawn again)."""
        if self.selected is None or self.selected not in self.turns():
            turns = self.turns()
            self.select(turns[-1] if turns else None)
        return self.selected

    def on_blur(self) -> None:
        self._turns_at_blur = len(self.turns())
        if self.selected is not None:
            self.selected.remove_class("-focused")

    def on_click(self, event: events.Click) -> None:
        """A click on a turn selects it (a click on a reasoning title only folds it)."""
        widget = event.widget
        while widget is not None and not isinstance(widget, UserTurn | AssistantTurn):
            widget = widget.parent if isinstance(widget.parent, Widget) else None
        if isinstance(widget, UserTurn | AssistantTurn):
            self.select(widget)
            self.focus()

    def _show_hint(self) -> None:
        self.query_one("#empty-hint").display = not self.turns()

    def turns(self) -> list[UserTurn | AssistantTurn]:
        return [w for w in self.children if isinstance(w, UserTurn | AssistantTurn)]

    async def add_user(self, text: str) -> UserTurn:
        turn = UserTurn(text)
        await self.mount(turn)
        self._show_hint()
        self.anchor()
        return turn

    async def add_assistant(self, title: str) -> AssistantTurn:
        turn = AssistantTurn(title)
        await self.mount(turn)
        self.anchor()
        return turn

    def last_assistant(self) -> AssistantTurn | None:
        for widget in reversed(self.turns()):
            if isinstance(widget, AssistantTurn):
                return widget
        return None

    def turn_at(self, index: int) -> UserTurn | AssistantTurn | None:
        """The turn that shows message ``index`` of the conversation."""
        return next((t for t in self.turns() if t.index == index), None)

    async def remove_turns(self, count: int) -> None:
        """Remove the last ``count`` turns."""
        turns = self.turns()
        if count > 0 and turns:
            await self.remove_children(turns[-count:])
        self._show_hint()

    async def clear(self) -> None:
        self.selected = None
        await self.remove_children(self.turns())
        self._show_hint()

    # -- the selected turn -----------------------------------------------------------------
    def select(self, turn: UserTurn | AssistantTurn | None) -> None:
        if self.selected is not None and self.selected.is_attached:
            self.selected.remove_class("-selected", "-focused")
            if isinstance(self.selected, AssistantTurn):
                self.selected.token_view.cursor = None
                self.selected.token_view.refresh()
        self.selected = turn
        if turn is not None:
            turn.add_class("-selected")
            turn.set_class(self.has_focus, "-focused")
            self.scroll_to_widget(turn, animate=False, top=turn.size.height > self.size.height)

    def _step(self, step: int) -> None:
        turns = self.turns()
        if not turns:
            return
        at = turns.index(self.selected) if self.selected in turns else len(turns)
        self.select(turns[min(max(at + step, 0), len(turns) - 1)])

    def action_turn_prev(self) -> None:
        self._step(-1)

    def action_turn_next(self) -> None:
        self._step(1)

    def _shaded(self) -> AssistantTurn | None:
        turn = self._current()
        if isinstance(turn, AssistantTurn) and turn.token_view.display:
            return turn
        return None

    def action_token_step(self, step: int) -> None:
        turn = self._shaded()
        if turn is None:
            return
        turn.token_view.move(step)

    def _post(self, action: str, position: int = -1) -> None:
        turn = self._current()
        if turn is not None:
            self.post_message(self.TurnAction(self, action, turn, turn.index, position))

    def action_open_turn(self) -> None:
        turn = self._shaded()
        if turn is not None:
            cursor = turn.token_view.cursor
            if cursor is None:
                cursor = turn.token_view.move(-1)
            if cursor is not None:
                self._post("open", cursor)
            return
        if isinstance(self.selected, AssistantTurn):
            self.selected.toggle_reasoning()

    def action_branch_step(self, step: int) -> None:
        self._post("branch-next" if step > 0 else "branch-prev")

    def action_edit_turn(self) -> None:
        self._post("edit")

    def action_regenerate_turn(self) -> None:
        self._post("regenerate")
