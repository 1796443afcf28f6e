"""The Textual messages by which the app's controllers say what happened.

A controller never reaches into another one's state: it posts one of these to the app, and
the app's ``@on`` handlers (``tui/app.py``) hand it to whoever cares. ``ModelChanged`` and
``AdapterChanged`` come from the engine thread (``Engine.subscribe``): ``post_message`` is
thread-safe in Textual (it goes through ``loop.call_soon_threadsafe`` when called off the
app's thread), so the engine's listener only posts and returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from engine import AdapterState, ModelInfo, TurnDone
    from sessions import Session

    from .widgets.chat import AssistantTurn


@dataclass
class ModelChanged(Message):
    """The engine's loaded model is now ``info`` (None: none is), whoever loaded it."""

    info: ModelInfo | None


@dataclass
class AdapterChanged(Message):
    """The engine's active adapter or its scale changed (``swapped`` False: a load set it)."""

    state: AdapterState
    swapped: bool = True


@dataclass
class LoadFinished(Message):
    """A load the models controller asked for ended: ``info`` loaded, or ``error`` says why
    not (``info`` is then whatever the engine still holds)."""

    info: ModelInfo | None
    error: str = ""


@dataclass
class TurnFinished(Message):
    """A reply was added to the conversation (finished, stopped with text, or kept from a
    comparison); ``turn`` is the widget that shows it."""

    done: TurnDone
    turn: AssistantTurn | None


@dataclass
class ConversationCleared(Message):
    """The chat started a new conversation; ``old`` is the session it held before."""

    old: Session


@dataclass
class JobFinished(Message):
    """A download or quantization ended; ``message`` says how, ``ok`` whether it worked."""

    kind: str
    message: str
    ok: bool
