"""The app reads a saved or finished reply's reasoning on the markers it was written with:
a block the template opened (the reply only closes it) and another model's markers
(``<longcat_think>``, one of those mlx-lm knows), on the scripted fake engine."""

from __future__ import annotations

from textual.pilot import Pilot

from tests.fake_engine import FakeEngine
from tests.test_app import SIZE, fake_app, reply_done, send, until
from workbench.tui.app import WorkbenchApp
from workbench.tui.widgets import AssistantTurn

OPENED = "I weigh it first.</think>\n\nThe answer."
LONGCAT = "<longcat_think>\nI weigh it.</longcat_think>\n\nThe answer."


async def _reply(pilot: Pilot, app: WorkbenchApp, text: str) -> AssistantTurn:
    await until(pilot, lambda: app.models.ready, "the model to load")
    await send(pilot, text)
    return await reply_done(pilot, app)


async def test_copy_takes_the_answer_of_a_reply_whose_template_opened_the_block() -> None:
    fake = FakeEngine()
    fake.script(OPENED)
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await _reply(pilot, app, "think first")
        await pilot.press("ctrl+o")
        assert app.clipboard == "The answer."


async def test_a_restored_reply_with_other_markers_shows_its_reasoning_apart() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        turn = await _reply(pilot, app, "hello")
        await turn.show_text(LONGCAT)  # as a resumed session shows a saved reply
        await pilot.pause()
        assert (turn.reasoning, turn.text) == ("I weigh it.", "The answer.")
        assert turn.reasoning_block is not None
