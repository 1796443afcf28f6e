"""The sessions screen: every saved conversation, to open, rename, delete, start or export.

The list comes from ``SessionStore.list`` (it only reads TOML files: cheap, no MLX), most
recently used first, with the title, model, adapter, turns, when it was last used and its
size on disk; sessions that cannot be read are listed with the reason. The screen asks the
app (``tui/controllers/sessions.py``) to do anything that touches the open conversation, so that a
rename or a delete never races an autosave.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Protocol

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from common.formats import fmt_bytes
from sessions import SessionStore, SessionSummary

from ...keymap import SESSIONS_BINDINGS
from ..widgets.columns_hint import ColumnsHint

FORM_LABELS = {
    "rename": "New name for {name} (Enter renames, Esc cancels)",
    "new": "Name of the new session (Enter starts it, Esc cancels)",
    "export": "Export {name} as Markdown to (Enter writes, Esc cancels)",
}


class SessionsHost(Protocol):
    """What the sessions screen asks of the app."""

    @property
    def session_store(self) -> SessionStore | None: ...

    @property
    def open_session_name(self) -> str | None: ...

    async def open_session(self, name: str) -> str | None: ...

    async def new_session(self, name: str) -> str | None: ...

    async def rename_session(self, old: str, new: str) -> str | None: ...

    async def delete_session(self, name: str) -> str | None: ...

    def export_open_session(self, target: str) -> tuple[Path | None, str]: ...

    def default_export_path(self) -> Path | None: ...


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """``just now``, ``5 min ago``, ``3 h ago``, ``yesterday``, or the date."""
    if when is None:
        return "?"
    now = now or datetime.now(UTC)
    seconds = (now - when).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 2 * 86400:
        return "yesterday"
    return when.astimezone().strftime("%Y-%m-%d")


def short_path(text: str) -> str:
    """A repo id as it is; a folder by its last part."""
    if not text:
        return ""
    if text.startswith(("/", "~", ".")):
        return Path(text).name
    return text


def session_row(row: SessionSummary, is_open: bool) -> tuple[str, ...]:
    if row.problem:
        return ("!", row.name, f"cannot be opened: {row.problem}", "", "", "", "",
                fmt_bytes(row.size_bytes))
    return (
        "●" if is_open else "",
        row.name,
        row.title,
        short_path(row.model),
        short_path(row.adapter),
        str(row.turns),
        ago(row.updated),
        fmt_bytes(row.size_bytes),
    )


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no, for what cannot be undone."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n,escape", "answer(False)", "No", show=False),
    ]
    CSS_PATH: ClassVar[str] = "screens.tcss"

    def __init__(self, question: str, yes: str = "Delete", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog", classes="dialog"):
            yield Static(self.question, id="confirm-question", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self.yes} (y)", id="confirm-yes", variant="error",
                             compact=True)
                yield Button("Cancel (n)", id="confirm-no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    @on(Button.Pressed, "#confirm-yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class SessionsScreen(ModalScreen[None]):
    BINDINGS = SESSIONS_BINDINGS  # type: ignore[assignment]
    CSS_PATH: ClassVar[str] = "screens.tcss"

    def __init__(self, host: SessionsHost) -> None:
        super().__init__()
        self.host = host
        self.rows: list[SessionSummary] = []
        self.form_mode = ""  # rename | new | export, while the form is open
        self.form_target = ""

    @property
    def store(self) -> SessionStore:
        store = self.host.session_store
        assert store is not None
        return store

    def compose(self) -> ComposeResult:
        with Vertical(id="sessions-dialog", classes="dialog"):
            yield Label("Sessions", classes="dialog-title")
            yield Static(f"saved in {self.store.folder}", id="sessions-folder",
                         classes="dialog-intro", markup=False)
            yield Input(placeholder="filter: words in the name, title, model or adapter",
                        id="sessions-filter", compact=True)
            table: DataTable[str] = DataTable(id="sessions-table", cursor_type="row",
                                              zebra_stripes=True)
            yield table
            yield ColumnsHint(table, id="sessions-columns")
            with Horizontal(id="sessions-form"):
                yield Label("", id="sessions-form-label")
                yield Input(id="sessions-form-input", compact=True)
            yield Static("", id="sessions-message", markup=False)
            yield Static("Enter open · n new · r rename · d delete · e export to Markdown · "
                         "/ filter · Esc close", classes="dialog-hint", markup=False)

    @property
    def table(self) -> DataTable[str]:
        return self.query_one("#sessions-table", DataTable)

    def on_resize(self) -> None:
        self.call_after_refresh(self.query_one("#sessions-columns", ColumnsHint).check)

    def on_mount(self) -> None:
        self.table.add_columns("", "name", "title", "model", "adapter", "turns",
                               "last used", "size")
        self.query_one("#sessions-form").display = False
        self.refresh_list()
        self.table.focus()

    # -- the list ------------------------------------------------------------------------
    def refresh_list(self, select: str | None = None) -> None:
        keep = select or self.highlighted_name
        text = self.query_one("#sessions-filter", Input).value
        self.rows = self.store.list(text)
        open_name = self.host.open_session_name
        table = self.table
        table.clear()
        for row in self.rows:
            table.add_row(*session_row(row, row.name == open_name), key=row.name)
        for i, row in enumerate(self.rows):
            if row.name == keep:
                table.move_cursor(row=i)
                break
        if not self.rows:
            self.say("No session matches the filter." if text.strip() else
                     "No saved sessions yet: every conversation is saved after its first "
                     "reply.")

    @property
    def highlighted(self) -> SessionSummary | None:
        row = self.table.cursor_row
        if not self.rows or row < 0 or row >= len(self.rows):
            return None
        return self.rows[row]

    @property
    def highlighted_name(self) -> str | None:
        row = self.highlighted
        return row.name if row is not None else None

    @on(Input.Changed, "#sessions-filter")
    def _filter_changed(self) -> None:
        self.refresh_list()

    @on(Input.Submitted, "#sessions-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def say(self, text: str, error: bool = False) -> None:
        message = self.query_one("#sessions-message", Static)
        message.update(text)
        message.set_class(error, "-error")

    def _need_row(self, what: str) -> SessionSummary | None:
        row = self.highlighted
        if row is None:
            self.say(f"Highlight a session to {what} first.", error=True)
        return row

    # -- open ----------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#sessions-table")
    async def _row_selected(self) -> None:
        await self.action_open_session()

    async def action_open_session(self) -> None:
        row = self._need_row("open")
        if row is None:
            return
        if row.problem:
            self.say(f"{row.name} cannot be opened: {row.problem}", error=True)
            return
        problem = await self.host.open_session(row.name)
        if problem:
            self.say(problem, error=True)
        else:
            self.dismiss(None)

    # -- the form: new, rename, export -----------------------------------------------------
    def _open_form(self, mode: str, target: str, value: str) -> None:
        self.form_mode, self.form_target = mode, target
        self.query_one("#sessions-form-label", Label).update(
            FORM_LABELS[mode].format(name=target))
        form = self.query_one("#sessions-form")
        form.display = True
        field = self.query_one("#sessions-form-input", Input)
        field.value = value
        field.focus()
        field.cursor_position = len(value)

    def _close_form(self) -> None:
        self.form_mode = ""
        self.query_one("#sessions-form").display = False
        self.table.focus()

    def action_new_session(self) -> None:
        self._open_form("new", "", self.store.unique_name("chat"))

    def action_rename_session(self) -> None:
        row = self._need_row("rename")
        if row is not None:
            self._open_form("rename", row.name, row.name)

    def action_export_session(self) -> None:
        name = self.host.open_session_name
        path = self.host.default_export_path()
        if name is None or path is None:
            self.say("Nothing to export yet: the open conversation is saved as a session "
                     "after its first reply.", error=True)
            return
        self._open_form("export", name, str(path))

    @on(Input.Submitted, "#sessions-form-input")
    async def _form_submitted(self, event: Input.Submitted) -> None:
        mode, target, value = self.form_mode, self.form_target, event.value.strip()
        if mode == "new":
            problem = await self.host.new_session(value)
            if problem:
                self.say(problem, error=True)
                return
            self.dismiss(None)
        elif mode == "rename":
            problem = await self.host.rename_session(target, value)
            if problem:
                self.say(problem, error=True)
                return
            self._close_form()
            self.refresh_list(select=value)
            self.say(f"Renamed {target} to {value}.")
        elif mode == "export":
            path, message = self.host.export_open_session(value)
            self.say(message, error=path is None)
            if path is not None:
                self._close_form()
                self.notify(message)

    # -- delete --------------------------------------------------------------------------
    def action_delete_session(self) -> None:
        row = self._need_row("delete")
        if row is None:
            return
        is_open = row.name == self.host.open_session_name
        what = f"{row.turns} turn{'s' if row.turns != 1 else ''}" if not row.problem else \
            "unreadable"
        question = (f"Delete session {row.name!r} ({what}, {fmt_bytes(row.size_bytes)})? "
                    "Its files are removed; this cannot be undone.")
        if is_open:
            question += " It is the open conversation: the chat is cleared."
        self.app.push_screen(ConfirmScreen(question), lambda yes: self._delete(row.name, yes))

    async def _delete(self, name: str, yes: bool | None) -> None:
        if not yes:
            self.say(f"{name} was not deleted.")
            return
        problem = await self.host.delete_session(name)
        if problem:
            self.say(problem, error=True)
            return
        self.refresh_list()
        self.say(f"Deleted {name}.")

    # -- leaving -------------------------------------------------------------------------
    def action_focus_filter(self) -> None:
        self.query_one("#sessions-filter", Input).focus()

    def action_close_sessions(self) -> None:
        if self.form_mode:
            self._close_form()
            self.say("")
            return
        self.dismiss(None)
