"""Sessions: the conversation is a saved session that autosaves and resumes.

``SessionController`` owns the session store, which session the conversation is saved as
(``session``), when it was last saved and the saves in flight. The conversation itself is
the chat's ``Conversation``, which wraps that very ``sessions.Session``: nothing is mirrored.
After every ``TurnFinished`` a snapshot is handed to the engine thread
(``sessions.submit_autosave``: the transcript, then the prompt cache, both atomic); queued
right after the turn, the save sees the cache of exactly that turn.

- ``workbench --session NAME`` opens or creates NAME: its conversation shows at once, its
  model is loaded if none was given, and once loaded its adapter and its prompt cache
  (``sessions.submit_resume``) are restored, so the next message prefills only itself.
- Without ``--session`` the conversation becomes a session under a fresh name
  (``chat``, ``chat-2``...) when its first reply is done: nothing is lost.
- The sessions screen (``tui/screens/sessions.py``) opens, starts, renames, deletes and
  exports; what touches the open session waits for the saves in flight first.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import WorkbenchError
from engine import EngineError
from sessions import Session, SessionStore, check_name, submit_autosave, submit_close

from .models import model_spec, names
from .resume import export_to, resume, saved_words

if TYPE_CHECKING:
    import argparse

    from engine import EngineAPI, EventStream
    from sessions import ResumeReport, SaveReport

    from ...conversation import Conversation
    from ..app import WorkbenchApp
    from .chat import ChatController
    from .models import ModelController

STATUS_REFRESH_S = 5.0  # "saved 40 s ago" moves on by itself
CLOSE_SAVE_S = 60.0  # at exit, how long the whole prompt-cache file may take to write


class SessionController:
    def __init__(self, app: WorkbenchApp, engine: EngineAPI, args: argparse.Namespace,
                 folder: Path, chat: ChatController, models: ModelController) -> None:
        self.app = app
        self.engine = engine
        self.args = args
        self.folder = folder
        self.chat = chat
        self.models = models
        self.store: SessionStore | None = None
        self.session: Session | None = None  # the session the conversation is saved as
        self.last_resume: ResumeReport | None = None  # how the open session was resumed
        self._saved_at: float | None = None  # time.time() of its last save
        self._dirty = False  # a turn finished that is not saved yet
        self._saves_in_flight = 0
        self._saves_idle = asyncio.Event()
        self._saves_idle.set()

    @property
    def conversation(self) -> Conversation:
        return self.chat.conversation

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """On mount, before the model loads: the store, and ``--session NAME`` opened (or
        created). Its model becomes the one to load unless one was given."""
        self.store = SessionStore(self.folder)
        self.app.set_interval(STATUS_REFRESH_S, self._age_status)
        name = getattr(self.args, "session", None)
        if not name:
            return
        conversation = self.conversation
        try:
            session, created = self.store.open_or_new(
                name, lock=True, system_prompt=conversation.system_prompt,
                sampling=conversation.params)
        except WorkbenchError as exc:
            self.app.notify(f"{exc}. This conversation will be saved under a new name after "
                            "its first reply.", title="Session", severity="error", timeout=15)
            return
        self.session = session
        for problem in session.problems:
            self.app.notify(problem, title="Session", severity="warning", timeout=10)
        session.sampling = conversation.params  # the flags' and config's sampling go on
        if getattr(self.args, "system", None) is not None:
            session.system_prompt = conversation.system_prompt
        self._saved_at = None if created else session.updated.timestamp()
        conversation.replace_session(session)
        if not created:
            args = self.args
            if not getattr(args, "model", None) and not getattr(args, "demo", False) \
                    and session.model:
                args.model = session.model
            self.app.call_after_refresh(self.chat.show, session)
            if session.messages:
                use_adapter = not getattr(args, "adapter", None)
                self.app.run_worker(self._resume_after_load(session, use_adapter),
                                    group="session-resume", exclusive=True,
                                    exit_on_error=False, description="resume the session")
        self._show_status()

    async def _resume_after_load(self, session: Session, use_adapter: bool) -> None:
        await self.models.wait_loaded()
        if self.models.ready and self.session is session:
            await self._resume(session, use_adapter)

    async def _resume(self, session: Session, use_adapter: bool) -> None:
        """Restore the session's adapter and prompt cache (or re-read its transcript)."""
        assert self.store is not None
        self._use_session_kv(session)
        report = await resume(self.app, self.engine, self.store, session, use_adapter,
                              replying=lambda: self.chat.replying)
        if report is not None:
            self.last_resume = report

    def _use_session_kv(self, session: Session) -> None:
        """Decode with the KV quantization the session was saved with (its cache holds
        entries written so), unless ``--kv-bits`` was given; queued before the resume."""
        decoding = self.engine.decoding
        if not session.kv or getattr(self.args, "kv_bits", None) is not None:
            return
        from engine.speculative import KVSettings

        kv = KVSettings.from_dict(session.kv)
        if kv != decoding.kv:
            self.engine.set_decoding(replace(decoding, kv=kv))

    # -- autosave ------------------------------------------------------------------------
    def turn_finished(self) -> None:
        """A reply is in the conversation: record the model and adapter, and save."""
        if self.store is None:
            return
        if self.session is not self.conversation.session:
            name = self._claim_name("chat")
            if name is None:
                return
            self.conversation.session.name = name
            self.session = self.conversation.session
            self._saved_at = None
        self._record_model()
        self._dirty = True
        self._show_status()
        self._save_now(self.session)

    def _record_model(self) -> None:
        """The model and adapter the conversation runs with now, for the save."""
        info = self.models.info
        if info is not None:
            self.conversation.set_model(model_spec(info))
        state = self.engine.state
        if state.adapter is not None:
            self.conversation.set_adapter(state.adapter)  # a scale of 0 stays 0
        self.conversation.session.kv = state.decoding.kv.to_dict()  # the cache's KV setting

    def _claim_name(self, base: str) -> str | None:
        """A free session name, locked for this app (another app may be starting one)."""
        store = self.store
        assert store is not None
        for attempt in range(10):
            name = store.unique_name(base if attempt == 0 else f"{base}-{os.getpid()}-{attempt}")
            try:
                store.acquire(name)
            except WorkbenchError:
                continue
            except OSError as exc:
                self.app.notify(f"Not saved: the sessions folder {store.folder} cannot be used "
                                f"({exc.strerror or exc})", title="Session", severity="error",
                                timeout=15)
                return None
            return name
        return None

    def _save_now(self, session: Session) -> None:
        """Queue the autosave on the engine thread now (it snapshots the session)."""
        assert self.store is not None
        self._saves_in_flight += 1
        self._saves_idle.clear()
        stream = submit_autosave(self.engine, self.store, session)
        self.app.run_worker(self._autosave(session, stream), group="session-save",
                            exit_on_error=False, description="save the session")

    async def _autosave(self, session: Session, stream: EventStream[SaveReport]) -> None:
        try:
            report = await stream.result()
        except EngineError as exc:
            self.app.notify(f"Not saved: {exc}", title="Session", severity="error",
                            timeout=15)
            return
        finally:
            self._saves_in_flight -= 1
            if self._saves_in_flight == 0:
                self._saves_idle.set()
            self._show_store_notices()
        session.updated = report.transcript.saved_at
        session.title = session.title or report.title
        if self.session is session:
            self._saved_at = time.time()
            self._dirty = self._saves_in_flight > 0
            self._show_status()

    def _show_store_notices(self) -> None:
        """What the store had to do to keep the user's files (a version changed on disk kept
        aside, the folder made private), one notification each."""
        if self.store is None:
            return
        for notice in self.store.take_notices():
            self.app.notify(notice, title="Session", severity="warning", timeout=15,
                            markup=False)

    @property
    def saved(self) -> bool:
        """The open session is on disk as it is now (no save waiting or running)."""
        return (self.session is not None and self._saved_at is not None and not self._dirty
                and self._saves_in_flight == 0)

    async def saves_done(self) -> None:
        """Wait for the saves in flight (before renaming, deleting or leaving a session)."""
        await self._saves_idle.wait()

    def _show_status(self) -> None:
        self.app.update_status(session=self.label())

    def _age_status(self) -> None:
        if not self.chat.meters_frozen:  # a screenshot's status line stays as it is
            self._show_status()

    def label(self) -> str:
        """``NAME · saved 40 s ago`` (the status line adds ``session:``), or ""."""
        if self.session is None:
            return ""
        return f"{self.session.name} · {saved_words(self._saved_at)}"

    # -- leaving -------------------------------------------------------------------------
    def conversation_cleared(self, old: Session) -> None:
        """A new chat is a new session: the old one stays saved as it is."""
        if old is not self.session:
            return
        self.session = None
        self._saved_at = None
        self.last_resume = None
        self._show_status()
        self.app.run_worker(self._release_after_saves(old.name), group="session-release",
                            exit_on_error=False, description="close the session")

    async def _release_after_saves(self, name: str) -> None:
        await self.saves_done()
        if self.store is not None and (self.session is None or self.session.name != name):
            self.store.release(name)

    def close(self) -> None:
        """At exit: a turn whose autosave did not run (the app closed first) is saved now,
        transcript only; the prompt cache is written whole, as the standard file mlx-lm
        reads (autosaves append segments; ``sessions.submit_close``); then the locks go."""
        store, session = self.store, self.session
        if store is None:
            return
        if session is not None and self._dirty:
            try:
                store.save(session)
            except (WorkbenchError, OSError):
                pass
        if session is not None and session.messages and (
                self._saved_at is not None or self._saves_in_flight):
            try:
                submit_close(self.engine, store, session).wait(CLOSE_SAVE_S)
            except Exception:  # noqa: BLE001 - leaving must not fail: the segments stay
                pass
        store.close()

    async def _close_cache(self, session: Session) -> None:
        """The session is left for another: its prompt cache written whole (see close)."""
        if self.store is None or not session.messages:
            return
        try:
            await submit_close(self.engine, self.store, session).result()
        except EngineError:
            pass

    # -- the sessions screen (SessionsHost) ----------------------------------------------
    @property
    def session_store(self) -> SessionStore | None:
        return self.store

    @property
    def open_session_name(self) -> str | None:
        return self.session.name if self.session is not None else None

    def open_screen(self) -> None:
        from ..screens.sessions import SessionsScreen

        if self.store is not None:
            self.app.push_screen(SessionsScreen(self))

    async def open_session(self, name: str) -> str | None:
        """Open saved session ``name`` in place of the conversation; None, or why not."""
        store = self.store
        if store is None:
            return "sessions are not available"
        if self.chat.replying:
            return "Stop the reply first (Esc) to open another session."
        if self.session is not None and self.session.name == name:
            return None
        await self.saves_done()
        try:
            session = store.open(name, lock=True)
        except WorkbenchError as exc:
            return str(exc)
        if self.session is not None:
            await self._close_cache(self.session)
            store.release(self.session.name)
        session.sampling = self.conversation.params
        self.session = session
        self.last_resume = None
        self._saved_at = session.updated.timestamp()
        self._dirty = False
        await self.chat.show(session)
        self._show_status()
        self.app.prompt.focus()
        self.app.run_worker(self._continue(session), group="session-resume", exclusive=True,
                            exit_on_error=False, description="resume the session")
        return None

    async def _continue(self, session: Session) -> None:
        """Load the session's model if another one is loaded, then restore its cache."""
        await self.models.wait_loaded()
        want, have = session.model, self.models.info
        other = want and (have is None or not names(want, have))
        if other and not await self.models.switch(want, quiet=True):
            self.app.notify(f"The session's model {want} could not be loaded: the "
                            "conversation continues with the model loaded now.",
                            title="Session", severity="warning", timeout=12)
        if self.models.ready and self.session is session and session.messages:
            await self._resume(session, use_adapter=True)

    async def new_session(self, name: str) -> str | None:
        """Start an empty conversation saved as session ``name``; None, or why not."""
        store = self.store
        if store is None:
            return "sessions are not available"
        if self.chat.replying:
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
        old = self.session
        await self.chat.new_chat()
        if old is not None:
            self.conversation_cleared(old)  # released now (the message comes too late)
        session = self.conversation.session
        session.name = name
        self.session = session
        self._record_model()
        try:
            saved = store.save(session)
        except (WorkbenchError, OSError) as exc:
            return f"session {name!r} could not be saved: {exc}"
        session.updated = saved.saved_at
        self._saved_at = time.time()
        self._show_status()
        return None

    async def rename_session(self, old: str, new: str) -> str | None:
        store = self.store
        if store is None:
            return "sessions are not available"
        is_open = self.session is not None and self.session.name == old
        if is_open and self.chat.replying:
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
            self._show_status()
        return None

    async def delete_session(self, name: str) -> str | None:
        store = self.store
        if store is None:
            return "sessions are not available"
        is_open = self.session is not None and self.session.name == name
        if is_open and self.chat.replying:
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
            await self.chat.new_chat()
            self._show_status()
        return None

    # -- export --------------------------------------------------------------------------
    def default_export_path(self) -> Path | None:
        if self.session is None or self.store is None:
            return None
        return self.store.folder / f"{self.session.name}.md"

    def export_open_session(self, target: str) -> tuple[Path | None, str]:
        """Write the open session as Markdown to ``target`` (a file or a folder; empty: the
        sessions folder). Returns the path written, or None, and one line saying so."""
        default = self.default_export_path()
        if self.session is None or self.store is None or default is None:
            return None, "Nothing to export yet: the conversation has no reply."
        return export_to(self.store, self.session, target, default)

    def export(self) -> None:
        """Export the open session to NAME.md in the sessions folder, and say where."""
        path, message = self.export_open_session("")
        self.app.notify(message, title="Export", severity="information" if path else "warning",
                        timeout=12)
