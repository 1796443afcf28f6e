"""The prompt box: a multi-line editor where Enter sends and Up/Down walk the history.

Enter is left to the ``send`` binding (so the config can remap it) instead of inserting a
newline; Ctrl+J (or Shift+Enter where the terminal reports it) inserts one. Up and Down
recall earlier messages only while the box is empty or shows an unedited earlier message,
so they still move the cursor inside a message being written.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from ...keymap import PROMPT_BINDINGS


class PromptBox(TextArea):
    BINDINGS = PROMPT_BINDINGS  # type: ignore[assignment]

    @dataclass
    class Submitted(Message):
        """The user asked to send ``text`` (the box is not cleared: the app decides)."""

        prompt_box: PromptBox
        text: str

        @property
        def control(self) -> PromptBox:
            return self.prompt_box

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                         highlight_cursor_line=False,
                         placeholder="Message the model · Enter sends · Ctrl+J new line · "
                                     "↑ earlier messages")
        self.sent: list[str] = []  # messages sent, oldest first (Up/Down recall them)
        self._position: int | None = None  # index into history while browsing it

    def remember(self, text: str) -> None:
        """Add a sent message to the history (no immediate repeats)."""
        if text.strip() and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._position = None

    def set_text(self, text: str) -> None:
        """Replace the contents and put the cursor at the end."""
        self.load_text(text)
        self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        # Textual calls TextArea's own _on_key after this one unless the default is prevented.
        if event.key == "enter":
            event.prevent_default()  # no newline; the event bubbles on to the send binding
        elif event.key in ("up", "down") and self._browse(event.key == "up"):
            event.prevent_default()
            event.stop()

    def _browse(self, back: bool) -> bool:
        """Step through the history; False when Up/Down should move the cursor instead."""
        text = self.text
        browsing = self._position is not None and text == self.sent[self._position]
        if not (text == "" or browsing) or not self.sent:
            return False
        if back:
            if self._position is None:
                self._position = len(self.sent) - 1
            elif self._position > 0:
                self._position -= 1
            self.set_text(self.sent[self._position])
            return True
        if self._position is None:
            return False
        if self._position + 1 < len(self.sent):
            self._position += 1
            self.set_text(self.sent[self._position])
        else:
            self._position = None
            self.set_text("")
        return True

    def action_send(self) -> None:
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")
