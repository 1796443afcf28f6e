"""Where the sidebar goes: beside the chat on a wide terminal, over it on a narrow one.

At ``NARROW_WIDTH`` columns and more the sidebar sits beside the chat, shown or hidden with
Ctrl+B (the user's choice is kept). Below that there is no room for both: the sidebar is
hidden, and Ctrl+B (or F4, or the scale command) shows it in place of the chat, full width;
Esc, or typing a character there, puts the chat and the prompt back. The footer keeps to
one line by itself (``widgets/footer.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.containers import Horizontal, Vertical

if TYPE_CHECKING:
    from .app import WorkbenchApp

NARROW_WIDTH = 100  # below this many columns the sidebar no longer sits beside the chat


class Layout:
    def __init__(self, app: WorkbenchApp) -> None:
        self.app = app
        self.narrow = False
        self.beside = True  # wide: the sidebar is shown beside the chat (Ctrl+B flips it)
        self.over = False  # narrow: the sidebar is shown in place of the chat

    @property
    def sidebar_shown(self) -> bool:
        return self.over if self.narrow else self.beside

    def fit(self, width: int) -> None:
        """The terminal is ``width`` columns wide now: lay the main screen out for it."""
        narrow = width < NARROW_WIDTH
        if narrow != self.narrow:
            self.narrow = narrow
            self.over = False  # a narrow terminal starts on the chat
        self._apply()

    def toggle_sidebar(self) -> None:
        if self.narrow:
            self.over = not self.over
        else:
            self.beside = not self.beside
        self._apply()
        if self.narrow:  # what had the focus may be hidden now
            (self.app.sidebar if self.over else self.app.prompt).focus()

    def show_sidebar(self) -> None:
        """Make the sidebar visible (a key that goes to one of its controls)."""
        if self.narrow:
            self.over = True
        else:
            self.beside = True
        self._apply()

    def back_to_prompt(self) -> None:
        """Esc: the chat and the prompt again, with the focus in the prompt (at once: the
        next key already goes there)."""
        if self.narrow and self.over:
            self.over = False
            self._apply()
        prompt = self.app.prompt
        if prompt.screen is self.app.screen and self.app.focused is not prompt:
            self.app.set_focus(prompt)

    def _apply(self) -> None:
        app = self.app
        try:
            main = app.query_one("#main", Horizontal)
            column = app.query_one("#chat-column", Vertical)
        except Exception:  # noqa: BLE001 - not composed yet (or the app is closing)
            return
        main.set_class(self.narrow, "-narrow")
        shown = self.sidebar_shown
        app.sidebar.display = shown
        column.display = not (self.narrow and shown)
