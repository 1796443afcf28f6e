"""Issue 19 #2: keys typed while the chat has the focus all reach the prompt, in order, and
plain letters never edit or regenerate a turn while someone is typing."""

from __future__ import annotations

from textual.pilot import Pilot

from tests.test_app import type_text
from tests.test_app_first_hour import WIDE, make_app, ready, until
from workbench.tui.app import WorkbenchApp


async def one_exchange(pilot: Pilot, app: WorkbenchApp) -> None:
    await pilot.press(*"hi", "enter")
    await until(pilot, lambda: len(app.chat.conversation.messages) == 2
                and not app.chat.replying, "the first reply")


async def test_keys_that_arrive_together_in_the_chat_all_go_to_the_prompt() -> None:
    """"Hello there" typed with the focus in the chat: the keys come in one read from the
    terminal (``type_text``), before the first of them has moved the focus."""
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        await one_exchange(pilot, app)
        await pilot.press("shift+tab")
        await until(pilot, lambda: app.focused is app.chat_view, "the chat's focus")
        await type_text(pilot, "Hello there")
        await pilot.pause()
        assert app.prompt.text == "Hello there"
        assert app.focused is app.prompt
        conversation = app.chat.conversation
        assert len(conversation.messages) == 2, "no edit, no regenerated reply"
        assert conversation.siblings(1) == (1, 1), "no new branch"


# -- #3 80x24: the prompt is never used out of sight ---------------------------------------
async def test_at_80x24_choosing_an_adapter_brings_the_chat_back() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("f4")
        await until(pilot, lambda: app.sidebar.display, "the sidebar in place of the chat")
        await pilot.press("down", "enter")
        await until(pilot, lambda: app.focused is app.prompt, "the prompt's focus")
        await pilot.pause()
        assert not app.sidebar.display, "the sidebar gave the width back"
        assert app.prompt.region.height > 0, "the prompt is on screen"
        await pilot.press(*"hi")
        assert app.prompt.text == "hi"
