"""The Train screen and the Fuse action, driven by a Pilot on the fake engine and fake jobs.

A training run is a child process in real life (``jobs.runner.TrainJob``); here the
app's training controller is given ``FakeTrainJob``, which replays the events a test feeds
it, so what the app does with a run's events (curves, stats, cancel, a finished adapter
swapped in) is tested without MLX or a process. The same for ``FakeFuseJob``.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_app import fake_app, reply_done, send, until
from textual.pilot import Pilot
from textual.widgets import Button, Input, Select, Static

from jobs.events import TrainFinished, TrainNotice, ValProgress
from jobs.fuse import FuseFinished, FuseProgress
from tests.fake_engine import FakeEngine, fake_adapter
from tests.fake_jobs import FakeFuseJob, FakeJob, Jobs, progress, started
from workbench import recent
from workbench.tui.app import WorkbenchApp
from workbench.tui.commands import commands
from workbench.tui.screens.fuse import FuseScreen
from workbench.tui.screens.train import TrainScreen
from workbench.tui.widgets.loss_plot import LossPlot

SIZE = (120, 36)
SMALL = (80, 24)
FAKE_ADAPTERS = "/fake/adapters"


def train_app(fake: FakeEngine | None = None) -> tuple[WorkbenchApp, Jobs]:
    fake = fake or FakeEngine(adapters=[fake_adapter("tone-a", f"{FAKE_ADAPTERS}/tone-a")])
    app = fake_app(fake, adapters=FAKE_ADAPTERS)
    jobs = Jobs()
    app.training.train_job = jobs
    return app, jobs


def notes(app: WorkbenchApp) -> list[str]:
    return [n.message for n in app._notifications]


def braille(text: str) -> int:
    return sum(1 for ch in text if 0x2801 <= ord(ch) <= 0x28FF)


def plot_text(plot: LossPlot) -> str:
    return str(plot.render())


async def open_train(pilot: Pilot, app: WorkbenchApp) -> TrainScreen:
    await pilot.press("f6")
    await until(pilot, lambda: isinstance(app.screen, TrainScreen), "the Train screen")
    screen = app.screen
    assert isinstance(screen, TrainScreen)
    await pilot.pause()
    return screen


async def start_on_folder(pilot: Pilot, screen: TrainScreen, folder: Path,
                          iters: str = "100") -> None:
    screen.query_one("#train-source", Select).value = "folder"
    screen.query_one("#train-data", Input).value = str(folder)
    screen.query_one("#train-iters", Input).value = iters
    screen.query_one("#train-steps_per_eval", Input).value = "20"
    await pilot.pause()
    await pilot.press("ctrl+s")


async def test_live_curves_stats_chat_meanwhile_and_cancel(tmp_path) -> None:
    app, jobs = train_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.models.ready and bool(app.adapters.infos), "the load")
        before = [i.path for i in app.adapters.infos]
        screen = await open_train(pilot, app)
        plot = screen.query_one("#train-plot", LossPlot)
        await start_on_folder(pilot, screen, tmp_path / "data")
        await until(pilot, lambda: bool(jobs.made) and jobs.made[0].started.is_set(),
                    "the job to start")
        job = jobs.made[0]
        config = job.config
        assert (config.data, config.iters, config.steps_per_eval) == (
            str(tmp_path / "data"), 100, 20)
        assert config.model == "/fake/models/fake-model" and config.fine_tune_type == "lora"
        assert Path(config.adapter_path).parent == app.config.adapters_path()
        assert "starting" in str(screen.query_one("#train-stats", Static).render())

        # The run reports: the curves get the points, and the plot draws them.
        job.feed(started(config.adapter_path), progress(10, 2.8), progress(20, 2.3),
                 ValProgress(20, 2.5, 20, 2.5), progress(30, 1.9),
                 TrainNotice("saved a checkpoint at iteration 30"))
        await until(pilot, lambda: len(plot.train) == 3 and len(plot.val) == 1, "the points")
        assert plot.train == [(10, 2.8), (20, 2.3), (30, 1.9)] and plot.val == [(20, 2.5)]
        assert plot.total == 100
        await pilot.pause()
        drawn = plot_text(plot)
        assert braille(drawn) > 20 and "train" in drawn and "val" in drawn
        stats = str(screen.query_one("#train-stats", Static).render())
        assert stats.startswith("iteration 30/100 · 2.50 it/s · 1,840 tok/s · peak 1.20 GB")
        assert "lr 1.0e-05" in stats and "ETA 28 s" in stats
        losses = str(screen.query_one("#train-losses", Static).render())
        assert losses == "train loss 1.900 · val loss 2.500 · best 2.500 at iteration 20"
        assert "checkpoint" in str(screen.query_one("#train-notice", Static).render())
        job.feed(progress(40, 1.7), ValProgress(40, 2.1, 40, 2.1))
        await until(pilot, lambda: len(plot.val) == 2, "more points")
        assert "best 2.100 at iteration 40" in str(
            screen.query_one("#train-losses", Static).render())

        # Esc: back to the chat while it trains; it says so, and the chat answers.
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, TrainScreen), "the close")
        badge = app.query_one("#train-badge", Static)
        assert badge.display
        line = str(badge.render())
        assert "Training" in line and "slower" in line and "iteration 40/100" in line
        await pilot.click("#prompt")
        await send(pilot, "still there?")
        turn = await reply_done(pilot, app)
        assert turn.text
        # F6 again: the same run, its curves.
        screen = await open_train(pilot, app)
        plot = screen.query_one("#train-plot", LossPlot)
        assert len(plot.train) == 4 and braille(plot_text(plot)) > 20
        assert screen.query_one("#train-cancel", Button).display

        # Cancel: the job is told, one line says so, the app and the adapters stay.
        await pilot.press("ctrl+z")
        await until(pilot, lambda: job.cancelled.is_set(), "the cancel")
        await until(pilot, lambda: any("cancelled" in n for n in notes(app)), "the note")
        message = next(n for n in notes(app) if "cancelled" in n)
        assert "\n" not in message and "adapters you had" in message
        assert not badge.display
        assert not screen.query_one("#train-cancel", Button).display
        assert not screen.query_one("#train-use", Button).display
        assert [i.path for i in app.adapters.infos] == before
        assert app.is_running and app.training.run is not None
        assert app.training.run.state == "cancelled"


async def test_a_finished_run_lists_the_adapter_and_use_it_now_swaps_it_in(tmp_path) -> None:
    fake = FakeEngine(adapters=[fake_adapter("tone-a", f"{FAKE_ADAPTERS}/tone-a")])
    app, jobs = train_app(fake)

    def writes_the_adapter(job: FakeJob) -> None:  # as the real run writes its folder
        fake.adapters.append(fake_adapter(Path(job.config.adapter_path).name,
                                          job.config.adapter_path, rank=8, num_layers=16))
    jobs.on_start = writes_the_adapter
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        await until(pilot, lambda: app.models.ready and bool(app.adapters.infos), "the load")
        await send(pilot, "a first exchange")
        await reply_done(pilot, app)
        screen = await open_train(pilot, app)
        # The current conversation is the default data: it is handed over as a copy.
        screen.query_one("#train-iters", Input).value = "60"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: bool(jobs.made), "the job")
        job = jobs.made[0]
        config = job.config
        assert config.data == "" and len(config.conversations) == 1
        assert config.conversations[0].messages[0].content == "a first exchange"
        assert config.conversations[0] is not app.chat.conversation.session
        name = Path(config.adapter_path).name
        job.feed(started(config.adapter_path, 60), progress(30, 2.0, 60),
                 ValProgress(30, 2.2, 30, 2.2), progress(60, 1.5, 60),
                 ValProgress(60, 1.8, 60, 1.8),
                 TrainFinished(config.adapter_path, 60, 60, 1.8, False, 95.0))
        await until(pilot, lambda: any(i.name == name for i in app.adapters.infos),
                    "the new adapter in the pane")
        message = next(n for n in notes(app) if "trained" in n)
        assert "\n" not in message and "best val loss 1.800 at iteration 60" in message
        assert "Use it now" in message
        use = screen.query_one("#train-use", Button)
        assert use.display and not screen.query_one("#train-cancel", Button).display
        assert app.engine.adapter is not None and app.engine.adapter.name is None
        assert any(c.title == f"Use the new adapter: {name}" for c in commands(app))
        assert app.focused is use
        await pilot.press("enter")
        await until(pilot, lambda: app.engine.adapter is not None
                    and app.engine.adapter.name == name, "the swap")
        assert not isinstance(app.screen, TrainScreen)
        await pilot.click("#prompt")
        await send(pilot, "and now?")
        turn = await reply_done(pilot, app)
        assert turn.stats is not None and turn.stats.adapter == name


async def test_a_refused_run_and_a_bad_field_are_one_line_and_change_nothing(tmp_path
                                                                           ) -> None:
    app, jobs = train_app()
    jobs.refuse = "not enough memory for this run: about 9.0 GB needed, 4.0 GB free"
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        await until(pilot, lambda: app.models.ready and bool(app.adapters.infos), "the load")
        titles = {c.title for c in commands(app)}
        assert {"Train an adapter (live loss curves)", "Evaluate adapters on a prompt set",
                "Fuse adapter: tone-a"} <= titles
        screen = await open_train(pilot, app)
        for selector in ("#train-title", "#train-grid", "#train-start", "#train-close"):
            region = screen.query_one(selector).region
            assert region.width and region.right <= SMALL[0] and region.bottom <= SMALL[1]
        # Every field and button is reachable with Tab.
        seen = set()
        for _ in range(30):
            screen.focus_next()  # what Tab does
            if app.focused is not None and app.focused.id:
                seen.add(app.focused.id)
        for wanted in ("train-preset", "train-fine_tune_type", "train-source",
                       "train-mask_prompt", "train-iters", "train-learning_rate",
                       "train-patience", "train-adapter_path", "train-start", "train-close"):
            assert wanted in seen, wanted
        # The conversation has no reply yet: refused in the form.
        await pilot.press("ctrl+s")
        error = screen.query_one("#train-error", Static)
        assert "no reply to learn from" in str(error.render())
        screen.query_one("#train-source", Select).value = "folder"
        screen.query_one("#train-data", Input).value = str(tmp_path)
        screen.query_one("#train-iters", Input).value = "0"
        await pilot.pause()
        await pilot.press("ctrl+s")
        assert "iterations: 0 is not allowed" in str(error.render())
        assert not jobs.made
        # The thorough preset fills its values (patience included).
        screen.query_one("#train-preset", Select).value = "thorough"
        await pilot.pause()
        assert screen.query_one("#train-iters", Input).value == "3000"
        assert screen.query_one("#train-patience", Input).value == "5"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any("not enough memory" in n for n in notes(app)),
                    "the refusal")
        message = next(n for n in notes(app) if "not enough memory" in n)
        assert "\n" not in message
        assert jobs.made[0].config.patience == 5 and jobs.made[0].config.preset == "thorough"
        assert app.training.run is not None and app.training.run.state == "failed"
        assert "Training failed: not enough memory" in str(
            screen.query_one("#train-notice", Static).render())
        assert screen.query_one("#train-new", Button).display
        assert app.focused is screen.query_one("#train-new", Button)
        await pilot.press("enter")  # (a click there would hit the notification)
        assert screen.query_one("#train-start", Button).display
        await pilot.press("escape")
        assert app.is_running and not isinstance(app.screen, TrainScreen)


async def test_fuse_from_the_details_writes_a_model_the_models_list_knows(tmp_path) -> None:
    app, _jobs = train_app()
    fuses = Jobs(FakeFuseJob)
    app.training.fuse_job = fuses
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        await until(pilot, lambda: app.models.ready and bool(app.adapters.infos), "the load")
        await pilot.press("f4", "home", "down", "d")
        await until(pilot, lambda: app.screen.query("#fuse-adapter"), "the details")
        await pilot.click("#fuse-adapter")
        await until(pilot, lambda: isinstance(app.screen, FuseScreen), "the Fuse screen")
        screen = app.screen
        field = screen.query_one("#fuse-save-path", Input)
        assert Path(field.value).name == "fake-model-tone-a-fused"
        target = tmp_path / "fused"
        field.value = str(target)
        await pilot.click("#fuse-start")
        await until(pilot, lambda: bool(fuses.made), "the fuse job")
        job = fuses.made[0]
        assert job.args == ("/fake/models/fake-model", f"{FAKE_ADAPTERS}/tone-a", str(target))
        job.feed(FuseProgress("fuse", "fusing 4 layers", 2, 4))
        line = screen.query_one("#fuse-line", Static)
        await until(pilot, lambda: "fusing" in str(line.render()), "the progress")
        target.mkdir()
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
        job.feed(FuseFinished(str(target), 3.2))
        await until(pilot, lambda: "models list" in str(line.render()), "the end")
        assert str(target.resolve()) in recent.load().folders
        assert any("Fused model written" in n for n in notes(app))
        await pilot.press("escape")
        assert not isinstance(app.screen, FuseScreen)
