"""One-line status at the bottom of the chat, and the banner shown for the demo model.

The status line names what the app is doing (loading, ready, prefill, generating), shows a
progress bar while a model loads or downloads, and the open session's name; all of it is
computed from one ``Status`` (``tui/state.py``) that the app holds.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import Label, ProgressBar, Static

from ..state import Status


class StatusLine(Horizontal):
    """Renders a ``Status`` (``tui/state.py``): set ``status`` and it repaints itself."""

    status: reactive[Status] = reactive(Status, init=False, always_update=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._state = Label(Status().text, id="status-state", markup=False)
        self._bar = ProgressBar(total=None, show_eta=False, id="load-bar")
        self._session = Label("", id="status-session", markup=False)

    def compose(self) -> ComposeResult:
        yield self._state
        yield self._bar
        yield self._session

    @property
    def text(self) -> str:
        """The words shown now."""
        return self.status.text

    def watch_status(self, old: Status, new: Status) -> None:
        if new.text != old.text:
            self._state.update(new.text)
        if new.session_text != old.session_text:
            self._session.update(new.session_text)
        progress = new.progress
        self._bar.display = progress is not None
        if progress is not None and progress != old.progress:
            done, total = progress
            self._bar.update(total=total or None, progress=done)


class Banner(Static):
    """A persistent one-line note above the chat (the demo model's random weights)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.display = False

    def show(self, text: str) -> None:
        self.update(text)
        self.display = bool(text)
