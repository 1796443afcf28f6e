"""Models in the full-screen app: the first-run welcome, the models screen, switching the
model mid-conversation, downloading from a (local, fake) Hub, quantizing.

Driven by a Pilot with the demo models' folders; the Hugging Face cache is a temporary folder
laid out by hand (tests/hub_server.py), and downloads come from the FakeHub on 127.0.0.1.

On the scripted fake engine (``fake_app``), which finds folders and repo ids with the real
``models.resolve`` (so cached, downloaded and missing models are the real ones) but loads no
weights; on the real engine (``real_app``) where the test is about the loaded weights: the
memory given back on a switch, a quantization (MLX on the engine thread) and loading it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import DEMO_REPO, demo_hub, go_online, place_in_hf_cache
from test_app import (
    SIZE,
    fake_app,
    real_app,
    reply_done,
    roles,
    send,
    status_text,
    turns,
    until,
)
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, OptionList, Static

import models.hub_transfer
from workbench import recent, runtime
from workbench.config import Config, load_config, save_config
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.models import JobPanel, ModelsScreen
from workbench.tui.screens.welcome import WelcomeScreen

WEIGHTS = "model.safetensors"


@pytest.fixture
def hf_cache(tmp_path, demo_kit, monkeypatch):
    """An otherwise empty Hugging Face cache holding the 4-bit qwen3 demo model."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    place_in_hf_cache(cache, "demo/qwen3-4bit", demo_kit.qwen3_4bit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def demo_as_default(demo_kit, monkeypatch):
    """The app's demo model is the kit's llama (not built again for every test)."""
    monkeypatch.setattr(runtime, "demo_model_path", lambda progress=None: demo_kit.llama)


def text_of(widget) -> str:
    return str(widget.render())


def first_run_app() -> WorkbenchApp:
    """No --model and none configured (the fake engine; the demo is the kit's llama)."""
    return fake_app(model=None, max_tokens=16)


def fake_llama_app(demo_kit) -> WorkbenchApp:
    """The fake engine, given the llama demo folder: found and described as the real engine
    would (its path, name, size, demo mark), no weights loaded."""
    return fake_app(model=str(demo_kit.llama), max_tokens=16)


def llama_app(demo_kit) -> WorkbenchApp:
    """The real engine with the llama demo model."""
    return real_app(demo_kit, max_tokens=16)


async def models_screen(pilot: Pilot, app: WorkbenchApp) -> ModelsScreen:
    await pilot.press("f5")
    await until(pilot, lambda: isinstance(app.screen, ModelsScreen), "the models screen")
    screen = app.screen
    assert isinstance(screen, ModelsScreen)
    await until(pilot, lambda: screen.scanned, "the models list")
    return screen


def listed(screen: ModelsScreen) -> list[str]:
    return [e.name for e in screen.shown]


def row(screen: ModelsScreen, name: str) -> list[str]:
    table = screen.query_one("#models-table", DataTable)
    return [str(c) for c in table.get_row_at(listed(screen).index(name))]


async def highlight(pilot: Pilot, screen: ModelsScreen, name: str) -> None:
    screen.table.focus()
    screen.table.move_cursor(row=listed(screen).index(name))
    await pilot.pause()
    assert screen.highlighted is not None and screen.highlighted.name == name


async def test_first_run_offline_shows_the_welcome_screen_over_the_demo(
        demo_kit, hf_cache, demo_as_default, tmp_path) -> None:
    app = first_run_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WelcomeScreen), "the welcome")
        screen = app.screen
        # Offline is said at once, and downloading is not offered.
        network = text_of(screen.query_one("#welcome-network", Static))
        assert network.startswith("Offline: HF_HUB_OFFLINE is set")
        assert "open a local folder, pick a cached model or try the demo" in network
        assert not screen.query_one("#welcome-download-section").display
        assert screen.query_one("#welcome-demo", Button).display
        # The demo model loads underneath, labelled as such.
        await until(pilot, lambda: app.models.ready, "the demo model to load")
        assert app.models.info is not None and app.models.info.is_demo
        assert "DEMO model" in text_of(app.query_one("#banner", Static))
        # The cached models are offered.
        options = screen.query_one("#welcome-cached", OptionList)
        await until(pilot, lambda: options.option_count == 1, "the cached models")
        assert "demo/qwen3-4bit" in str(options.get_option_at_index(0).prompt)
        # A wrong folder is one line, and the screen stays.
        screen.query_one("#welcome-folder", Input).value = str(tmp_path / "nope")
        await pilot.click("#welcome-open")
        assert "no such folder" in text_of(screen.query_one("#welcome-folder-error", Static))
        assert app.screen is screen
        # Picking the cached model loads it, and remembers it for next time.
        options.focus()
        options.highlighted = 0
        await pilot.press("enter")
        await until(pilot, lambda: app.models.info is not None
                    and app.models.info.name == "demo/qwen3-4bit", "the cached model")
        assert not isinstance(app.screen, WelcomeScreen)
        assert app.sub_title == "demo/qwen3-4bit"
        # The banner follows the new model (the kit's 4-bit qwen3 is a demo model too).
        assert text_of(app.query_one("#banner", Static)).startswith(
            "demo/qwen3-4bit is the DEMO model")
    assert load_config().model == "demo/qwen3-4bit"
    assert recent.recent_specs()[0] == "demo/qwen3-4bit"
    # Configured now: no welcome screen the next time.
    app = first_run_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the configured model")
        assert not isinstance(app.screen, WelcomeScreen)
        assert app.models.info is not None and app.models.info.name == "demo/qwen3-4bit"


async def test_first_run_online_downloads_the_recommended_model(
        demo_kit, hf_cache, demo_as_default, monkeypatch) -> None:
    go_online(monkeypatch)
    with demo_hub(demo_kit.llama) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        save_config(Config(recommended_model=DEMO_REPO))
        app = first_run_app()
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, WelcomeScreen), "the welcome")
            screen = app.screen
            button = screen.query_one("#welcome-download", Button)
            await until(pilot, lambda: not button.disabled, "the network check")
            assert "Online" in text_of(screen.query_one("#welcome-network", Static))
            assert DEMO_REPO in str(button.label)
            await pilot.click("#welcome-download")
            await until(pilot, lambda: app.models.info is not None
                        and app.models.info.name == DEMO_REPO, "the download and load")
            assert not isinstance(app.screen, WelcomeScreen)
            assert Path(app.models.info.path).is_relative_to(hf_cache)  # what was downloaded
            # Let the engine's ModelChanged be handled before the app exits: handled after it,
            # ModelController.model_changed fails (NoMatches: the sidebar is gone).
            await pilot.pause()
    assert (hf_cache / "models--demo--tiny-llama" / "snapshots").is_dir()
    assert load_config().model == DEMO_REPO


async def test_models_screen_lists_the_cache_and_the_folders_recent_first(
        demo_kit, hf_cache) -> None:
    recent.add_model_folder(demo_kit.qwen3)
    app = fake_llama_app(demo_kit)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        screen = await models_screen(pilot, app)
        # The loaded model was remembered: it comes first, marked.
        assert listed(screen) == ["llama", "demo/qwen3-4bit", "qwen3"]
        mark, _name, params, bits, size, context, fits, _where = row(screen, "llama")
        assert (mark, bits, context, fits) == ("●", "32.0", "4096", "yes")
        assert params.endswith(("K", "M")) and size.endswith(("MB", "GB"))
        assert row(screen, "demo/qwen3-4bit")[-1] == "HF cache"
        assert row(screen, "qwen3")[-1] == "folder"
        assert 4 < float(row(screen, "demo/qwen3-4bit")[3]) < 6
        await highlight(pilot, screen, "demo/qwen3-4bit")
        details = text_of(screen.query_one("#models-details", Static))
        assert "4-bit, group 64" in details and "free" in details
        # Filter by text (typed into the filter, not taken as a key: 4 is "quantize").
        await pilot.press("slash", *"4bit")
        assert listed(screen) == ["demo/qwen3-4bit"]
        assert app.models.jobs.jobs.get("quantize") is None
        await pilot.press("ctrl+u", *"qwen")
        assert listed(screen) == ["demo/qwen3-4bit", "qwen3"]
        await pilot.press("escape")
        assert not isinstance(app.screen, ModelsScreen)


# Real engine: the memory the old model gives back, and the new model's own prompt.
async def test_switching_the_model_keeps_the_conversation(demo_kit, hf_cache) -> None:
    recent.add_model_folder(demo_kit.qwen3)
    app = llama_app(demo_kit)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await send(pilot, "hello llama")
        await reply_done(pilot, app)
        old = app.models.info
        assert old is not None
        screen = await models_screen(pilot, app)
        await highlight(pilot, screen, "qwen3")
        await pilot.press("enter")
        await until(pilot, lambda: app.models.info is not None
                    and app.models.info.name == "qwen3", "the switch")
        new = app.models.info
        assert new is not None and not isinstance(app.screen, ModelsScreen)
        assert roles(app) == ["user", "assistant"]
        assert len(turns(app)) == 2
        # The memory pane shows the new model's weights, and the old ones given back.
        memory = app.sidebar.memory
        await until(pilot, lambda: memory.reading is not None
                    and memory.reading.weight_bytes == new.weight_bytes, "a memory reading")
        assert memory.reading is not None
        assert memory.reading.mlx_active < old.weight_bytes + new.weight_bytes
        # The next message is answered by the new model, over the whole conversation.
        await send(pilot, "hello qwen")
        reply = await reply_done(pilot, app)
        assert reply.stats is not None and reply.stats.reused_tokens == 0
        assert reply.stats.prompt_tokens > 10
        assert roles(app) == ["user", "assistant"] * 2
        assert turns(app)[0].text == "hello llama"
    assert recent.recent_specs()[0] == str(demo_kit.qwen3.resolve())


async def test_a_download_shows_progress_can_be_cancelled_and_resumes(
        demo_kit, hf_cache, monkeypatch) -> None:
    go_online(monkeypatch)
    # Report every MiB (the default 10 Hz limit could hide the progress before the hold).
    monkeypatch.setattr(models.hub_transfer, "PROGRESS_INTERVAL_S", 0.0)
    with demo_hub(demo_kit.llama) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hold = hub.hold(WEIGHTS, after=3 << 20)
        app = fake_llama_app(demo_kit)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.models.ready, "the model to load")
            screen = await models_screen(pilot, app)
            assert DEMO_REPO not in listed(screen)
            repo = screen.query_one("#models-repo", Input)
            repo.value = "not a repo id"
            repo.focus()
            await pilot.press("enter")
            assert "is not a Hugging Face repo id" in text_of(
                screen.query_one("#models-message", Static))
            repo.value = DEMO_REPO
            repo.focus()
            await pilot.press("enter")
            panel = screen.query_one("#models-download-job", JobPanel)
            await until(pilot, lambda: hold.reached.is_set() and panel.bar.progress >= 3 << 20,
                        "the first bytes")
            # Bytes, speed and time left, in the panel and in the status line.
            line = panel.text
            assert f"{DEMO_REPO}: " in line and " MB of " in line and "/s" in line
            assert "left" in line
            assert panel.bar.total is not None and panel.bar.progress < panel.bar.total
            assert " MB of " in status_text(app)
            await pilot.press("ctrl+z")
            hold.release.set()
            await until(pilot, lambda: not app.models.jobs.jobs["download"].running, "the cancel")
            assert app.models.jobs.jobs["download"].state == "cancelled"
            await until(pilot, lambda: "kept" in panel.text, "the cancelled line")
            assert DEMO_REPO not in listed(screen)
            # Again: it continues where it stopped, and the model appears in the list.
            repo.focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.models.jobs.jobs["download"].state == "done",
                        "the download")
            await until(pilot, lambda: DEMO_REPO in listed(screen), "the new model listed")
            assert screen.highlighted is not None and screen.highlighted.name == DEMO_REPO
            assert "downloaded" in panel.text
        resumed = hub.served(WEIGHTS)[-1]
        assert resumed.range is not None and resumed.range.startswith("bytes=")


# Real engine: the quantization runs MLX on the engine thread, and the new folder loads.
async def test_quantize_from_the_screen_adds_the_new_folder_to_the_list(
        demo_kit, hf_cache) -> None:
    app = llama_app(demo_kit)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        screen = await models_screen(pilot, app)
        # An already quantized model is refused with one line.
        await highlight(pilot, screen, "demo/qwen3-4bit")
        await pilot.press("4")
        assert "quantized already" in text_of(screen.query_one("#models-message", Static))
        await highlight(pilot, screen, "llama")
        await pilot.press("4")
        panel = screen.query_one("#models-quantize-job", JobPanel)
        await until(pilot, lambda: app.models.jobs.jobs["quantize"].state != "running",
                    "the quantize")
        job = app.models.jobs.jobs["quantize"]
        assert job.state == "done", job.message
        assert job.result is not None and Path(job.result).name == "llama-4bit"
        await until(pilot, lambda: "llama-4bit" in listed(screen), "the new folder listed")
        assert screen.highlighted is not None and screen.highlighted.name == "llama-4bit"
        assert row(screen, "llama-4bit")[-1] == "folder"
        assert 4 < float(row(screen, "llama-4bit")[3]) < 6
        await until(pilot, lambda: "written" in panel.text, "the panel's last line")
        # And it loads.
        await pilot.press("enter")
        await until(pilot, lambda: app.models.info is not None
                    and app.models.info.name == "llama-4bit", "the quantized model")
    assert str(job.result) in recent.load().folders
