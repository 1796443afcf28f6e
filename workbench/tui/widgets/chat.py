"""The conversation pane: user and assistant turns, replies streamed as Markdown.

A reply is streamed through Textual's ``MarkdownStream`` (``Markdown.get_stream``): text is
queued as it arrives (``write``, cheap: the pieces are kept, the reply is not rebuilt per
token) and handed to the stream once per frame (``flush``, called by the paced streamer,
see ``tui/streamer.py``), so however fast the model is, the Markdown widget sees a few
appends a second, each one parsing only the last block, never the whole reply again. The
scroll container is anchored, so it follows the reply until the user scrolls up.

Markdown (and its parser) is imported when the first reply is shown, not before the first
frame: the empty chat does not need it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from ...formatting import turn_summary

if TYPE_CHECKING:
    from textual.widgets import Markdown
    from textual.widgets.markdown import MarkdownStream

    from engine import TurnStats

# C0 control characters (except tab and newline) and DEL, shown as their Unicode control
# pictures: a model (or a paste) must not be able to send escape sequences to the terminal.
_CONTROLS = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)} | {0x7F: 0x2421}


def visible(text: str) -> str:
    """``text`` with control characters made harmless and visible."""
    return text.translate(_CONTROLS)


class UserTurn(Static):
    """What the user wrote, shown as typed (no markup, no Markdown)."""

    def __init__(self, text: str) -> None:
        super().__init__(visible(text), markup=False, classes="turn user-turn")
        self.text = text
        self.border_title = "you"


class AssistantTurn(Vertical):
    """One reply: a Markdown body that grows while streaming, and a stats line under it."""

    def __init__(self, title: str) -> None:
        super().__init__(classes="turn assistant-turn")
        self.border_title = title
        self._pieces: list[str] = []  # the reply so far, as it arrived (joined when read)
        self.done = False
        self.cancelled = False
        self.stats: TurnStats | None = None
        self.first_text_at = 0.0  # perf_counter when the first text arrived
        self.displayed_at = 0.0  # perf_counter when the whole reply was on screen
        self._pending: list[str] = []
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        from textual.widgets import Markdown

        yield Markdown(classes="reply")
        yield Static("", classes="turn-stats", markup=False)

    @property
    def markdown(self) -> Markdown:
        from textual.widgets import Markdown

        return self.query_one(Markdown)

    @property
    def text(self) -> str:
        """The reply so far (the pieces are joined once per read, not once per token)."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def note(self, text: str) -> None:
        """Show ``text`` in the stats line (waiting for the model, prefill progress...)."""
        self.query_one(".turn-stats", Static).update(text)

    def write(self, text: str) -> None:
        """Queue reply text; it reaches the screen with the next flush (cheap, no await)."""
        if not text:
            return
        if not self.first_text_at:
            self.first_text_at = time.perf_counter()
        self._pieces.append(text)
        self._pending.append(text)

    async def flush(self) -> None:
        """Hand the text queued since the last flush to the Markdown stream."""
        if not self._pending:
            return
        if self._stream is None:
            from textual.widgets import Markdown

            self._stream = Markdown.get_stream(self.markdown)
        text = visible("".join(self._pending))
        self._pending.clear()
        await self._stream.write(text)

    async def finish(self, stats: TurnStats | None = None, error: str | None = None) -> None:
        """Put the rest of the reply on screen, then the stats (or the error) under it."""
        await self.flush()
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.displayed_at = time.perf_counter()
        self.done = True
        if error is not None:
            self.add_class("-error")
            self.note(error)
        elif stats is not None:
            self.show_stats(stats)

    def show_stats(self, stats: TurnStats) -> None:
        self.stats = stats
        self.cancelled = stats.finish_reason == "cancelled"
        self.set_class(self.cancelled, "-cancelled")
        self.note(turn_summary(stats))

    async def show_text(self, text: str) -> None:
        """Show a whole reply at once (a restored conversation)."""
        self._pieces[:] = [text]
        self._pending.clear()
        await self.markdown.update(visible(text))


EMPTY_HINT = (
    "Type a message below and press Enter.\n\n"
    "Esc stops a reply · Ctrl+R regenerates it · Ctrl+L edits your last message · "
    "F2 settings · F1 all keys · Ctrl+P every command"
)


class ChatView(VerticalScroll):
    """The scrolling list of turns (with a hint while there are none)."""

    def compose(self) -> ComposeResult:
        yield Static(EMPTY_HINT, id="empty-hint", markup=False)

    def on_mount(self) -> None:
        self.anchor()

    def on_key(self, event: events.Key) -> None:
        from .prompt import redirect_typing

        redirect_typing(self, event)  # typing while the chat has the focus: a message

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

    async def remove_turns(self, count: int) -> None:
        """Remove the last ``count`` turns."""
        turns = self.turns()
        if count > 0 and turns:
            await self.remove_children(turns[-count:])
        self._show_hint()

    async def clear(self) -> None:
        await self.remove_children(self.turns())
        self._show_hint()
