"""Sessions in the app: the conversation is a saved session that autosaves and resumes.

``SessionActions`` is mixed into ``WorkbenchApp``. The app's conversation (``messages``)
stays the truth on screen; this mixin mirrors it into a ``sessions.Session`` and hands a
snapshot of it to the engine thread after every finished or cancelled turn
(``sessions.submit_autosave``: the transcript, then the prompt cache, both atomic). Queued
on the engine thread right after the turn, the save sees the cache of exactly that turn.

- ``workbench --session NAME`` opens or creates NAME: its conversation shows at once, its
  model is loaded if none was given, and once loaded, its adapter and its prompt cache
  (``sessions.submit_resume``) are restored, so the next message prefills only itself.
- Without ``--session`` the conversation becomes a session under a fresh name
  (``chat``, ``chat-2``...) when its first reply is done: nothing is lost.
- The sessions screen (``workbench.screens.sessions``) opens, starts, renames, deletes and
  exports; what touches the open session waits for the saves in flight first.
- The status line shows the session's name and when it was last saved.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from textual import work
from textual.app import SystemCommand
from textual.screen import Screen

from engine import Error, Notice, PrefillProgress, Result, TurnDone, TurnStats
from engine.errors import WorkbenchError
from engine.stream import EventStream
from sessions import (
    ResumeReport,
    SaveReport,
    Session,
    SessionMessage,
    SessionStore,
    check_name,
    export_markdown,
    submit_autosave,
    submit_resume,
)
from sessions.files import atomic_write

from .app_host import AppHost
from .app_models import model_spec, same_model
from .keymap import APP_BINDINGS, HELP_TEXT
from .screens.sessions import SessionsScreen

STATUS_REFRESH_S = 5.0  # "saved 40 s ago" moves on by itself


def saved_words(when: float | None, now: float | None = None) -> str:
    """``not saved yet``, ``saved just now``, ``saved 40 s ago``, ``saved 3 min ago``..."""
    if when is None:
        return "not saved yet"
    age = (time.time() if now is None else now) - when
    if age < 10:
        return "saved just now"
    if age < 60:
        return f"saved {int(age)} s ago"
    if age < 3600:
        return f"saved {int(age // 60)} min ago"
    stamp = datetime.fromtimestamp(when)
    if age < 86400:
        return f"saved at {stamp:%H:%M}"
    return f"saved {stamp:%Y-%m-%d %H:%M}"


def stats_from(saved: dict[str, Any]) -> TurnStats | None:
    """The TurnStats a saved message carries, or None if they are incomplete."""
    from dataclasses import fields

    names = {f.name for f in fields(TurnStats)}
    try:
        return TurnStats(**{k: v for k, v in saved.items() if k in names})
    except TypeError:
        return None


class SessionActions(AppHost):
    """The app's session features (see the module docstring)."""

    session_store: SessionStore | None = None
    session: Session | None = None
    last_resume: ResumeReport | None = None  # how the open session was last resumed
    _saved_at: float | None = None  # time.time() of the last save of the open session
    _dirty = False  # a turn finished that is not saved yet
    _saves_in_flight = 0
    _saves_idle: asyncio.Event | None = None

    # -- start ---------------------------------------------------------------------------
    def sessions_folder(self) -> Path:
        folder = getattr(self.args, "sessions_dir", None)
        return Path(folder).expanduser() if folder else self.config.sessions_path()

    def open_start_session(self) -> None:
        """On mount: the store, and ``--session NAME`` opened (or created) if given. Its
        model becomes the one to load unless one was given; its cache is restored after."""
        self.session_store = SessionStore(self.sessions_folder())
        self._saves_idle = asyncio.Event()
        self._saves_idle.set()
        self.set_interval(STATUS_REFRESH_S, self._age_session_status)
        name = getattr(self.args, "session", None)
        if not name:
            return
        try:
            session, created = self.session_store.open_or_new(
                name, lock=True, system_prompt=self.system_prompt, sampling=self.params)
        except WorkbenchError as exc:
            self.notify(f"{exc}. This conversation will be saved under a new name after its "
                        "first reply.", title="Session", severity="error", timeout=15)
            return
        self.session = session
        for problem in session.problems:
            self.notify(problem, title="Session", severity="warning", timeout=10)
        if created:
            self._saved_at = None
        else:
            self._saved_at = session.updated.timestamp()
            if getattr(self.args, "system", None) is None:
                self.system_prompt = session.system_prompt
            args = self.args
            if not getattr(args, "model", None) and not getattr(args, "demo", False) \
                    and session.model:
                args.model = session.model
            self.messages = self._messages_of(session)
            self.call_after_refresh(self._show_conversation, session)
            if self.messages:
                self._resume_after_load(session, not getattr(args, "adapter", None))
        self._refresh_session_status()

    @work(group="session-resume", exclusive=True, exit_on_error=False,
          description="resume the session")
    async def _resume_after_load(self, session: Session, use_adapter: bool) -> None:
        await self._load_finished.wait()
        if self.model_ready and self.session is session:
            await self._resume(session, use_adapter)

    async def _resume(self, session: Session, use_adapter: bool) -> None:
        """Restore the session's adapter and prompt cache (or re-read its transcript)."""
        store = self.session_store
        assert store is not None
        adapter_stream: EventStream | None = None
        active = self.engine.adapter
        if use_adapter and session.adapter:
            adapter_stream = self.engine.use_adapter(session.adapter, session.adapter_scale)
        elif use_adapter and active is not None and active.info is not None:
            adapter_stream = self.engine.use_adapter(None)  # the session had none
        # Queued at once, behind the adapter: a message sent now is answered after it.
        resume_stream = submit_resume(self.engine, store, session)
        if adapter_stream is not None:
            done = await adapter_stream.result()
            if isinstance(done, Error):
                self.notify(f"The session's adapter was not restored: {done.message}. "
                            "Continuing without it.", title="Session", severity="warning",
                            timeout=12)
        final = None
        async for batch in resume_stream.batches():
            for event in batch:
                if isinstance(event, Notice):
                    self.notify(event.message, title="Session", severity="warning",
                                timeout=12)
                elif isinstance(event, PrefillProgress) and not self.replying:
                    self.status.state = (f"reading the session again: {event.done}/"
                                         f"{event.total} tokens")
            final = batch[-1]
        if isinstance(final, Result) and isinstance(final.value, ResumeReport):
            report = final.value
            self.last_resume = report
            how = (f"prompt cache reused ({report.cached_tokens} tokens)" if report.reused
                   else f"{report.prefilled_tokens} tokens read again")
            if not self.replying and self.model_info is not None:
                self.status.state = f"ready · {self.model_info.name}"
            self.notify(f"Session {session.name}: {session.turns} turns, {how}.",
                        title="Session", timeout=6)
        elif isinstance(final, Error):
            self.notify(f"The session was not resumed: {final.message}", title="Session",
                        severity="warning", timeout=12)

    # -- the conversation <-> the session ------------------------------------------------
    @staticmethod
    def _messages_of(session: Session) -> list[dict[str, str]]:
        return [m for m in session.chat_messages() if m["role"] != "system"]

    async def _show_conversation(self, session: Session) -> None:
        """Put a saved conversation on screen (replaces what the chat shows)."""
        chat = self.chat
        await chat.clear()
        title = short_model(session.model) or "assistant"
        context = 0
        for message in session.messages:
            if message.role == "user":
                await chat.add_user(message.content)
                continue
            if not message.content:
                continue
            turn = await chat.add_assistant(title)
            await turn.show_text(message.content)
            turn.done = True
            stats = stats_from(message.stats)
            if stats is not None:
                turn.show_stats(stats)
                context = stats.context_tokens or context
            else:
                turn.note("from the saved session")
        self.sidebar.model.record_context(context)

    def _sync_session(self, stats: TurnStats | None = None) -> None:
        """Mirror the conversation and settings into the open session; a message that did
        not change keeps its time and statistics."""
        session = self.session
        if session is None:
            return
        old = session.messages
        new: list[SessionMessage] = []
        for i, m in enumerate(self.messages):
            prev = old[i] if i < len(old) else None
            if prev is not None and prev.role == m["role"] and prev.content == m["content"]:
                new.append(prev)
            else:
                new.append(SessionMessage(m["role"], m["content"]))
        if stats is not None and new and new[-1].role == "assistant":
            last = new[-1]
            last.stats = stats.to_dict()
            last.adapter = stats.adapter_identity
            last.cancelled = stats.finish_reason == "cancelled"
        session.messages = new
        session.system_prompt = self.system_prompt
        session.sampling = self.params
        if self.model_info is not None:
            spec = model_spec(self.model_info)
            if session.model != spec:
                session.model, session.model_fingerprint = spec, ""
        state = self.engine.adapter
        if state is not None:
            session.adapter = str(state.path or "")
            session.adapter_scale = float(state.scale or 1.0)

    # -- autosave ------------------------------------------------------------------------
    def after_turn(self, final: TurnDone) -> None:
        """Called by the app when a reply finished (or was stopped with text): save."""
        store = self.session_store
        if store is None:
            return
        if self.session is None:
            name = self._claim_name("chat")
            if name is None:
                return
            self.session = Session(name=name, system_prompt=self.system_prompt,
                                   sampling=self.params)
            self._saved_at = None
        self._sync_session(final.stats)
        self._dirty = True
        self._refresh_session_status()
        self._save_now(self.session)

    def _claim_name(self, base: str) -> str | None:
        """A free session name, locked for this app (another app may be starting one)."""
        store = self.session_store
        assert store is not None
        for attempt in range(10):
            name = store.unique_name(base if attempt == 0 else f"{base}-{os.getpid()}-{attempt}")
            try:
                store.acquire(name)
            except WorkbenchError:
                continue
            except OSError as exc:
                self.notify(f"Not saved: the sessions folder {store.folder} cannot be used "
                            f"({exc.strerror or exc})", title="Session", severity="error",
                            timeout=15)
                return None
            return name
        return None

    def _save_now(self, session: Session) -> None:
        """Queue the autosave on the engine thread now (it snapshots the session)."""
        store = self.session_store
        assert store is not None and self._saves_idle is not None
        self._saves_in_flight += 1
        self._saves_idle.clear()
        self._autosave_worker(session, submit_autosave(self.engine, store, session))

    @work(group="session-save", exit_on_error=False, description="save the session")
    async def _autosave_worker(self, session: Session, stream: EventStream) -> None:
        try:
            final = await stream.result()
        finally:
            self._saves_in_flight -= 1
            if self._saves_in_flight == 0 and self._saves_idle is not None:
                self._saves_idle.set()
        if isinstance(final, Result) and isinstance(final.value, SaveReport):
            report = final.value
            session.updated = report.transcript.saved_at
            session.title = session.title or report.title
            if self.session is session:
                self._saved_at = time.time()
                self._dirty = self._saves_in_flight > 0
                self._refresh_session_status()
        elif isinstance(final, Error):
            self.notify(f"Not saved: {final.message}", title="Session", severity="error",
                        timeout=15)

    @property
    def session_saved(self) -> bool:
        """The open session is on disk as it is now (no save waiting or running)."""
        return (self.session is not None and self._saved_at is not None and not self._dirty
                and self._saves_in_flight == 0)

    async def saves_done(self) -> None:
        """Wait for the saves in flight (before renaming, deleting or leaving a session)."""
        if self._saves_idle is not None:
            await self._saves_idle.wait()

    def _refresh_session_status(self) -> None:
        self.status.session_name = self.session_label()

    def _age_session_status(self) -> None:
        """The timer's refresh ("saved 40 s ago"); none while the meters are frozen for a
        screenshot."""
        if not self.meters_frozen:
            self._refresh_session_status()

    def session_label(self) -> str:
        """``NAME · saved 40 s ago`` (the status line adds ``session:``), or ""."""
        if self.session is None:
            return ""
        return f"{self.session.name} · {saved_words(self._saved_at)}"

    # -- leaving and switching sessions ----------------------------------------------------
    def leave_session(self) -> None:
        """A new conversation is a new session: the old one stays saved as it is (called by
        the app's New chat)."""
        session = self.session
        if session is None:
            return
        self.session = None
        self._saved_at = None
        self.last_resume = None
        self._refresh_session_status()
        self._release_after_saves(session.name)

    @work(group="session-release", exit_on_error=False, description="close the session")
    async def _release_after_saves(self, name: str) -> None:
        await self.saves_done()
        store = self.session_store
        if store is not None and (self.session is None or self.session.name != name):
            store.release(name)

    @property
    def open_session_name(self) -> str | None:
        return self.session.name if self.session is not None else None

    def action_sessions(self) -> None:
        if self.session_store is None:
            return
        self.push_screen(SessionsScreen(self))

    def action_export_session(self) -> None:
        """Export the open session to NAME.md in the sessions folder, and say where."""
        path, message = self.export_open_session("")
        self.notify(message, title="Export", severity="information" if path else "warning",
                    timeout=12)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        keys = self.keymap.get("sessions") or next(
            (b.key for b in APP_BINDINGS if b.id == "sessions"), "")
        yield SystemCommand("Sessions: open, rename, delete, new, export",
                            f"{HELP_TEXT['sessions']} ({keys})", self.action_sessions)
        yield SystemCommand("Export the session to Markdown",
                            "Write the open conversation to NAME.md in the sessions folder "
                            "(the sessions screen's e picks another place)",
                            self.action_export_session)

    async def open_session(self, name: str) -> str | None:
        """Open saved session ``name`` in place of the conversation; None, or why not."""
        store = self.session_store
        if store is None:
            return "sessions are not available"
        if self.replying:
            return "Stop the reply first (Esc) to open another session."
        if self.session is not None and self.session.name == name:
            return None
        await self.saves_done()
        try:
            session = store.open(name, lock=True)
        except WorkbenchError as exc:
            return str(exc)
        old = self.session
        if old is not None:
            store.release(old.name)
        self.session = session
        self.last_resume = None
        self._saved_at = session.updated.timestamp()
        self._dirty = False
        self.system_prompt = session.system_prompt
        self.messages = self._messages_of(session)
        await self._show_conversation(session)
        self._refresh_session_status()
        self.prompt.focus()
        self._continue_session(session)
        return None

    @work(group="session-resume", exclusive=True, exit_on_error=False,
          description="resume the session")
    async def _continue_session(self, session: Session) -> None:
        """Load the session's model if another one is loaded, then restore its cache."""
        await self._load_finished.wait()
        want = session.model
        have = self.model_info
        if want and (have is None or not same_model(want, have.path, have.name)):
            loaded = await self.switch_model(want, quiet=True)
            if not loaded:
                self.notify(f"The session's model {want} could not be loaded: the "
                            "conversation continues with the model loaded now.",
                            title="Session", severity="warning", timeout=12)
        if self.model_ready and self.session is session and self.messages:
            await self._resume(session, use_adapter=True)

    async def new_session(self, name: str) -> str | None:
        """Start an empty conversation saved as session ``name``; None, or why not."""
        store = self.session_store
        if store is None:
            return "sessions are not available"
        if self.replying:
            return "Stop the reply first (Esc) to start a new session."
        try:
            check_name(name)
            if store.exists(name):
                return (f"a session named {name!r} exists already: open it, or pick another "
                        "name")
            await self.saves_done()
            store.acquire(name)
        except WorkbenchError as exc:
            return str(exc)
        await self.action_new_chat()
        session = Session(name=name, system_prompt=self.system_prompt, sampling=self.params)
        self.session = session
        self._sync_session()
        try:
            saved = store.save(session)
        except (WorkbenchError, OSError) as exc:
            return f"session {name!r} could not be saved: {exc}"
        session.updated = saved.saved_at
        self._saved_at = time.time()
        self._refresh_session_status()
        return None


    async def rename_session(self, old: str, new: str) -> str | None:
        store = self.session_store
        if store is None:
            return "sessions are not available"
        is_open = self.session is not None and self.session.name == old
        if is_open and self.replying:
            return "Stop the reply first (Esc) to rename the open session."
        try:
            check_name(new)
            if is_open:
                await self.saves_done()
            store.rename(old, new)
        except WorkbenchError as exc:
            return str(exc)
        except OSError as exc:
            return f"{old} could not be renamed: {exc.strerror or exc}"
        if is_open and self.session is not None:
            self.session.name = new
            self._refresh_session_status()
        return None

    async def delete_session(self, name: str) -> str | None:
        store = self.session_store
        if store is None:
            return "sessions are not available"
        is_open = self.session is not None and self.session.name == name
        if is_open and self.replying:
            return "Stop the reply first (Esc) to delete the open session."
        if is_open:
            await self.saves_done()
        try:
            store.delete(name)
        except WorkbenchError as exc:
            return str(exc)
        except OSError as exc:
            return f"{name} could not be deleted: {exc.strerror or exc}"
        if is_open:
            self.session = None
            self._saved_at = None
            await self.action_new_chat()
            self._refresh_session_status()
        return None

    # -- export --------------------------------------------------------------------------
    def default_export_path(self) -> Path | None:
        if self.session is None or self.session_store is None:
            return None
        return self.session_store.folder / f"{self.session.name}.md"

    def export_open_session(self, target: str) -> tuple[Path | None, str]:
        """Write the open session as Markdown to ``target`` (a file or a folder; empty: the
        sessions folder). Returns the path written, or None, and one line saying so."""
        default = self.default_export_path()
        if self.session is None or default is None:
            return None, "Nothing to export yet: the conversation has no reply."
        self._sync_session()
        path = Path(target).expanduser() if target.strip() else default
        if path.is_dir():
            path = path / default.name
        path = path.absolute()
        if path.exists() and path.suffix.lower() not in (".md", ".markdown"):
            return None, (f"{path} exists and is not a Markdown file: choose a name ending "
                          "in .md")
        try:
            atomic_write(path, export_markdown(self.session).encode("utf-8"))
        except OSError as exc:
            return None, f"Not exported: {path} cannot be written ({exc.strerror or exc})"
        return path, f"Exported {self.session.name} to {path}"

    # -- exit ----------------------------------------------------------------------------
    async def on_unmount(self) -> None:
        """At exit (Textual calls every class's handler): a turn whose autosave did not run
        (the app closed first) is saved now, transcript only; then the locks go."""
        store, session = self.session_store, self.session
        if store is None:
            return
        if session is not None and self._dirty:
            try:
                store.save(session)
            except (WorkbenchError, OSError):
                pass
        store.close()


def short_model(spec: str) -> str:
    """How a session's model is named on a restored turn: the repo id or the folder name."""
    if not spec:
        return ""
    return spec if not spec.startswith(("/", "~", ".")) else Path(spec).name

