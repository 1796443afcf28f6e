"""How often the screen may change while a reply streams, so that the model never waits.

The engine thread needs the interpreter lock for its own Python work on every token (mlx-lm
builds each step's graph in Python), so at hundreds of tokens a second it wants the lock
nearly all the time, and every millisecond the UI thread spends laying out and painting a
frame is a millisecond the model does not decode. Measured on an H200 with a 1B model, a
frame of this app costs 30-50 ms of Python; painting at 30 Hz halved the decode rate.

So while a reply streams, frames are paced by a feedback loop on the UI thread's own CPU
time: if the last interval used more than the budget, the next one is longer; if it used
well under, shorter. The budget is small when tokens come fast and grows when they come
slowly (a slow model leaves the lock free most of the time), so a 20 tok/s reply still
updates several times a second while a 500 tok/s reply costs the engine about 3%.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FASTEST_S = 1 / 20
SLOWEST_S = 1.0
MIN_BUDGET = 0.03
MAX_BUDGET = 0.25


def budget_for(decode_tps: float) -> float:
    """The share of time the UI thread may use at this decode rate (3 / tokens-per-second,
    kept within 3% and 25%)."""
    if decode_tps <= 0:
        return MAX_BUDGET
    return min(MAX_BUDGET, max(MIN_BUDGET, 3.0 / decode_tps))


def thread_clock() -> tuple[float, float]:
    """The UI thread's CPU time and the wall time, now: what the pacer reads."""
    return time.thread_time(), time.perf_counter()


class FramePacer:
    def __init__(self, clock: Callable[[], tuple[float, float]] = thread_clock) -> None:
        self.interval = FASTEST_S
        self.share = 0.0  # the UI thread's busy share over the last interval
        self._clock = clock  # (thread CPU seconds, wall seconds); tests give their own
        self._cpu = 0.0
        self._wall = 0.0

    def start(self) -> None:
        self.interval = FASTEST_S
        self.share = 0.0
        self._cpu, self._wall = self._clock()

    def measure(self, decode_tps: float) -> float:
        """Call once per frame on the UI thread; returns the next interval."""
        cpu, wall = self._clock()
        self.share = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._cpu, self._wall = cpu, wall
        budget = budget_for(decode_tps)
        if self.share > budget:
            self.interval = min(SLOWEST_S, self.interval * min(self.share / budget, 3.0))
        elif self.share < budget / 2:
            self.interval = max(FASTEST_S, self.interval / 1.5)
        return self.interval
