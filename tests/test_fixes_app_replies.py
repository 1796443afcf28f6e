"""Issue 19 #10: a reply keeps its line breaks (a haiku is three lines, not one of prose)."""

from __future__ import annotations

from textual.widgets._markdown import MarkdownParagraph

from tests.fake_engine import FakeEngine
from tests.test_app import fake_app, reply_done, send
from tests.test_app_first_hour import WIDE, ready

HAIKU = "An old silent pond\nA frog jumps into the pond\nSplash! Silence again."


async def test_a_reply_keeps_its_single_line_breaks() -> None:
    app = fake_app(FakeEngine(replies=[HAIKU + "\n\nA second paragraph."]), max_tokens=200)
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        await send(pilot, "a haiku please")
        turn = await reply_done(pilot, app)
        await pilot.pause()
        paragraphs = list(turn.markdown.query(MarkdownParagraph))
        assert len(paragraphs) == 2, "a blank line still separates paragraphs"
        assert paragraphs[0].size.height == 3, "each line of the haiku on its own line"
        assert paragraphs[1].size.height == 1
