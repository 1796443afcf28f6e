"""One line above the status line while an adapter trains: how far it is, and that the
chat's replies are slower meanwhile (the training child uses the same GPU). The training
controller mounts it with the first run and sets its line; it hides when no run goes on."""

from __future__ import annotations

from textual.widgets import Static


class TrainBadge(Static):
    DEFAULT_CSS = """
    TrainBadge {
        height: 1;
        padding: 0 2;
        color: $text-warning;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self) -> None:
        super().__init__("", id="train-badge", markup=False)
        self.display = False

    @property
    def text(self) -> str:
        return str(self.render())

    def show_line(self, line: str) -> None:
        self.update(line)
        self.display = bool(line)
