"""Issue 19 #14: at 80x24 the sessions table (F3) hid columns without a hint. A line under
the table now says when columns are a scroll away, and only then."""

from __future__ import annotations

import pytest
from test_app import until
from test_app_sessions import fake_session_app, seed, sessions_screen

from workbench.tui.widgets.columns_hint import ColumnsHint

LONG = "a title long enough to push the other columns of the table out of an 80-column view"


@pytest.mark.parametrize(("size", "title", "hidden"), [((80, 24), LONG, True),
                                                       ((120, 36), "notes", False)])
async def test_the_sessions_table_says_when_columns_are_out_of_view(tmp_path, size, title,
                                                                    hidden):
    folder = tmp_path / "sessions"
    seed(folder, "notes", title, "mlx-community/a-model-4bit")
    app = fake_session_app(folder)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        screen = await sessions_screen(pilot, app)
        await pilot.pause()
        hint = screen.query_one("#sessions-columns", ColumnsHint)
        await until(pilot, lambda: hint.display is hidden, "the columns hint to settle")
        table = screen.table
        assert (table.virtual_size.width > table.scrollable_content_region.width) is hidden
