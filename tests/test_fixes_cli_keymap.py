"""Issue 19, item 14: the warning for an unknown key binding id in the config showed as
"unknown key binding id 'x' in  (ignored)": the toast read ``[keys]`` as markup and dropped
it, and the line named no file. Pilot: what the toast shows."""

from __future__ import annotations

from textual.widgets._toast import Toast

from tests.fake_engine import FakeEngine
from workbench import paths
from workbench.cli import make_args
from workbench.config import Config, save_config
from workbench.tui.app import WorkbenchApp


async def test_config_warnings_show_the_table_and_the_file() -> None:
    save_config(Config(keys={"x": "f9"}))
    app = WorkbenchApp(make_args(model="fake-model", temperature=0.0), engine=FakeEngine())
    async with app.run_test(size=(120, 36), notifications=True) as pilot:
        await pilot.pause()
        shown = [str(toast.render()) for toast in app.screen.query(Toast)]
        key_line = next((t for t in shown if "unknown key binding id 'x'" in t), "")
        assert "in [keys] (ignored)" in key_line, shown
        assert str(paths.config_file()) in key_line, shown
