"""Issue 19 #14: under mlx.launch the Model pane's corner was drawn twice ("╮╮"). The pane
holds more rows there (ranks, split, hosts), the sidebar grew a scrollbar, every pane got
one column narrower, and a corner of the wider frame stayed on screen. The sidebar keeps
its scrollbar's column whether the bar shows or not, so no pane changes width."""

from __future__ import annotations

from test_app import fake_app, until

from engine.events import WorldInfo
from tests.fake_engine import FakeEngine

HEIGHT = 50  # the sidebar holds the panes of a plain model, not of a split one
WORLD = WorldInfo(size=2, backend="ring", shard="tensor", hosts=("localhost", "localhost"),
                  weight_bytes=(300_000, 300_000))


def pane_widths(app) -> set[int]:
    sidebar = app.sidebar
    return {sidebar.throughput.size.width, sidebar.memory.size.width, sidebar.model.size.width}


async def test_a_sidebar_that_scrolls_keeps_its_panes_width() -> None:
    widths, scrolls = [], []
    for facts in ({}, {"world": WORLD}):
        app = fake_app(FakeEngine(model_facts=facts))
        async with app.run_test(size=(120, HEIGHT)) as pilot:
            await until(pilot, lambda app=app: app.models.ready, "the model to load")
            await pilot.pause()
            widths.append(pane_widths(app))
            scrolls.append(app.sidebar.show_vertical_scrollbar)
    # At this height only the distributed model's rows make the sidebar scroll.
    assert scrolls == [False, True]
    assert len(widths[0]) == 1 and widths[0] == widths[1]
