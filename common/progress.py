"""The progress event of long work that is not a chat turn (a model load, a
download), shared by the packages that report it and the faces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """Loading a model: ``stage`` is resolve, download, load, warm-up (GPU kernels compiled
    ahead of the first reply: engine/warmup.py) or ready.

    While downloading, ``done``/``total`` are bytes; otherwise they are 0.
    """

    stage: str
    message: str
    done: int = 0
    total: int = 0

    def line(self) -> str:
        """One line for people: the message, and the share done while downloading."""
        if self.stage == "download" and self.total:
            pct = 100 * self.done / self.total
            return f"{self.message}: {pct:.0f}% of {self.total / 1e6:.0f} MB"
        return self.message
