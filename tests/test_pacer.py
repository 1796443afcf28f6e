"""The frame pacer (workbench/tui/widgets/pacer.py) on a fake clock: it backs off while
painting costs the UI thread more than its budget and recovers when painting is cheap. The
readings are scripted, so a loaded machine cannot change the outcome."""

from __future__ import annotations

from workbench.tui.widgets.pacer import FASTEST_S, SLOWEST_S, FramePacer, budget_for


class FakeClock:
    """Thread CPU and wall seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __call__(self) -> tuple[float, float]:
        return self.cpu, self.wall

    def frame(self, wall: float, busy: float) -> None:
        self.wall += wall
        self.cpu += busy


def test_frames_get_rarer_while_the_ui_is_busy_and_frequent_again_when_idle() -> None:
    clock = FakeClock()
    pacer = FramePacer(clock)
    pacer.start()
    for _ in range(6):  # a fast reply (500 tok/s) and a UI thread busy all the time
        clock.frame(wall=0.02, busy=0.02)
        pacer.measure(500.0)
    assert pacer.interval == SLOWEST_S and pacer.share == 1.0
    for _ in range(12):  # the UI thread idle
        clock.frame(wall=0.01, busy=0.0)
        pacer.measure(500.0)
    assert pacer.interval == FASTEST_S and pacer.share == 0.0


def test_a_slow_reply_leaves_the_ui_a_larger_budget() -> None:
    clock = FakeClock()
    pacer = FramePacer(clock)
    pacer.start()
    for _ in range(6):  # 10% of the time painting: over budget at 500 tok/s, not at 20
        clock.frame(wall=0.05, busy=0.005)
        pacer.measure(20.0)
    assert pacer.interval == FASTEST_S
    for _ in range(3):
        clock.frame(wall=0.05, busy=0.005)
        pacer.measure(500.0)
    assert pacer.interval > FASTEST_S
    assert budget_for(20.0) > budget_for(500.0)
