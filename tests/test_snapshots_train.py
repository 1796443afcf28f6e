"""A snapshot of the Train screen in the middle of a run, curves and stats, at 80x24
(pytest-textual-snapshot; update with ``--snapshot-update``).

The run is scripted (``tests/fake_jobs.py``: ``curve`` gives fixed losses and speeds) on the
fake engine, as the other snapshots are, so the picture only changes when the app does.
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Input, Select

from tests.fake_jobs import Jobs, curve
from tests.test_snapshots import SMALL, freeze, loaded, make_app, until
from themes import DARK
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.train import TrainScreen

ADAPTER = "/adapters/support-tone"


async def training(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    jobs = Jobs()
    app.training.train_job = jobs
    await loaded(pilot)
    await freeze(pilot)
    await pilot.press("f6")
    await until(pilot, lambda: isinstance(app.screen, TrainScreen), "the Train screen")
    screen = app.screen
    screen.query_one("#train-source", Select).value = "folder"
    screen.query_one("#train-data", Input).value = "/data/support-chats"
    screen.query_one("#train-iters", Input).value = "600"
    screen.query_one("#train-adapter_path", Input).value = ADAPTER
    await pilot.pause()
    await pilot.press("ctrl+s")
    await until(pilot, lambda: bool(jobs.made) and jobs.made[0].started.is_set(), "the run")
    jobs.made[0].feed(*curve(ADAPTER, 320))
    run = app.training.run
    await until(pilot, lambda: run is not None and len(run.train_points) == 32
                and len(run.val_points) == 6, "the curves")
    await pilot.pause(0.3)


def test_train_screen_with_live_curves_at_80x24(snap_compare) -> None:
    # The scripted run is stopped with the app (``on_unmount``), as a real one would be.
    assert snap_compare(make_app(DARK), terminal_size=SMALL, run_before=training)
