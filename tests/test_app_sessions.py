"""Sessions in the full-screen app: --session, autosave, resume, the sessions screen, export.

Driven by a Pilot; the files are read back with the store itself, as a later run of the
workbench would. The sessions screen, names, rename, delete, export and the autosave of the
transcript run on the scripted fake engine (``fake_session_app``: its autosave writes the
transcript and skips the prompt cache, as with no model). Resuming from a saved prompt cache,
or reading a transcript again, needs the model: those run on the real engine with the llama
demo model (``real_session_app``: greedy decoding, no network).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_app import (
    FAKE_MODEL,
    SIZE,
    fake_app,
    reply_done,
    said,
    send,
    sent,
    stats_line,
    turns,
    until,
)
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from sessions import SessionInUse, SessionStore
from workbench.cli import make_args
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.sessions import ConfirmScreen, SessionsScreen


def fake_session_app(folder: Path, **overrides) -> WorkbenchApp:
    """The fake engine (``--model fake-model``), sessions in ``folder``."""
    return fake_app(sessions_dir=str(folder), **overrides)


def real_session_app(demo_kit, folder: Path, *, model: bool = True, **overrides
                     ) -> WorkbenchApp:
    """The real engine with the llama demo model (``model=False``: no --model, so a resumed
    session's own model is loaded), sessions in ``folder``."""
    if model:
        overrides["model"] = str(demo_kit.llama)
    return WorkbenchApp(make_args(temperature=0.0, seed=0, max_tokens=24,
                                  sessions_dir=str(folder), **overrides))


def session_status(app: WorkbenchApp) -> str:
    return str(app.status_line.query_one("#status-session", Static).render())


async def saved(pilot: Pilot, app: WorkbenchApp) -> None:
    await until(pilot, lambda: app.sessions.saved, "the autosave")


def read(folder: Path, name: str):
    with SessionStore(folder) as store:
        return store.open(name)


def seed(folder: Path, name: str, title: str, model: str, turns: int = 1) -> None:
    """A saved session made with the store, as an earlier run would have left it."""
    with SessionStore(folder) as store:
        session = store.new(name, title=title, model=model)
        for i in range(turns):
            session.add_user(f"{title}: question {i}")
            session.add_reply(f"answer {i}")
        store.save(session)


async def sessions_screen(pilot: Pilot, app: WorkbenchApp) -> SessionsScreen:
    await pilot.press("f3")
    await until(pilot, lambda: isinstance(app.screen, SessionsScreen), "the sessions screen")
    screen = app.screen
    assert isinstance(screen, SessionsScreen)
    return screen


def names(screen: SessionsScreen) -> list[str]:
    return [row.name for row in screen.rows]


def table_text(screen: SessionsScreen) -> str:
    table = screen.query_one("#sessions-table", DataTable)
    return "\n".join(" | ".join(str(c) for c in table.get_row_at(i))
                     for i in range(table.row_count))


async def highlight(pilot: Pilot, screen: SessionsScreen, name: str) -> None:
    screen.table.move_cursor(row=names(screen).index(name))
    await pilot.pause()
    assert screen.highlighted_name == name


def message(screen: SessionsScreen) -> str:
    return str(screen.query_one("#sessions-message", Static).render())


# Real engine: the saved prompt cache is reused by a fresh app, which then writes the reply
# of the uninterrupted run (greedy) with no more prompt read than it needed.
async def test_session_flag_autosaves_and_a_fresh_app_resumes_it_from_the_cache(
        demo_kit, tmp_path) -> None:
    folder, resumed = tmp_path / "sessions", tmp_path / "resumed"
    app = real_session_app(demo_kit, folder, session="work")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        assert session_status(app) == "session: work · not saved yet"
        await send(pilot, "hello there")
        first = (await reply_done(pilot, app)).text
        await saved(pilot, app)
        assert session_status(app) == "session: work · saved just now"
        on_disk = read(folder, "work")
        assert [(m.role, m.content) for m in on_disk.messages] == [
            ("user", "hello there"), ("assistant", first)]
        assert on_disk.messages[1].stats["generated_tokens"] == 24
        assert (folder / "work.safetensors").stat().st_size > 0
        await send(pilot, "and a second question")
        second = (await reply_done(pilot, app)).text
        await saved(pilot, app)
        assert read(folder, "work").turns == 2
        # What the next run will find, kept aside; this run goes on to a third turn.
        shutil.copytree(folder, resumed)
        await send(pilot, "a third one")
        uninterrupted = await reply_done(pilot, app)
        assert uninterrupted.stats is not None
        # While the app runs, the session is its own: another writer is told so.
        with SessionStore(folder) as other, pytest.raises(SessionInUse):
            other.acquire("work")
    with SessionStore(folder) as other:  # and free again once it has quit
        other.acquire("work")

    # A fresh app, no --model: the session's model, its conversation, its cache.
    app = real_session_app(demo_kit, resumed, model=False, session="work")
    async with app.run_test(size=SIZE) as pilot:
        shown = ["hello there", first, "and a second question", second]
        await until(pilot, lambda: [t.text for t in turns(app)] == shown
                    and all(getattr(t, "done", True) for t in turns(app)),
                    "the saved conversation")
        await until(pilot, lambda: app.sessions.last_resume is not None, "the resume")
        report = app.sessions.last_resume
        assert report is not None and report.reused and report.prefilled_tokens == 0
        assert report.cached_tokens > 0
        assert app.models.info is not None
        assert Path(app.models.info.path) == demo_kit.llama.resolve()
        await send(pilot, "a third one")
        third = await reply_done(pilot, app)
        stats = third.stats
        assert stats is not None
        # The reply of the uninterrupted run, with no more prompt read than it needed:
        # everything the saved cache held was reused.
        assert third.text == uninterrupted.text
        assert stats.reused_tokens == report.cached_tokens
        assert stats.prefill_tokens == uninterrupted.stats.prefill_tokens
        assert stats.prefill_tokens <= (stats.prompt_tokens - report.history_tokens
                                        + report.history_tokens - report.cached_tokens)
        assert "prompt tokens from cache" in stats_line(third)
        await saved(pilot, app)
    assert read(resumed, "work").turns == 3


async def test_without_session_flag_each_conversation_is_saved_under_a_new_name(
        tmp_path) -> None:
    folder = tmp_path / "sessions"

    async def one_conversation(expected: str) -> None:
        app = fake_session_app(folder)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.models.ready, "the model to load")
            assert session_status(app) == ""
            await send(pilot, f"this goes to {expected}")
            reply = (await reply_done(pilot, app)).text
            await saved(pilot, app)
            assert session_status(app) == f"session: {expected} · saved just now"
            # A new chat is a new session: the saved one is left as it was.
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert session_status(app) == ""
        on_disk = read(folder, expected)
        assert [(m.role, m.content) for m in on_disk.messages] == [
            ("user", f"this goes to {expected}"), ("assistant", reply)]

    await one_conversation("chat")
    await one_conversation("chat-2")
    assert read(folder, "chat").turns == 1


async def test_sessions_screen_lists_filters_renames_deletes_and_opens(tmp_path):
    folder = tmp_path / "sessions"
    seed(folder, "alpha", "about lists", FAKE_MODEL, turns=2)
    seed(folder, "beta", "about dicts", FAKE_MODEL)
    seed(folder, "gamma", "about sets", "demo/elsewhere")
    (folder / "broken.toml").write_text("schema = 1\nmessages = 3\n")
    app = fake_session_app(folder)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        screen = await sessions_screen(pilot, app)
        assert sorted(names(screen)) == ["alpha", "beta", "broken", "gamma"]
        text = table_text(screen)
        assert "about lists" in text and "demo/elsewhere" in text and FAKE_MODEL in text
        assert "cannot be opened" in text  # the damaged one, with why
        alpha = screen.rows[names(screen).index("alpha")]
        assert alpha.turns == 2 and alpha.size_bytes > 0

        # Filter by text.
        await pilot.press("slash", *"dicts")
        assert names(screen) == ["beta"]
        screen.query_one("#sessions-filter", Input).value = ""
        await pilot.pause()
        assert len(names(screen)) == 4
        screen.table.focus()

        # Rename beta to delta.
        await highlight(pilot, screen, "beta")
        await pilot.press("r")
        form = screen.query_one("#sessions-form-input", Input)
        assert form.has_focus and form.value == "beta"
        form.value = "delta"
        await pilot.press("enter")
        await until(pilot, lambda: "delta" in names(screen), "the rename")
        assert not (folder / "beta.toml").exists() and (folder / "delta.toml").exists()
        assert read(folder, "delta").title == "about dicts"
        # A bad name is refused with one line, and nothing changes.
        await pilot.press("r")
        form.value = "../escape"
        await pilot.press("enter")
        await pilot.pause()
        assert "not allowed" in message(screen) and (folder / "delta.toml").exists()
        await pilot.press("escape")  # closes the form, not the screen
        assert app.screen is screen

        # Delete gamma: asked first; "no" keeps it, "yes" removes its files.
        await highlight(pilot, screen, "gamma")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        assert "gamma" in str(app.screen.query_one("#confirm-question", Static).render())
        await pilot.press("n")
        await until(pilot, lambda: app.screen is screen, "the answer")
        assert (folder / "gamma.toml").exists()
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        await until(pilot, lambda: "gamma" not in names(screen), "the delete")
        assert not (folder / "gamma.toml").exists()

        # Open alpha: its conversation replaces the chat (how it is resumed on the model:
        # test_a_session_opened_without_its_cache_is_read_again, on the real engine).
        await highlight(pilot, screen, "alpha")
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SessionsScreen), "the close")
        shown = ["about lists: question 0", "answer 0", "about lists: question 1", "answer 1"]
        await until(pilot, lambda: [t.text for t in turns(app)] == shown, "alpha's turns")
        assert session_status(app).startswith("session: alpha · saved")
        # The next reply continues alpha, and is saved into it.
        await send(pilot, "one more")
        reply = await reply_done(pilot, app)
        assert [role for role, _ in sent(app)] == ["user", "assistant"] * 2 + ["user"]
        assert sent(app)[-1] == ("user", "one more")
        await saved(pilot, app)
    on_disk = read(folder, "alpha")
    assert on_disk.turns == 3 and on_disk.messages[-1].content == reply.text


# Real engine: a session without its cache file has its transcript read again by the model.
async def test_a_session_opened_without_its_cache_is_read_again(demo_kit, tmp_path) -> None:
    folder = tmp_path / "sessions"
    seed(folder, "alpha", "about lists", str(demo_kit.llama), turns=2)
    app = real_session_app(demo_kit, folder)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        screen = await sessions_screen(pilot, app)
        await highlight(pilot, screen, "alpha")
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SessionsScreen), "the close")
        await until(pilot, lambda: app.sessions.last_resume is not None, "the resume")
        report = app.sessions.last_resume
        assert report is not None and not report.reused and "missing" in report.reason
        assert report.prefilled_tokens == report.history_tokens > 0
        assert any("alpha: 2 turns" in n.message for n in app._notifications)
        # The next message reads only itself: the transcript is in the cache now.
        await send(pilot, "one more")
        reply = await reply_done(pilot, app)
        assert reply.stats is not None
        assert reply.stats.reused_tokens >= report.history_tokens - 1
        await saved(pilot, app)
    assert read(folder, "alpha").turns == 3


async def test_new_session_and_markdown_export(tmp_path) -> None:
    folder = tmp_path / "sessions"
    app = fake_session_app(folder)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await send(pilot, "Tell me about exports")
        reply = (await reply_done(pilot, app)).text
        await saved(pilot, app)

        # Export the open session: the sessions folder is offered, and the path is said.
        screen = await sessions_screen(pilot, app)
        await pilot.press("e")
        form = screen.query_one("#sessions-form-input", Input)
        assert form.value == str(folder / "chat.md")
        await pilot.press("enter")
        await pilot.pause()
        exported = folder / "chat.md"
        assert f"to {exported}" in message(screen)
        text = exported.read_text()
        assert text.startswith("# Tell me about exports")
        assert "## You" in text and "Tell me about exports" in text
        assert "## Assistant" in text and reply.strip()[:20] in text
        # A chosen path (a folder) works too.
        elsewhere = tmp_path / "out"
        elsewhere.mkdir()
        await pilot.press("e")
        form.value = str(elsewhere)
        await pilot.press("enter")
        await pilot.pause()
        assert (elsewhere / "chat.md").read_text() == text
        assert str(elsewhere / "chat.md") in message(screen)

        # A new named session: an empty chat, saved at once, the old one kept.
        await pilot.press("n")
        assert form.value == "chat-2"
        form.value = "fresh start"
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SessionsScreen), "the close")
        assert turns(app) == [] and said(app) == []
        assert session_status(app) == "session: fresh start · saved just now"
        assert (folder / "fresh start.toml").exists() and read(folder, "chat").turns == 1
        await send(pilot, "hi")
        await reply_done(pilot, app)
        await saved(pilot, app)
        assert read(folder, "fresh start").turns == 1

        # Deleting the open session clears the chat; the next reply starts another one.
        screen = await sessions_screen(pilot, app)
        await highlight(pilot, screen, "fresh start")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        assert "open conversation" in str(
            app.screen.query_one("#confirm-question", Static).render())
        await pilot.press("y")
        await until(pilot, lambda: "fresh start" not in names(screen), "the delete")
        assert turns(app) == [] and session_status(app) == ""
        assert not (folder / "fresh start.toml").exists()
        await pilot.press("escape")
        assert not isinstance(app.screen, SessionsScreen)


# Real engine: the resume restores the adapter and the prompt cache together (the swap's
# re-prefill then happens during the resume, not with the next reply).
async def test_a_resumed_session_shows_its_adapter_and_keeps_a_scale_of_zero(
        demo_kit, tmp_path) -> None:
    """Issue 10, #3 and #14: a scale of 0 is saved as 0; on resume the Adapters pane marks
    the session's adapter, the restored replies keep their adapter tags, and the swap's
    re-prefill is known once the next reply is written."""
    folder = tmp_path / "sessions"
    adapters = str(demo_kit.adapters("llama"))
    app = real_session_app(demo_kit, folder, session="tuned", adapters=adapters,
                           adapter=[str(demo_kit.adapter("tone-b"))])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready and bool(app.adapters.infos),
                    "the model and the adapters")
        await app.engine.set_adapter_scale(0.0).result()
        await until(pilot, lambda: app.adapters.pane.active is not None
                    and app.adapters.pane.active.scale == 0.0, "the pane to hear of it")
        await send(pilot, "hello at zero")
        tuned = await reply_done(pilot, app)
        assert tuned.border_subtitle == "tone-b ×0"
        await saved(pilot, app)
    on_disk = read(folder, "tuned")
    assert on_disk.adapter_scale == 0.0 and Path(on_disk.adapter).name == "tone-b"

    app = real_session_app(demo_kit, folder, session="tuned", adapters=adapters)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.sessions.last_resume is not None, "the resume")
        pane = app.adapters.pane
        await until(pilot, lambda: pane.active is not None and pane.active.name == "tone-b",
                    "the pane to show the session's adapter")
        assert pane.active is not None and pane.active.scale == 0.0
        restored = [t for t in turns(app) if hasattr(t, "stats")]
        assert [t.border_subtitle for t in restored] == ["tone-b ×0"]
        await send(pilot, "and again")
        turn = await reply_done(pilot, app)
        assert turn.border_subtitle == "tone-b ×0"
        swap = str(app.query_one("#swap-facts", Static).render())
        assert "next reply" not in swap
