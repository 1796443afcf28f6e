"""Quitting at once: the app must exit cleanly however early Ctrl+Q comes.

Ctrl+Q pressed just after the first frame used to end the app with exit code 1: the
adapters pane, mounted after the first frame, was mounted into a sidebar being taken down.
"""

from __future__ import annotations

import pytest

from tests.fake_engine import FakeEngine
from workbench.cli import make_args
from workbench.tui.app import WorkbenchApp


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.1])
async def test_ctrl_q_right_after_start_exits_cleanly(delay: float) -> None:
    engine = FakeEngine()
    app = WorkbenchApp(make_args(model="fake-model"), engine=engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(delay)
        await pilot.press("ctrl+q")
    assert app.return_code == 0
    assert engine._closed  # the app closed its engine on the way out
