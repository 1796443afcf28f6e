"""The sidebar's Adapters pane, its scale control, and the swap facts of the throughput pane.

The pane lists every adapter the engine found (``Engine.list_adapters``), valid or with the
one-line reason it cannot be used, plus "No adapter"; the active one is marked. It only
*shows* and *asks*: Enter or a click posts ``AdaptersPane.Chosen`` and ``d`` posts
``AdaptersPane.DetailsWanted``; the adapters controller does the swap on the engine thread,
and every change of the active adapter (whoever made it) reaches the pane as the engine's
``AdapterChanged`` event (``record_active``): nobody polls. Like the other panes it
repaints on ``tick`` when something changed, so a frozen sidebar (screenshots) stays as it
is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from common.formats import fmt_bytes
from models.resolve import same_location

from ...formatting import seconds
from ...keymap import ADAPTER_LIST_BINDINGS, SCALE_BINDINGS
from ..labels import NO_ADAPTER, adapter_label, scale_label, turn_adapter_label
from .meters import Gauge, Pane, facts

if TYPE_CHECKING:
    from engine import AdapterInfo, AdapterState, TurnStats

NONE_ID = "adapter:none"
SCALE_MAX = 2.0
SCALE_STEP = 0.1


def facts_line(info: AdapterInfo) -> str:
    """``LoRA r4 · layers 2-3 · 24 KB``: what the pane shows under a valid adapter's name."""
    parts = [f"{info.type_label} r{info.rank}" if info.rank else info.type_label,
             f"layers {info.layers_label}"]
    if info.size_bytes:
        parts.append(fmt_bytes(info.size_bytes))
    return " · ".join(parts)


class AdapterList(OptionList):
    """The pane's list: "No adapter" and each adapter. Enter or a click activates."""

    BINDINGS = ADAPTER_LIST_BINDINGS  # type: ignore[assignment]

    class DetailsWanted(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def action_details(self) -> None:
        if self.highlighted is not None:
            self.post_message(self.DetailsWanted(self.highlighted))


class ScaleControl(Gauge, can_focus=True):
    """The active adapter's scale, 0 to 2 times as trained: left/right (or a click) moves it.

    A gauge that can be moved: it shows the value the engine has; a move shows the wanted
    value at once and posts ``Changed`` (the app applies it on the engine thread and calls
    ``show`` with the outcome).
    """

    BINDINGS = SCALE_BINDINGS  # type: ignore[assignment]
    LABEL_WIDTH = 6
    VALUE_WIDTH = 10
    DEFAULT_CSS = """
    ScaleControl:focus > .gauge--label { color: $text-accent; text-style: bold; }
    ScaleControl.-off > .gauge--value { color: $text-muted; }
    """

    class Changed(Message):
        def __init__(self, scale_control: ScaleControl, value: float) -> None:
            super().__init__()
            self.scale_control = scale_control
            self.value = value

        @property
        def control(self) -> ScaleControl:
            return self.scale_control

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("scale", id=id)
        self.enabled = False
        self.show(None)

    def show(self, value: float | None) -> None:
        """Show the engine's scale (None: no adapter is active, the control is off)."""
        self.enabled = value is not None
        self.set_class(not self.enabled, "-off")
        if value is None:
            self.set(0, 0, "no adapter")
        else:
            self.set(value, SCALE_MAX, f"{value:.1f}×", high=SCALE_MAX + 1)

    def _move_to(self, value: float) -> None:
        if not self.enabled:
            self.notify("No adapter is active: choose one above to set its scale.",
                        severity="warning")
            return
        value = round(min(max(value, 0.0), SCALE_MAX), 2)
        if value != self.value:
            self.show(value)
            self.post_message(self.Changed(self, value))

    def action_scale_down(self) -> None:
        self._move_to(round(self.value / SCALE_STEP - 1) * SCALE_STEP)

    def action_scale_up(self) -> None:
        self._move_to(round(self.value / SCALE_STEP + 1) * SCALE_STEP)

    def on_click(self, event: events.Click) -> None:
        bar = self.size.width - self.LABEL_WIDTH - self.VALUE_WIDTH - 1
        x = event.x - self.LABEL_WIDTH
        if bar > 1 and 0 <= x < bar:
            self._move_to(round(SCALE_MAX * (x + 1) / bar / SCALE_STEP) * SCALE_STEP)


class AdaptersPane(Pane):
    """Every adapter found (name, type, rank, layers, size; valid or why not) and the scale."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "adapters--active", "adapters--facts", "adapters--invalid", "adapters--note",
    }
    DEFAULT_CSS = """
    AdaptersPane > .adapters--active { color: $text-success; text-style: bold; }
    AdaptersPane > .adapters--facts { color: $text-muted; }
    AdaptersPane > .adapters--invalid { color: $text-error; }
    AdaptersPane > .adapters--note { color: $text-warning; }
    AdaptersPane #adapter-list {
        height: auto;
        max-height: 16;
        border: none;
        padding: 0;
        background: transparent;
        scrollbar-gutter: stable;  /* the same width with or without a scrollbar */
        scrollbar-size-vertical: 1;
    }
    AdaptersPane #adapter-note { color: $text-muted; height: auto; }
    AdaptersPane ScaleControl { margin-top: 1; }
    """

    class Chosen(Message):
        """The user picked a row: ``path`` None is "No adapter"."""

        def __init__(self, path: str | None, name: str) -> None:
            super().__init__()
            self.path = path
            self.name = name

    class DetailsWanted(Message):
        def __init__(self, info: AdapterInfo) -> None:
            super().__init__()
            self.info = info

    def __init__(self) -> None:
        super().__init__("Adapters", id="adapters")
        self.infos: list[AdapterInfo] = []
        self.active: AdapterState | None = None
        self.status = "listed once the model has loaded"

    def compose(self) -> ComposeResult:
        yield AdapterList(id="adapter-list")
        yield Static("", id="adapter-note", markup=False)
        yield ScaleControl(id="adapter-scale")

    def on_mount(self) -> None:
        self.repaint()

    @property
    def option_list(self) -> AdapterList:
        return self.query_one(AdapterList)

    @property
    def scale_control(self) -> ScaleControl:
        return self.query_one(ScaleControl)

    # -- recording ------------------------------------------------------------------------
    def record(self, infos: list[AdapterInfo], status: str = "") -> None:
        self.infos = list(infos)
        self.status = status
        self.dirty = True
        self.tick()

    def record_active(self, state: AdapterState | None) -> None:
        self.active = state
        self.dirty = True
        self.tick()

    def is_active(self, info: AdapterInfo | None) -> bool:
        active_path = self.active.path if self.active is not None else None
        return same_location(info.path if info else None, active_path)

    def rows(self) -> list[tuple[str | None, str]]:
        """(path, name) of each row, "No adapter" first: what Enter on that row activates."""
        return [(None, NO_ADAPTER), *((i.path, i.name) for i in self.infos)]

    # -- painting -------------------------------------------------------------------------
    def _prompt(self, info: AdapterInfo | None) -> Text:
        def style(name: str) -> Style:  # colours only: the list's row background shows
            return self.get_component_rich_style(name, partial=True)

        active = self.is_active(info)
        mark = "●" if active else ("✗" if info is not None and not info.valid else "○")
        text = Text(no_wrap=False, overflow="fold")
        head_style = style("adapters--active") if active else None
        if info is None:
            text.append(f"{mark} {NO_ADAPTER}", style=head_style or "")
            text.append("\n  the base model", style=style("adapters--facts"))
            return text
        text.append(f"{mark} {info.name}", style=head_style or "")
        if active and self.active is not None and self.active.scale is not None:
            text.append(f"  {scale_label(self.active.scale)}", style=head_style or "")
        text.append("\n  ")
        if info.valid:
            text.append(facts_line(info), style=style("adapters--facts"))
        else:
            text.append(info.reason or "cannot be used", style=style("adapters--invalid"))
        for note in info.notes:
            text.append(f"\n  note: {note}", style=style("adapters--note"))
        return text

    def repaint(self) -> None:
        if not self.is_mounted:
            return
        options = self.option_list
        keep = options.highlighted
        options.set_options([Option(self._prompt(None), id=NONE_ID),
                             *(Option(self._prompt(i), id=f"adapter:{n}")
                               for n, i in enumerate(self.infos))])
        if keep is None:
            active = next((n for n, (path, _) in enumerate(self.rows())
                           if same_location(path, self.active.path if self.active else None)), 0)
            keep = active
        options.highlighted = min(keep, options.option_count - 1)
        note = self.status
        if not note and not self.infos:
            note = ("no adapters found: pass --adapters DIR (a folder of adapter folders) "
                    "or --adapter PATH, or put them in the config's adapters folder")
        self.query_one("#adapter-note", Static).update(note)
        self.query_one("#adapter-note", Static).display = bool(note)
        self.scale_control.show(self.active.scale if self.active is not None
                                and self.active.info is not None else None)

    # -- what the user does ---------------------------------------------------------------
    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        path, name = self.rows()[event.option_index]
        self.post_message(self.Chosen(path, name))

    def on_adapter_list_details_wanted(self, event: AdapterList.DetailsWanted) -> None:
        event.stop()
        if event.index == 0:
            self.notify("No adapter: replies come from the base model alone.")
            return
        self.post_message(self.DetailsWanted(self.infos[event.index - 1]))


def milliseconds(ms: float) -> str:
    """A swap's latency: ``0.42 ms`` (swaps are quick), ``1.3 s`` over a second."""
    return f"{ms:.2f} ms" if ms < 1000 else seconds(ms / 1000)


class SwapFacts(Static):
    """Two rows under the throughput facts: the last adapter swap's latency, and how many
    cached tokens the first reply after it had to prefill again under the new choice."""

    DEFAULT_CSS = """
    SwapFacts { height: 2; }
    """

    def __init__(self) -> None:
        super().__init__("", id="swap-facts", markup=False)
        self.swap_ms: float | None = None
        self.target = ""
        self.reprefill: int | None = None

    def on_mount(self) -> None:
        self._paint()

    def record_swap(self, state: AdapterState) -> None:
        """A swap just happened; its re-prefill is known after the next reply."""
        self.swap_ms = state.swap_ms
        self.target = adapter_label(state.name, state.scale)
        self.reprefill = None
        self._paint()

    def record_turn(self, stats: TurnStats) -> None:
        """A reply ended: if it was the first after a swap, it says what the swap cost.
        A swap whose re-prefill happened before the reply (a resumed session reads its
        conversation again right after restoring its adapter) cost this reply nothing."""
        if stats.swap_ms is None:
            if self.swap_ms is not None and self.reprefill is None:
                self.reprefill = stats.reprefill_tokens
                self._paint()
            return
        self.swap_ms = stats.swap_ms
        self.target = turn_adapter_label(stats)
        self.reprefill = stats.reprefill_tokens
        self._paint()

    def _paint(self) -> None:
        parent = self.parent
        if isinstance(parent, Pane) and parent.frozen:
            return
        if self.swap_ms is None:
            swap, again = "–", "–"
        else:
            swap = f"{milliseconds(self.swap_ms)} → {self.target}"
            again = "next reply" if self.reprefill is None else f"{self.reprefill} tok"
        self.update(facts([("last swap", swap), ("re-prefill", again)]), layout=False)
