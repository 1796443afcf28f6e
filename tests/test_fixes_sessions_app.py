"""Issue 19 #17 in the app: a session's TOML edited on disk while the app holds it is kept
aside at the next autosave, and the app says so (the store's notice reaches the user)."""

from __future__ import annotations

from test_app import SIZE, reply_done, send, until
from test_app_sessions import fake_session_app, saved


async def test_an_edit_on_disk_is_kept_aside_and_the_app_says_so(tmp_path) -> None:
    folder = tmp_path / "sessions"
    app = fake_session_app(folder, session="notes")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await send(pilot, "first question")
        await reply_done(pilot, app)
        await saved(pilot, app)
        path = folder / "notes.toml"
        edited = path.read_text().replace("first question", "first question, fixed by hand")
        path.write_text(edited)
        await send(pilot, "second question")
        await until(pilot, lambda: any("kept as" in n.message for n in app._notifications),
                    "the notice")
        await saved(pilot, app)
    asides = sorted(folder.glob("notes.toml.edited-*"))
    assert len(asides) == 1 and asides[0].read_text() == edited
    assert "second question" in path.read_text()
