"""Snapshots of issue 13's views (pytest-textual-snapshot; update with ``--snapshot-update``):
a reasoning model's reply with its thinking block opened, the token probability view with
a token's alternatives open, and a regenerated reply's branch indicator with the branches
list. On the scripted fake engine, meters frozen, as in ``tests/test_snapshots.py``.
"""

from __future__ import annotations

import pytest
from textual.pilot import Pilot

from tests.fake_engine import FakeEngine
from tests.test_snapshots import FIXED_MEMORY, SIZE, SMALL, freeze, loaded, until
from themes import DARK
from workbench.cli import make_args
from workbench.tui.app import WorkbenchApp

QUESTION = "What is the capital of Australia?"
THINKING = ("<think>The user asks for the capital of Australia. Many people guess Sydney, "
            "the largest city, but the capital is Canberra: it was chosen as a compromise "
            "between Sydney and Melbourne.</think>\n\n"
            "The capital of Australia is **Canberra**, not Sydney. It was chosen in 1908 as "
            "a compromise between Sydney and Melbourne, the two largest cities.")
PLAIN = ("The capital of Australia is Canberra. It was chosen in 1908 as a compromise "
         "between Sydney and Melbourne.")
AGAIN = "Canberra is the capital; Sydney is only the largest city."


def make_app(*replies: str) -> WorkbenchApp:
    fake = FakeEngine(replies=list(replies), memory_reading=FIXED_MEMORY,
                      model_facts={"name": "Qwen3-0.6B-4bit", "reasoning": True,
                                   "thinking_switch": True})
    return WorkbenchApp(make_args(model="fake-model", max_tokens=96, theme=DARK),
                        engine=fake)


async def ask(pilot: Pilot, text: str = QUESTION) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    asked = len(app.engine.chats)  # type: ignore[attr-defined]
    await pilot.press(*text, "enter")
    await until(pilot, lambda: len(app.engine.chats) > asked  # type: ignore[attr-defined]
                and (turn := app.chat_view.last_assistant()) is not None
                and turn.done and not app.chat.replying, "the reply")


async def settled(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await until(pilot, lambda: app.sessions.saved, "the autosave")
    await freeze(pilot)
    app.clear_notifications()  # "Token view shaded by..." would cover the chat
    await pilot.pause(0.2)


async def reasoning_open(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await loaded(pilot)
    await ask(pilot)
    app.chat_view.focus()
    await pilot.pause()
    await pilot.press("enter")  # open the thinking of the selected reply
    await settled(pilot)


async def token_choices_open(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await loaded(pilot)
    await pilot.press("f9")
    await ask(pilot)
    await settled(pilot)
    app.chat_view.focus()
    await pilot.pause()
    await pilot.press(*["right"] * 6, "enter")  # the 6th token ("Canberra.")
    await pilot.pause(0.3)


async def token_view(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await loaded(pilot)
    await pilot.press("f9")
    await ask(pilot)
    await settled(pilot)
    app.chat_view.focus()
    await pilot.pause()
    await pilot.press(*["right"] * 6)
    await pilot.pause(0.2)


async def branches_open(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await loaded(pilot)
    await ask(pilot)
    await pilot.press("ctrl+r")
    await until(pilot, lambda: len(app.engine.chats) == 2  # type: ignore[attr-defined]
                and not app.chat.replying and app.chat_view.last_assistant() is not None
                and app.chat_view.last_assistant().done, "the regenerated reply")  # type: ignore[union-attr]
    await settled(pilot)
    await pilot.press("f10")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [SIZE, SMALL], ids=["wide", "80x24"])
def test_reasoning_block(snap_compare, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(THINKING), terminal_size=size, run_before=reasoning_open)


@pytest.mark.parametrize("size", [SIZE, SMALL], ids=["wide", "80x24"])
def test_token_probabilities_with_alternatives(snap_compare, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(PLAIN), terminal_size=size, run_before=token_choices_open)


def test_token_probabilities(snap_compare) -> None:
    assert snap_compare(make_app(PLAIN), terminal_size=SIZE, run_before=token_view)


@pytest.mark.parametrize("size", [SIZE, SMALL], ids=["wide", "80x24"])
def test_branches_list(snap_compare, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(PLAIN, AGAIN), terminal_size=size, run_before=branches_open)
