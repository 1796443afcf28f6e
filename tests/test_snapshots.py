"""Snapshots of the main screen after a reply, the settings and the help screen, in both of
the workbench's themes and at 80x24 (pytest-textual-snapshot; update with
``--snapshot-update``).

They run on the scripted fake engine (``tests/fake_engine.py``): the reply is scripted, so
nothing depends on MLX's numerics, and the numbers that depend on the machine and the
moment (tokens/s, times, memory, the sparkline) are replaced with fixed ones and the meters
frozen before each screenshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import TextArea

from engine import MemoryReading, TurnStats
from tests.fake_engine import FakeEngine, fake_adapter
from themes import DARK, LIGHT
from workbench.cli import make_args
from workbench.tui.app import WorkbenchApp

SIZE = (130, 42)
SMALL = (80, 24)
QUESTION = "What is a list comprehension?"
REPLY = ("A list comprehension builds a list from an iterable in one expression:\n\n"
         "```python\nsquares = [x * x for x in range(10)]\n```\n\n"
         "It reads left to right: the value, the loop, then an optional filter.")
FIXED_STATS = TurnStats(
    prompt_tokens=29, reused_tokens=0, prefill_tokens=29, prefill_tps=512.0, ttft_s=0.061,
    decode_tps=243.7, generated_tokens=24, finish_reason="stop", peak_memory=16_000_000,
    kv_bytes=1_200_000, context_tokens=53,
)
FIXED_MEMORY = MemoryReading(
    mlx_active=13_400_000, mlx_peak=16_000_000, mlx_cache=0, process_rss=420_000_000,
    system_available=12_600_000_000, system_total=17_100_000_000,
    device_total=17_100_000_000, weight_bytes=11_800_000, kv_bytes=1_200_000,
)
FIXED_RATE = [0.0] * 39 + [150.0, 231.0, 244.0, 239.0, 251.0, 246.0, 240.0, 248.0, 0.0]


def make_app(theme: str) -> WorkbenchApp:
    fake = FakeEngine(replies=[REPLY], memory_reading=FIXED_MEMORY, adapters=[
        fake_adapter("tone-a", "/fake/adapters/tone-a", rank=4, num_layers=2),
        fake_adapter("tone-b", "/fake/adapters/tone-b", rank=8, num_layers=2)])
    return WorkbenchApp(make_args(model="fake-model", adapters="/fake/adapters",
                                  max_tokens=64, theme=theme), engine=fake)


async def until(pilot: Pilot, condition: Callable[[], bool], what: str,
                timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.02)


async def freeze(pilot: Pilot) -> None:
    """Show fixed numbers in every live meter and stop them changing."""
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    throughput = app.sidebar.throughput
    throughput.show_stats(FIXED_STATS)
    throughput.samples.clear()
    throughput.samples.extend(FIXED_RATE)
    app.sidebar.memory.record(FIXED_MEMORY)
    app.sidebar.model.record_context(FIXED_STATS.context_tokens)
    for turn in app.chat_view.turns():
        if hasattr(turn, "show_stats"):
            turn.show_stats(FIXED_STATS)
    app.freeze_meters()
    app.prompt.cursor_blink = False
    await pilot.pause()


async def loaded(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await until(pilot, lambda: app.models.ready, "the model to load")
    # The Adapters pane is filled after the load; its height moves the sidebar's scrollbar.
    await until(pilot, lambda: app.adapters.pane.status == "", "the adapters to be listed")


async def after_a_reply(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await loaded(pilot)
    await pilot.press(*QUESTION, "enter")
    await until(pilot, lambda: (turn := app.chat_view.last_assistant()) is not None
                and turn.done and not app.chat.replying, "the reply")
    # The status line says when the session was saved: wait for the autosave to be stable.
    await until(pilot, lambda: app.sessions.saved, "the autosave")
    await freeze(pilot)


async def settings_open(pilot: Pilot) -> None:
    await loaded(pilot)
    await freeze(pilot)
    await pilot.press("f2")
    await pilot.pause()
    # The system prompt's cursor blinks: a snapshot taken mid-blink lacked it (a flake).
    pilot.app.screen.query_one("#system-prompt", TextArea).cursor_blink = False
    await pilot.pause()


async def help_open(pilot: Pilot) -> None:
    await loaded(pilot)
    await freeze(pilot)
    await pilot.press("f1")
    await pilot.pause()


@pytest.mark.parametrize("theme", [DARK, LIGHT])
def test_main_screen_after_a_reply(snap_compare, theme: str) -> None:
    assert snap_compare(make_app(theme), terminal_size=SIZE, run_before=after_a_reply)


@pytest.mark.parametrize("theme", [DARK, LIGHT])
def test_settings_screen(snap_compare, theme: str) -> None:
    assert snap_compare(make_app(theme), terminal_size=SIZE, run_before=settings_open)


@pytest.mark.parametrize("theme", [DARK, LIGHT])
def test_help_screen(snap_compare, theme: str) -> None:
    assert snap_compare(make_app(theme), terminal_size=SIZE, run_before=help_open)


def test_main_screen_at_80x24(snap_compare) -> None:
    assert snap_compare(make_app(DARK), terminal_size=SMALL, run_before=after_a_reply)


def test_settings_screen_at_80x24(snap_compare) -> None:
    assert snap_compare(make_app(DARK), terminal_size=SMALL, run_before=settings_open)


def test_help_screen_at_80x24(snap_compare) -> None:
    assert snap_compare(make_app(DARK), terminal_size=SMALL, run_before=help_open)
