"""Compare: the last user message answered under two choices, side by side.

A choice is the base model ("no adapter") or an adapter at a scale. The user picks two and
runs them; the screen asks the engine for each in turn, ``use_adapter(choice)`` then
``chat(conversation)``, on the engine thread, where each choice keeps its own prompt cache
(so running the choice that wrote the current reply reuses its cache, and a choice already
compared re-prefills nothing). Both replies stream into their own column with their stats
and adapter name, through the same paced streamer as the chat (``tui/streamer.py``).
Keeping one dismisses the screen with it: the app puts it in place of the
last reply and leaves that choice active, so the conversation continues under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Select, Static

from engine import EngineError, Notice

from ..labels import turn_adapter_label
from ..streamer import PacedStreamer
from ..widgets.chat import AssistantTurn

if TYPE_CHECKING:
    from engine import EngineAPI, SamplingParams, TurnStats

SIDES = ("a", "b")


@dataclass(frozen=True)
class Choice:
    """The base model (``path`` None) or an adapter at ``scale`` times its trained scale."""

    label: str
    path: str | None = None
    scale: float | None = None


@dataclass(frozen=True)
class CompareResult:
    """The reply the user kept, and the choice that wrote it."""

    choice: Choice
    text: str
    stats: TurnStats


class CompareScreen(ModalScreen[CompareResult | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close_compare", "Close", show=False),
    ]

    def __init__(self, engine: EngineAPI, conversation: Sequence[dict[str, str]],
                 params: SamplingParams, choices: Sequence[Choice], first: int,
                 second: int, streamer: PacedStreamer | None = None) -> None:
        """``conversation`` ends with the user message to answer; ``first``/``second``
        index ``choices`` for the two picks shown at the start."""
        super().__init__()
        self.engine = engine
        self.streamer = streamer or PacedStreamer()
        self.conversation = [dict(m) for m in conversation]
        self.params = params
        self.choices = list(choices)
        self.first, self.second = first, second
        self.running = False
        self.closing = False
        self.results: dict[str, CompareResult] = {}

    def compose(self) -> ComposeResult:
        options = [(c.label, n) for n, c in enumerate(self.choices)]
        question = self.conversation[-1]["content"] if self.conversation else ""
        with Vertical(id="compare-dialog", classes="dialog"):
            yield Label("Compare two choices on your last message", classes="dialog-title")
            yield Static(f"you: {question}", id="compare-question", classes="dialog-intro",
                         markup=False)
            with Horizontal(id="compare-picks"):
                yield Select(options, value=self.first, allow_blank=False, id="pick-a",
                             compact=True)
                yield Label("and", classes="compare-and")
                yield Select(options, value=self.second, allow_blank=False, id="pick-b",
                             compact=True)
                yield Button("Run both", id="run-compare", variant="primary", compact=True)
            with Horizontal(id="compare-replies"):
                for side in SIDES:
                    yield VerticalScroll(id=f"side-{side}", classes="compare-side")
            yield Static("Pick two choices and run them.", id="compare-note", markup=False)
            with Horizontal(id="compare-buttons"):
                yield Button("Keep left", id="keep-a", disabled=True, compact=True)
                yield Button("Keep right", id="keep-b", disabled=True, compact=True)
                yield Button("Close", id="close-compare", compact=True)

    def on_mount(self) -> None:
        self.query_one("#run-compare", Button).focus()

    def picked(self, side: str) -> Choice:
        value = self.query_one(f"#pick-{side}", Select).value
        return self.choices[value if isinstance(value, int) else 0]

    def turn(self, side: str) -> AssistantTurn | None:
        turns = self.query_one(f"#side-{side}", VerticalScroll).query(AssistantTurn)
        return turns.first() if turns else None

    def _note(self, text: str) -> None:
        self.query_one("#compare-note", Static).update(text)

    # -- running ------------------------------------------------------------------------
    @on(Button.Pressed, "#run-compare")
    async def action_run_compare(self) -> None:
        if self.running:
            return
        picks = {side: self.picked(side) for side in SIDES}
        if picks["a"] == picks["b"]:
            self._note("Pick two different choices: the same one twice says nothing new.")
            self.notify("Pick two different choices.", severity="warning")
            return
        self.results.clear()
        for side in SIDES:
            self.query_one(f"#keep-{side}", Button).disabled = True
            column = self.query_one(f"#side-{side}", VerticalScroll)
            await column.remove_children()
            turn = AssistantTurn(picks[side].label)
            await column.mount(turn)
            turn.note("waiting…")
        self.running = True
        self.query_one("#run-compare", Button).disabled = True
        self._note("Running both choices, one after the other (Esc stops and closes)…")
        self.run_both(picks)

    @work(exclusive=True, group="compare", exit_on_error=False,
          description="compare two choices")
    async def run_both(self, picks: dict[str, Choice]) -> None:
        try:
            for side in SIDES:
                turn = self.turn(side)
                if turn is not None and not self.closing:
                    await self._run_one(side, picks[side], turn)
        finally:
            self.running = False
        if self.closing:
            return
        self.query_one("#run-compare", Button).disabled = False
        kept = [s for s in SIDES if s in self.results]
        for side in kept:
            self.query_one(f"#keep-{side}", Button).disabled = False
        if kept:
            self._note("Keep one: it replaces the last reply, and the conversation goes on "
                       "under its choice. Close keeps the reply you had.")
            self.query_one(f"#keep-{kept[0]}", Button).focus()
        else:
            self._note("Neither choice gave a reply (see the messages).")

    async def _run_one(self, side: str, choice: Choice, turn: AssistantTurn) -> None:
        try:
            await self.engine.use_adapter(choice.path, choice.scale).result()
        except EngineError as exc:
            if not self.closing:
                self.notify(str(exc), title=f"{choice.label}: not run", severity="error")
                await turn.finish(error=f"Not run: {exc}")
            return
        if self.closing:
            return
        turn.note("reading the prompt…")
        stream = self.engine.chat(self.conversation, self.params)

        def frame(_token: object) -> None:
            if self.closing:
                stream.cancel()  # the screen was closed: stop the engine
            elif turn.text:
                turn.note("")

        try:
            done = await self.streamer.run(stream, turn, on_frame=frame, handlers={
                Notice: lambda e: self.notify(e.message, severity="warning", timeout=8)})
        except EngineError as exc:
            if not self.closing:
                if exc.kind != "cancelled":
                    self.notify(str(exc), title=f"{choice.label}: no reply", severity="error")
                await turn.finish(error=str(exc))
            return
        if self.closing:
            return
        await turn.finish(done.stats)
        turn.border_subtitle = turn_adapter_label(done.stats)
        if done.stats.finish_reason != "cancelled" and (done.text or
                                                       done.stats.generated_tokens):
            self.results[side] = CompareResult(choice, done.text, done.stats)

    # -- keeping ------------------------------------------------------------------------
    @on(Button.Pressed, "#keep-a")
    def _keep_left(self) -> None:
        self.dismiss(self.results.get("a"))

    @on(Button.Pressed, "#keep-b")
    def _keep_right(self) -> None:
        self.dismiss(self.results.get("b"))

    @on(Button.Pressed, "#close-compare")
    def action_close_compare(self) -> None:
        self.closing = True
        if self.running:
            self.engine.cancel()
        self.dismiss(None)
