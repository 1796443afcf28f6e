"""Issue 19 #6, #7 and bits of #14: the screens a new user opens show all they hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.containers import VerticalScroll
from textual.widgets import Input, Static

from tests.fake_engine import FakeEngine
from tests.test_app_first_hour import WIDE, inside, make_app, ready, until
from workbench.tui.screens.help import HelpScreen
from workbench.tui.screens.models import ModelsScreen


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


# -- #7 F5 opens a local model folder ------------------------------------------------------
async def test_the_models_screen_opens_a_model_folder_typed_in_it(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"")
    fake = FakeEngine()
    app = make_app(fake)
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen), "the models screen")
        screen = app.screen
        field = screen.query_one("#models-repo", Input)
        # A folder that is no model: one line that says why, and the screen stays.
        field.value = str(tmp_path)
        field.focus()
        await pilot.press("enter")
        message = str(screen.query_one("#models-message", Static).render())
        assert "not a model folder (no config.json)" in message
        assert app.screen is screen
        field.value = str(folder)
        await pilot.press("enter")
        await until(pilot, lambda: app.models.info is not None
                    and app.models.info.path == str(folder.resolve()), "the folder's model")
        assert app.models.jobs.jobs.get("download") is None, "nothing was downloaded"


# -- #14 the 80x24 footer keeps the keys the docs promise -----------------------------------
def promised_footer_keys() -> list[str]:
    """The keys docs/app.md says the 80x24 footer keeps."""
    import re
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "docs/app.md").read_text().split())
    found = re.search(r"At 80x24 the footer keeps the most used keys \(([^)]*)\)", text)
    assert found, "docs/app.md says which keys the 80x24 footer keeps"
    return [label.strip() for label in found.group(1).split(",")]


async def test_the_80x24_footer_has_the_keys_the_docs_promise() -> None:
    from textual.widgets._footer import FooterKey

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.pause()
        shown = {key.description: key for key in app.query(FooterKey)}
        for label in promised_footer_keys():
            assert label in shown, f"{label} is in the footer at 80x24"
            assert inside(shown[label], 80, 24), f"{label} is whole on screen"
