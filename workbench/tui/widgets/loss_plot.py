"""The Train screen's plot: the training and validation loss against the iteration.

A real line plot (textual-plotext, braille dots) of the points the training run reported:
the train loss every ``steps_per_report`` iterations, the validation loss every
``steps_per_eval``. The x axis runs to the run's last iteration, so the curves also show
how far the run has come. ``show`` replaces the points and repaints once; the training
controller calls it at most a few times a second, whatever the run reports. Line colours
come from the theme (``$primary`` for train, ``$warning`` for validation).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual_plotext import PlotextPlot

Point = tuple[int, float]
WAITING = "the curves start with the run's first report…"


class LossPlot(PlotextPlot):
    """Train and validation loss curves; ``show`` gives the points."""

    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.train: list[Point] = []
        self.val: list[Point] = []
        self.total = 0

    def on_mount(self) -> None:
        # PlotextPlot's own on_mount runs too (it follows the app's theme for the
        # background); the lines' colours are the theme's, so they follow it as well.
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._replot())
        self._replot()

    def show(self, train: Sequence[Point], val: Sequence[Point], total: int) -> None:
        """The points so far and the run's last iteration (the x axis's end)."""
        train, val = list(train), list(val)
        if (train, val, total) == (self.train, self.val, self.total):
            return
        self.train, self.val, self.total = train, val, total
        self._replot()

    def _colour(self, variable: str, fallback: str) -> tuple[int, int, int]:
        value = self.app.theme_variables.get(variable, fallback)
        try:
            return Color.parse(value).rgb
        except Exception:  # noqa: BLE001 - a theme without the variable: the fallback
            return Color.parse(fallback).rgb

    def _replot(self) -> None:
        if not self.is_mounted:
            return
        plt = self.plt
        plt.clear_data()
        plt.clear_color()
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        if self.train:
            x, y = zip(*self.train, strict=True)
            plt.plot(list(x), list(y), label="train", marker="braille",
                     color=self._colour("primary", "#0178d4"))
        if self.val:
            x, y = zip(*self.val, strict=True)
            plt.plot(list(x), list(y), label="val", marker="braille",
                     color=self._colour("warning", "#ffa62b"))
        last = max([self.total, *(i for i, _ in self.train), *(i for i, _ in self.val), 1])
        plt.xlim(0, last)
        plt.xlabel("iteration")
        self.refresh()

    def render(self) -> RenderResult:
        if not self.train and not self.val:
            return Text(WAITING, style="dim")
        return super().render()
