"""Issue 19 #6, #7 and bits of #14: the screens a new user opens show all they hold."""

from __future__ import annotations

import pytest
from textual.containers import VerticalScroll

from tests.test_app_first_hour import inside, make_app, ready, until
from workbench.tui.screens.help import HelpScreen


# -- #6 F1 reaches its last rows -----------------------------------------------------------
@pytest.mark.parametrize("size", [(120, 36), (120, 40), (80, 24)])
async def test_help_shows_its_last_rows_and_the_close_hint(size: tuple[int, int]) -> None:
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        await pilot.pause()
        dialog = app.screen.query_one("#help-dialog")
        keys = app.screen.query_one("#help-dialog VerticalScroll", VerticalScroll)
        assert inside(app.screen.query_one(".dialog-hint"), *size), "Esc closes is on screen"
        assert dialog.content_region.contains_region(keys.region), \
            "the keys' scroll is cut off by the dialog: its last rows cannot be reached"
        keys.scroll_end(animate=False)
        await pilot.pause()
        table = app.screen.query_one("#help-table")
        assert keys.scroll_y + keys.scrollable_content_region.height >= table.size.height
