"""One-line status at the bottom of the chat, and the banner shown for the demo model.

The status line names what the app is doing (loading, ready, prefill, generating), shows a
progress bar while a model loads or downloads, and keeps a slot for the session name that
the sessions feature fills in.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import Label, ProgressBar, Static


class StatusLine(Horizontal):
    state: reactive[str] = reactive("starting…", init=False)
    session_name: reactive[str] = reactive("", init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._state = Label("starting…", id="status-state", markup=False)
        self._bar = ProgressBar(total=None, show_eta=False, id="load-bar")
        self._session = Label("", id="status-session", markup=False)

    def compose(self) -> ComposeResult:
        yield self._state
        yield self._bar
        yield self._session

    def watch_state(self, state: str) -> None:
        self._state.update(state)

    def watch_session_name(self, name: str) -> None:
        self._session.update(f"session: {name}" if name else "")

    def show_progress(self, done: int | None = None, total: int | None = None) -> None:
        """Show the load bar: a fraction when ``total`` is known, else an indeterminate bar."""
        self._bar.display = True
        self._bar.update(total=total or None, progress=done or 0)

    def hide_progress(self) -> None:
        self._bar.display = False


class Banner(Static):
    """A persistent one-line note above the chat (the demo model's random weights)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.display = False

    def show(self, text: str) -> None:
        self.update(text)
        self.display = bool(text)
