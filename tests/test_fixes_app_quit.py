"""Issue 19 #12: Ctrl+Q while a training run goes asks first; Ctrl+C says what stops a reply."""

from __future__ import annotations

from tests.test_app_first_hour import WIDE, make_app, notes, ready, until
from tests.test_app_train import open_train, start_on_folder, train_app
from workbench.tui.screens.sessions import ConfirmScreen


async def test_ctrl_q_during_training_asks_first_and_no_keeps_the_run(tmp_path) -> None:
    app, jobs = train_app()
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.models.ready and bool(app.adapters.infos), "the load")
        screen = await open_train(pilot, app)
        await start_on_folder(pilot, screen, tmp_path / "data")
        await until(pilot, lambda: bool(jobs.made) and jobs.made[0].started.is_set(),
                    "the run to start")
        await pilot.press("escape")  # back to the chat; the run goes on
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        question = str(app.screen.query_one("#confirm-question").render())
        assert "Training" in question and "lost" in question
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the answer")
        assert app.is_running and app.training.run is not None and app.training.run.running
        assert not jobs.made[0].cancelled.is_set(), "No keeps the run going"
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question again")
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running, "the app to quit")
    assert app.return_code == 0


async def test_ctrl_c_in_the_app_says_esc_stops_a_reply() -> None:
    app = make_app()
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await ready(pilot)
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press("ctrl+c")
        await pilot.pause()
        said = " ".join(notes(app))
        assert "esc stops a reply" in said.lower()
        assert "to quit the app" not in said  # Textual's own hint
        assert app.is_running
