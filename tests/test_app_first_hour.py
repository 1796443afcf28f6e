"""A new user's first hour in the app (issue 10 #12, #13, #15, #16, #17), on the fake engine:
focus and typing, a failed load and a bad ``--adapter``, every screen at 80x24, F12 without
~/Downloads and in dialogs, stale progress bars, tiny memory bars, times in seconds."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import Static

from engine import AdapterInfo, MemoryReading, TurnStats
from tests.fake_engine import FakeEngine, fake_adapter
from workbench.cli import make_args
from workbench.tui.app import WorkbenchApp
from workbench.tui.controllers.jobs import Job
from workbench.tui.screens.adapter_details import AdapterDetailsScreen
from workbench.tui.screens.help import HelpScreen
from workbench.tui.screens.models import JobPanel, ModelsScreen
from workbench.tui.screens.settings import SettingsScreen

SMALL = (80, 24)
WIDE = (120, 40)
ROOT = Path(__file__).resolve().parents[1]


def make_app(fake: FakeEngine | None = None, **overrides) -> WorkbenchApp:
    overrides.setdefault("model", "fake-model")
    overrides.setdefault("adapters", "/fake/adapters")
    fake = fake if fake is not None else FakeEngine(adapters=["tone-a", "tone-b"])
    return WorkbenchApp(make_args(**overrides), engine=fake)


async def until(pilot: Pilot, condition: Callable[[], bool], what: str,
                timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.02)


async def ready(pilot: Pilot) -> WorkbenchApp:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await until(pilot, lambda: app.models.ready, "the model to load")
    await until(pilot, lambda: app.adapters.pane.status == "", "the adapters list")
    return app


def notes(app: WorkbenchApp) -> list[str]:
    return [n.message for n in app._notifications]


def inside(widget, width: int, height: int) -> bool:
    """The widget is on screen, whole."""
    r = widget.region
    return widget.display and r.width > 0 and r.x >= 0 and r.y >= 0 \
        and r.right <= width and r.bottom <= height


# -- #12 focus -----------------------------------------------------------------------------
async def test_escape_goes_back_to_the_prompt_from_the_sidebar_and_the_chat() -> None:
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        for focus in (app.adapters.focus_list, app.adapters.focus_scale, app.chat_view.focus,
                      app.sidebar.focus):
            focus()
            await pilot.pause()
            assert app.focused is not app.prompt
            await pilot.press("escape")
            assert app.focused is app.prompt, focus
        await pilot.press("f2")  # in a dialog Esc still closes it
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen), "the close")


async def test_typing_while_a_sidebar_control_has_the_focus_goes_to_the_prompt() -> None:
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        await pilot.press("f4")
        assert app.focused is app.adapters.pane.option_list
        await pilot.press("h", "i")
        assert app.focused is app.prompt and app.prompt.text == "hi"
        app.adapters.focus_scale()
        await pilot.pause()
        await pilot.press("space", "x")
        assert app.focused is app.prompt and app.prompt.text == "hi x"
        app.chat_view.focus()
        await pilot.press("!")
        assert app.prompt.text == "hi x!"
        # A key the control binds keeps its meaning: d shows the adapter's details.
        await pilot.press("f4", "down", "d")
        await until(pilot, lambda: isinstance(app.screen, AdapterDetailsScreen), "details")


async def test_the_focused_widget_is_marked() -> None:
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        pane, scale = app.adapters.pane, app.adapters.pane.scale_control
        border, background = pane.styles.border_top, scale.styles.background
        tint = app.chat_view.styles.background_tint
        app.adapters.focus_scale()
        await pilot.pause()
        assert pane.styles.border_top != border, "the pane with the focus is marked"
        assert scale.styles.background != background
        app.chat_view.focus()
        await pilot.pause()
        assert app.chat_view.styles.background_tint != tint
        assert pane.styles.border_top == border


async def test_settings_open_on_the_system_prompt_and_hints_are_not_cut() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        screen = app.screen
        assert screen.focused is not None and screen.focused.id == "system-prompt"
        screen.query_one("#field-temperature").value = "9"  # type: ignore[attr-defined]
        await pilot.pause()
        hint = screen.query_one("#hint-temperature", Static)
        problem = str(hint.render())
        assert "out of range" in problem
        assert hint.size.height * hint.size.width >= len(problem), "the hint is cut off"
        assert inside(screen.query_one("#apply"), *SMALL), "Apply is on screen"


async def test_a_paste_with_escape_sequences_does_not_scramble_the_prompt() -> None:
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        pasted = "\x1b[31mred\x1b[0m text\x1b]0;title\x07 \x1b[2J\x1b[Hend\x07\r\nnext"
        app.prompt.post_message(events.Paste(pasted))
        await pilot.pause()
        text = app.prompt.text
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
        assert text == "red text end\u2407\nnext"  # a lone BEL is shown as its picture


# -- #13 a failed load, a bad --adapter ----------------------------------------------------
async def test_after_a_failed_load_the_app_says_no_model_is_loaded_and_points_at_f5() -> None:
    fake = FakeEngine()
    fake.fail_load("missing-model", "no such folder: missing-model")
    app = make_app(fake, model="missing-model")
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await until(pilot, lambda: app.models.load_finished, "the load to fail")
        await pilot.pause()
        assert "no model loaded" in app.status.text and "F5" in app.status.text
        assert "F5" in str(app.banner.render())
        await pilot.press(*"hello", "enter")
        await until(pilot, lambda: app.prompt.text == "hello", "the message to come back")
        said = " ".join(notes(app))
        assert "No model is loaded: F5 opens the models screen" in said
        assert "--model" not in said and "waiting for the model" not in said
        assert fake.chats == [], "nothing is sent to an engine without a model"
        assert app.chat.conversation.messages == []


async def test_a_bad_adapter_loads_the_base_model_with_one_notice() -> None:
    fake = FakeEngine(adapters=["tone-a"])  # a bad adapter: the base, and one Notice
    app = make_app(fake, adapter=["/nowhere/tone-x"])
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await ready(pilot)
        await pilot.pause(0.2)
        about = [n for n in notes(app) if "tone-x" in n]
        assert len(about) == 1 and "without the adapter tone-x" in about[0], notes(app)
        pane = app.adapters.pane
        assert pane.is_active(None), "No adapter is the active row"
        assert [i.name for i in pane.infos if not i.valid] == ["tone-x"]
        assert app.models.info is not None and app.models.info.adapter is None
        assert "adapter" not in str(app.sidebar.model.query_one("#model-facts").render())


# -- #15 80x24 -----------------------------------------------------------------------------
async def test_a_narrow_terminal_hides_the_sidebar_and_ctrl_b_shows_it_full_width() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        assert not app.sidebar.display, "80 columns: the chat gets the width"
        assert app.prompt.size.width > 60
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert app.sidebar.display and app.sidebar.size.width >= 70
        await pilot.press("escape")
        await pilot.pause()
        assert not app.sidebar.display and app.focused is app.prompt
        await pilot.press("f4")  # the adapters key shows it too
        await pilot.pause()
        assert app.sidebar.display and app.focused is app.adapters.pane.option_list
        await pilot.press("x")  # typing goes back to the chat
        await pilot.pause()
        assert not app.sidebar.display and app.prompt.text == "x"
        await pilot.resize_terminal(*WIDE)
        await until(pilot, lambda: app.sidebar.display, "the sidebar beside the chat")
        await pilot.pause()
        assert app.sidebar.outer_size.width == 38


async def test_the_status_line_and_the_footer_keep_to_one_line_at_80_columns() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        app.update_status(note="a very long note about what just happened " * 3,
                          session="a-long-session-name · saved 40 s ago")
        await pilot.pause()
        state = app.status_line.query_one("#status-state")
        session = app.status_line.query_one("#status-session")
        assert state.region.right <= session.region.x, "the two parts do not overlap"
        assert state.render_line(0).text.rstrip().endswith("…")
        assert "session: a-long-session-name" in session.render_line(0).text
        from textual.widgets._footer import FooterKey

        keys = [k for k in app.query(FooterKey) if k.display]
        assert keys
        for left, right in itertools.pairwise(keys):
            assert left.region.right <= right.region.x, (left.description, right.description)
        assert all(inside(k, *SMALL) for k in keys), [k.description for k in keys]
        assert "Quit" in {k.description for k in keys}


@pytest.mark.parametrize("size", [SMALL, (160, 50)])
async def test_every_screen_fits(size: tuple[int, int]) -> None:
    fake = FakeEngine(adapters=["tone-a", fake_adapter("broken", reason="it is damaged")])
    app = make_app(fake)
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.press(*"hello", "enter")
        await until(pilot, lambda: app.sessions.saved, "the reply and its save")

        async def opened(key: str, kind: type, *visible: str) -> None:
            await pilot.press(key)
            await until(pilot, lambda: isinstance(app.screen, kind), kind.__name__)
            await pilot.pause(0.2)
            for selector in visible:
                widget = app.screen.query_one(selector)
                assert inside(widget, *size), f"{kind.__name__}: {selector} is cut off"
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, kind), "the close")

        await opened("f2", SettingsScreen, ".dialog-title", "#apply", "#cancel")
        await opened("f1", HelpScreen, ".dialog-title", ".dialog-hint")
        await opened("f5", ModelsScreen, ".dialog-title", "#models-download", ".dialog-hint")
        from workbench.tui.screens.compare import CompareScreen
        from workbench.tui.screens.sessions import SessionsScreen

        await opened("f3", SessionsScreen, ".dialog-title", "#sessions-table", ".dialog-hint")
        await opened("f8", CompareScreen, ".dialog-title", "#run-compare", "#close-compare")
        app.adapters.show_details("/fake/adapters/broken")
        await until(pilot, lambda: isinstance(app.screen, AdapterDetailsScreen), "details")
        await pilot.pause(0.2)
        for selector in (".dialog-title", "#adapter-verdict", "#close-details"):
            assert inside(app.screen.query_one(selector), *size), selector


async def test_the_welcome_screen_fits_at_80x24() -> None:
    from workbench.tui.screens.welcome import WelcomeScreen

    app = WorkbenchApp(make_args(), engine=FakeEngine())
    async with app.run_test(size=SMALL) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WelcomeScreen), "the welcome")
        await pilot.pause(0.3)
        for selector in (".dialog-title", "#welcome-folder", "#welcome-demo", ".dialog-hint"):
            assert inside(app.screen.query_one(selector), *SMALL), selector


# -- #16 F12 -------------------------------------------------------------------------------
async def test_f12_without_downloads_saves_in_the_data_folder_even_in_a_dialog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.tui import screenshot

    monkeypatch.setattr(screenshot, "downloads", lambda: tmp_path / "no-Downloads")
    app = make_app()
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        await pilot.press("f12")
        folder = tmp_path / "data" / "screenshots"  # WORKBENCH_DATA_DIR (conftest)
        await until(pilot, lambda: folder.is_dir() and any(folder.glob("*.svg")), "the file")
        saved = next(folder.glob("*.svg"))
        assert "Settings" in saved.read_text(encoding="utf-8")
        assert any(str(saved) in n for n in notes(app)), notes(app)
        assert isinstance(app.screen, SettingsScreen), "the dialog stays open"


# -- #17 the smaller ones ------------------------------------------------------------------
async def test_a_failed_download_leaves_its_reason_and_no_progress_bar() -> None:
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        job = Job("download", "owner/model")
        job.latest = type("P", (), {"done": 40, "total": 100, "line": lambda self: "40%"})()
        job.finish("failed", "download of owner/model failed: the network went away")
        job.announced = True
        app.models.jobs.jobs["download"] = job
        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen), "the models screen")
        await pilot.pause(0.3)
        panel = app.screen.query_one("#models-download-job", JobPanel)
        assert panel.display and "the network went away" in panel.text
        assert not panel.query_one(".job-row").display, "no stale bar after a failure"


async def test_memory_bars_of_a_tiny_model_say_something() -> None:
    tiny = MemoryReading(mlx_active=13_400_000, mlx_peak=16_000_000, mlx_cache=0,
                         process_rss=420_000_000, system_available=12_600_000_000,
                         system_total=17_100_000_000, device_total=17_100_000_000,
                         weight_bytes=11_800_000, kv_bytes=600_000)
    app = make_app(FakeEngine(memory_reading=tiny))
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        app.sidebar.memory.record(tiny)
        app.sidebar.memory.tick()
        await pilot.pause()
        for name, amount in (("active", "13 MB"), ("weights", "12 MB"), ("kv", "600.0 KB")):
            gauge = app.sidebar.memory.query_one(f"#mem-{name}")
            assert gauge.text == f"{amount} <1%", gauge.text  # type: ignore[attr-defined]
            line = gauge.render_line(0).text
            assert re.search(r"[━╸]", line.split("<1%")[0][9:]), line


async def test_times_over_a_second_read_in_seconds() -> None:
    slow = TurnStats(prompt_tokens=3000, reused_tokens=0, prefill_tokens=3000,
                     prefill_tps=1250.0, ttft_s=2.4, decode_tps=12.5, generated_tokens=20,
                     finish_reason="stop", peak_memory=1_000_000, kv_bytes=1000)
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: app.sessions.saved, "the reply")
        turn = app.chat_view.last_assistant()
        assert turn is not None
        turn.show_stats(slow)
        app.sidebar.throughput.show_stats(slow)
        app.sidebar.throughput.tick()
        await pilot.pause()
        assert "first token 2.4 s" in str(turn.query_one(".turn-stats", Static).render())
        facts = str(app.sidebar.throughput.query_one("#throughput-facts", Static).render())
        assert "2.4 s" in facts and "2400 ms" not in facts


def test_docs_list_every_key_of_the_app() -> None:
    from workbench.keymap import APP_BINDINGS, PROMPT_BINDINGS

    doc = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    for binding in [*APP_BINDINGS, *PROMPT_BINDINGS]:
        assert f"`{binding.id}`" in doc, binding.id
    for key in ("F3", "F4", "F5", "F8", "F12"):
        assert f"| {key} |" in doc, key
    assert "Downloads" in doc and "80x24" in doc  # F12's folders; the narrow layout


def test_one_path_identity_helper_in_the_app() -> None:
    """The app compares folders with models.resolve.same_location only."""
    for path in (ROOT / "workbench" / "tui").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"def (same_path|same_folder|same_model)\b", text), path
        assert ".resolve() ==" not in text, path


def test_an_adapter_under_another_spelling_is_the_active_one(tmp_path: Path) -> None:
    from engine import AdapterState
    from workbench.tui.widgets.adapters import AdaptersPane

    folder = tmp_path / "tone-a"
    folder.mkdir()
    info = AdapterInfo(path=str(folder), name="tone-a", valid=True)
    pane = AdaptersPane()
    pane.active = AdapterState(info=fake_adapter("tone-a", str(tmp_path / "." / "tone-a")),
                               scale=1.0, lora_scale=20.0, identity="tone-a")
    assert pane.is_active(info) and not pane.is_active(None)


@pytest.mark.parametrize("width", [80, 130])
async def test_the_footer_drops_keys_rather_than_breaking(width: int) -> None:
    from textual.widgets._footer import FooterKey

    app = make_app()
    async with app.run_test(size=(width, 30)) as pilot:
        await ready(pilot)
        await pilot.pause()
        keys = sorted((k for k in app.query(FooterKey) if k.display), key=lambda k: k.region.x)
        for left, right in itertools.pairwise(keys):
            assert left.region.right <= right.region.x, (left.description, right.description)
        assert all(inside(k, width, 30) for k in keys)
