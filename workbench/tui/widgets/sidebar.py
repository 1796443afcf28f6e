"""The collapsible sidebar that holds the live panes.

Other features add panes of their own (the adapters issue adds an Adapters pane) with
``Sidebar.add_pane``: they go after the built-in panes, in the order they are added.
"""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget

from .meters import MemoryPane, ModelPane, Pane, ThroughputPane
from .prompt import TakesNoText, redirect_typing

IDLE_REPAINT_S = 0.1


class Sidebar(TakesNoText, VerticalScroll):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.paced = False  # True while a reply streams: the app's frames call tick()

    def on_mount(self) -> None:
        self.set_interval(IDLE_REPAINT_S, self._idle_tick)

    def on_key(self, event: events.Key) -> None:
        redirect_typing(self, event)  # the panes' controls take no text: it is a message

    def _idle_tick(self) -> None:
        if not self.paced:
            self.tick()

    def tick(self) -> None:
        """Repaint the panes whose values changed."""
        for pane in self.query(Pane):
            pane.tick()

    def compose(self) -> ComposeResult:
        yield ThroughputPane()
        yield MemoryPane()
        yield ModelPane()

    @property
    def throughput(self) -> ThroughputPane:
        return self.query_one(ThroughputPane)

    @property
    def memory(self) -> MemoryPane:
        return self.query_one(MemoryPane)

    @property
    def model(self) -> ModelPane:
        return self.query_one(ModelPane)

    async def add_pane(self, pane: Widget) -> None:
        """Mount another pane (e.g. Adapters) under the built-in ones."""
        await self.mount(pane)

    def freeze(self) -> None:
        """Stop repainting the live panes: what they show now stays (for screenshots)."""
        for pane in self.query(Pane):
            pane.repaint()
            pane.frozen = True
