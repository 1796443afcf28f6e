"""The prompt box: a multi-line editor where Enter sends and Up/Down walk the history.

Enter is left to the ``send`` binding (so the config can remap it) instead of inserting a
newline; Ctrl+J (or Shift+Enter where the terminal reports it) inserts one. Up and Down
recall earlier messages only while the box is empty or shows an unedited earlier message,
so they still move the cursor inside a message being written.

A paste is cleaned first (``clean_paste``): terminal escape sequences copied along with some
text (colours from a log, a cursor move) are dropped, and any other control character is
shown as its visible picture, so a paste can never scramble the box. A printable key typed
while the sidebar or the chat has the focus is not lost either: the app asks
``belongs_to_prompt`` about every key before it hands it to the focused widget, and moves
the focus to the prompt at once, so keys typed in one burst (they all arrive before any of
them is handled) reach the prompt in order instead of the chat's one-letter commands.
``redirect_typing`` is the widgets' own fallback: it turns a key into ``TypedElsewhere``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widget import Widget
from textual.widgets import TextArea

from ...keymap import PROMPT_BINDINGS
from .visible import visible

# ESC sequences: CSI (colours, cursor moves), OSC (titles, links; ended by BEL or ESC \),
# DCS/SOS/PM/APC strings, and two-character escapes. 8-bit CSI (0x9b) too.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?")


def drop_escapes(text: str) -> str:
    """``text`` without terminal escape sequences."""
    return _ESCAPES.sub("", text)


def clean_paste(text: str) -> str:
    """``text`` without terminal escape sequences; other controls made visible."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return visible(drop_escapes(text)).replace("\x85", "\u2424")


class TakesNoText:
    """A mixin for containers whose controls take no text (the chat, the sidebar): a
    printable key typed there that none of their controls binds is the start of a
    message."""


def belongs_to_prompt(focused: Widget | None, event: events.Key | events.Paste) -> bool:
    """Whether ``event``, about to go to ``focused``, is text meant for the prompt: a paste or
    a printable key in a ``TakesNoText`` container, a key only if no control there binds it
    (``d`` in the Adapters list, ``e`` on a chat turn keep their meaning)."""
    if focused is None or not any(isinstance(node, TakesNoText)
                                  for node in focused.ancestors_with_self):
        return False
    if isinstance(event, events.Paste):
        return True
    if not (event.is_printable and event.character):
        return False
    return event.key not in focused.screen.active_bindings


def redirect_typing(widget: Widget, event: events.Key) -> None:
    """Call from the ``on_key`` of a container whose controls take no text: a printable key
    that none of them binds becomes ``TypedElsewhere`` (the app sends it to the prompt)."""
    if not (event.is_printable and event.character):
        return
    if event.key in widget.screen.active_bindings:
        return  # a key the focused control (or the app) uses, e.g. d for details
    event.stop()
    event.prevent_default()
    widget.post_message(PromptBox.TypedElsewhere(event.character))


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

    @dataclass
    class TypedElsewhere(Message):
        """``text`` was typed while a widget that takes no text had the focus."""

        text: str

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

    async def _on_paste(self, event: events.Paste) -> None:
        cleaned = clean_paste(event.text)
        if cleaned != event.text:
            event.prevent_default()  # TextArea's own handler would insert the raw text
            event.stop()
            await super()._on_paste(events.Paste(cleaned))

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
