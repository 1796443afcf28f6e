"""Issue 19 #14: after a branch switch the replies keep their adapter label, and the status
line says which branch is shown (not what it said before the switch)."""

from __future__ import annotations

from textual.widgets import OptionList

from tests.fake_engine import FakeEngine
from tests.test_app import reply_done, send, status_text, turns
from tests.test_app_first_hour import WIDE, make_app, ready, until
from workbench.tui.screens.branches import BranchesScreen
from workbench.tui.widgets import AssistantTurn


def labels(app) -> list[str]:
    return [str(t.border_subtitle) for t in turns(app) if isinstance(t, AssistantTurn)]


async def two_branches(pilot, app) -> None:
    await send(pilot, "hello")
    await reply_done(pilot, app)
    await pilot.press("ctrl+r")  # a second reply, as a sibling branch
    await until(pilot, lambda: app.chat.conversation.siblings(1) == (2, 2), "the branch")
    await reply_done(pilot, app)


async def test_a_branch_switch_keeps_the_replies_adapter_labels() -> None:
    app = make_app(FakeEngine(adapters=["tone-a"], replies=["first reply", "second reply"]))
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        await two_branches(pilot, app)
        assert labels(app) == ["no adapter"]
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: app.chat.conversation.siblings(1) == (1, 2), "branch 1")
        await pilot.pause()
        assert labels(app) == ["no adapter"], "the label is kept on the branch shown"


async def test_after_f10_the_status_line_names_the_branch_shown() -> None:
    app = make_app(FakeEngine(adapters=["tone-a"], replies=["first reply", "second reply"]))
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        await two_branches(pilot, app)
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: "branch 1 of 2" in status_text(app), "the step's note")
        await pilot.press("f10")
        await until(pilot, lambda: isinstance(app.screen, BranchesScreen), "the branches")
        listed = app.screen.query_one(OptionList)
        other = next(i for i, o in enumerate(listed.options) if not str(o.prompt).startswith("●"))
        listed.highlighted = other
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, BranchesScreen), "the close")
        await until(pilot, lambda: app.chat.conversation.siblings(1) == (2, 2), "branch 2")
        await pilot.pause()
        assert "branch 1 of 2" not in status_text(app), "the old branch's note is gone"
        assert "shown" in status_text(app) and "of 2" in status_text(app)
