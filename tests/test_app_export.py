"""The app's Markdown export goes through the session store's checks (issue 10 #7's sibling):
it never overwrites a file of the user's, never a session's own file, and writes 0600."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.test_app import fake_app, reply_done, send, until


async def test_export_refuses_what_it_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "sessions"
    notes = tmp_path / "notes.md"
    notes.write_text("my own notes")
    app = fake_app(sessions_dir=str(folder))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await send(pilot, "Hello there")
        await reply_done(pilot, app)
        await until(pilot, lambda: app.sessions.saved, "the autosave")
        name = app.sessions.session.name  # type: ignore[union-attr]

        path, message = app.sessions.export_open_session(str(notes))
        assert path is None and "exists" in message
        assert notes.read_text() == "my own notes"

        own = folder / f"{name}.toml"
        before = own.read_bytes()
        path, message = app.sessions.export_open_session(str(own))
        assert path is None and "Not exported" in message
        assert own.read_bytes() == before

        for _ in range(2):  # the workbench's own NAME.md is rewritten each time
            path, message = app.sessions.export_open_session("")
            assert path == (folder / f"{name}.md").absolute(), message
        assert "Hello there" in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
