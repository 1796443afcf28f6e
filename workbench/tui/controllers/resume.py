"""The sessions controller's longer errands: resuming a session on the engine, exporting it,
and the words for when it was saved (kept apart so that each module stays short).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from engine import EngineError, Notice, PrefillProgress, follow
from sessions import submit_resume

if TYPE_CHECKING:
    from engine import EngineAPI
    from sessions import ResumeReport, Session, SessionStore

    from ..app import WorkbenchApp


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


async def resume(app: WorkbenchApp, engine: EngineAPI, store: SessionStore, session: Session,
                 use_adapter: bool, replying: Callable[[], bool]) -> ResumeReport | None:
    """Restore ``session``'s adapter (when ``use_adapter``) and prompt cache, or re-read its
    transcript; say how it went. The Adapters pane hears of the adapter through the
    engine's ``AdapterChanged``. None if it was not resumed."""
    adapter_stream = None
    active = engine.adapter
    if use_adapter and session.adapter:
        adapter_stream = engine.use_adapter(session.adapter, session.adapter_scale)
    elif use_adapter and active is not None and active.info is not None:
        adapter_stream = engine.use_adapter(None)  # the session had none
    # Queued at once, behind the adapter: a message sent now is answered after it.
    resume_stream = submit_resume(engine, store, session)
    if adapter_stream is not None:
        try:
            await adapter_stream.result()
        except EngineError as exc:
            app.notify(f"The session's adapter was not restored: {exc}. Continuing without "
                       "it.", title="Session", severity="warning", timeout=12)

    def progress(event: PrefillProgress) -> None:
        if not replying():
            app.update_status(note=f"reading the session again: {event.done}/"
                              f"{event.total} tokens")

    def notice(event: Notice) -> None:
        app.notify(event.message, title="Session", severity="warning", timeout=12)

    try:
        report = await follow(resume_stream, {PrefillProgress: progress, Notice: notice})
    except EngineError as exc:
        app.notify(f"The session was not resumed: {exc}", title="Session", severity="warning",
                   timeout=12)
        return None
    how = (f"prompt cache reused ({report.cached_tokens} tokens)" if report.reused
           else f"{report.prefilled_tokens} tokens read again")
    app.update_status(note="")
    app.notify(f"Session {session.name}: {session.turns} turns, {how}.", title="Session",
               timeout=6)
    return report


def export_to(store: SessionStore, session: Session, target: str, default: Path
              ) -> tuple[Path | None, str]:
    """Write ``session`` as Markdown to ``target`` (a file or a folder; empty: ``default``,
    NAME.md in the sessions folder, which is rewritten). Through ``sessions.export``'s
    checks: never a session's own file, never a file of the user's overwritten, 0600.
    Returns the path written, or None, and one line saying so."""
    from sessions import export_markdown
    from sessions.errors import ExportRefused
    from sessions.export import write_export

    path = Path(target).expanduser() if target.strip() else default
    if path.is_dir():
        path = path / default.name
    path = path.absolute()
    ours = path == default.absolute()  # the workbench's own export file
    try:
        write_export(store, export_markdown(session), path, force=ours)
    except ExportRefused as exc:
        if path.exists() and not ours and not store.is_session_file(path):
            return None, f"Not exported: {path} exists; choose another file name"
        return None, f"Not exported: {exc}"
    except OSError as exc:
        return None, f"Not exported: {path} cannot be written ({exc.strerror or exc})"
    return path, f"Exported {session.name} to {path}"
