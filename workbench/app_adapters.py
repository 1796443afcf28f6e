"""The app's side of LoRA adapters: the Adapters pane, swaps, scale, details and compare.

``AdapterActions`` is a mixin of ``WorkbenchApp`` (it comes before ``App`` in the bases), so
that the adapter feature lives here and app.py only calls two hooks: ``refresh_adapters``
after a model load and ``note_turn_adapter`` when a reply ends. Textual calls the
``on_mount`` and ``on_*`` message handlers of every class in the app's MRO, so the
handlers below run beside the app's own.

Every swap happens on the engine thread (``Engine.use_adapter`` / ``set_adapter_scale``),
awaited by a worker: the UI never waits on MLX. A refused adapter is one notification; the
engine keeps the previous adapter active and the conversation is not touched.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import SystemCommand
from textual.screen import Screen
from textual.timer import Timer

from engine import (
    Engine,
    Error,
    ModelInfo,
    Notice,
    Result,
    SamplingParams,
    TurnDone,
    TurnStats,
)
from engine.adapter_swap import AdapterState
from engine.adapters import AdapterInfo

from .config import Config
from .keymap import APP_BINDINGS, HELP_TEXT
from .screens.adapter_details import AdapterDetailsScreen
from .screens.compare import Choice, CompareResult, CompareScreen
from .widgets.adapters import (
    NO_ADAPTER,
    AdaptersPane,
    ScaleControl,
    SwapFacts,
    adapter_label,
    facts_line,
    same_path,
    turn_adapter_label,
)

if TYPE_CHECKING:
    from textual.app import App

    from .widgets import AssistantTurn, ChatView, PromptBox, Sidebar, StatusLine

    _AppBase = App[int]
else:
    _AppBase = object

SCALE_SETTLE_S = 0.25  # apply a scale once the keys have rested this long
ADAPTER_SYNC_S = 0.5  # how often the pane checks for swaps made elsewhere (a session resume)
_COMMANDS = {
    "compare-adapters": ("compare_adapters", "Compare adapters on the last message"),
    "adapters": ("focus_adapters", "Adapters: choose one in the sidebar"),
}


class AdapterActions(_AppBase):
    """Adapters in the app. Mixed into WorkbenchApp; see the module docstring."""

    if TYPE_CHECKING:  # what the mixin uses of WorkbenchApp
        args: argparse.Namespace
        config: Config
        engine: Engine
        params: SamplingParams
        messages: list[dict[str, str]]
        model_info: ModelInfo | None
        replying: bool
        keymap: dict[str, str]

        @property
        def sidebar(self) -> Sidebar: ...
        @property
        def chat(self) -> ChatView: ...
        @property
        def prompt(self) -> PromptBox: ...
        @property
        def status(self) -> StatusLine: ...
        @property
        def model_ready(self) -> bool: ...
        def conversation(self) -> list[dict[str, str]]: ...
        def _refuse_while_replying(self, what: str) -> bool: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter_infos: list[AdapterInfo] = []
        self.adapters_pane = AdaptersPane()
        self.swap_facts = SwapFacts()
        self._scale_timer: Timer | None = None

    def on_mount(self) -> None:
        self.call_later(self._mount_adapter_widgets)
        self.set_interval(ADAPTER_SYNC_S, self._sync_adapter)

    async def _mount_adapter_widgets(self) -> None:
        await self.sidebar.add_pane(self.adapters_pane)
        await self.sidebar.throughput.mount(self.swap_facts)

    # -- the list -----------------------------------------------------------------------
    def adapter_sources(self) -> tuple[list[str], list[str]]:
        """(folders of adapter folders, single adapter folders) to look in.

        ``--adapters DIR`` and the config's adapters folder; the default folder is skipped
        while it does not exist (a fresh install has none), one set in the config is not.
        ``--adapter PATH`` folders are always listed.
        """
        dirs = [self.args.adapters] if getattr(self.args, "adapters", None) else []
        config_dir = self.config.adapters_path()
        if self.config.adapters_dir or config_dir.is_dir():
            dirs.append(str(config_dir))
        return dirs, [str(p) for p in getattr(self.args, "adapter", None) or []]

    @work(exclusive=True, group="adapters", exit_on_error=False, description="list adapters")
    async def refresh_adapters(self) -> None:
        """Find and check the adapters against the loaded model; show them in the pane."""
        dirs, paths = self.adapter_sources()
        self.adapters_pane.record(self.adapter_infos, "looking for adapters…")
        final: Any = None
        async for batch in self.engine.list_adapters(dirs, paths).batches():
            for event in batch:
                if isinstance(event, Notice):
                    self.notify(event.message, title="Adapters", severity="warning",
                                timeout=10)
            final = batch[-1]
        if isinstance(final, Result):
            self.adapter_infos = list(final.value)
            self.adapters_pane.record(self.adapter_infos)
        else:
            message = final.message if isinstance(final, Error) else "it did not finish"
            self.adapters_pane.record(self.adapter_infos, f"could not list them: {message}")
        self.adapters_pane.record_active(self.engine.adapter)

    # -- choosing -----------------------------------------------------------------------
    def choose_adapter(self, path: str | None, name: str = "") -> None:
        """Make ``path`` (None: no adapter) the adapter of the next replies."""
        if self._refuse_while_replying("change the adapter"):
            return
        if not self.model_ready:
            self.notify("The model has not loaded yet: choose an adapter once it has.",
                        severity="warning")
            return
        active = self.engine.adapter
        if same_path(path, active.path if active else None):
            self.notify(f"{name or NO_ADAPTER} is already in use.")
            self.prompt.focus()
            return
        self.activate_adapter(path, None, focus_prompt=True)

    @work(exclusive=True, group="adapter", exit_on_error=False, description="switch adapter")
    async def activate_adapter(self, path: str | None, scale: float | None = None, *,
                               focus_prompt: bool = False, quiet: bool = False) -> None:
        await self._swap_to(path, scale, focus_prompt=focus_prompt, quiet=quiet)

    async def _swap_to(self, path: str | None, scale: float | None, *,
                       focus_prompt: bool = False, quiet: bool = False) -> bool:
        """Ask the engine for the swap and show the outcome; False if it was refused."""
        final = await self.engine.use_adapter(path, scale).result()
        if isinstance(final, Result) and isinstance(final.value, AdapterState):
            state = final.value
            self._adapter_changed(state)
            if not quiet:
                what = (f"Adapter {adapter_label(state.name, state.scale)}" if state.name
                        else "No adapter")
                self.notify(f"{what} from the next reply on (swap {state.swap_ms:.2f} ms).",
                            timeout=4)
            if focus_prompt:
                self.prompt.focus()
            return True
        message = final.message if isinstance(final, Error) else "the swap did not finish"
        self.notify(message, title="Adapter not changed", severity="error", timeout=12)
        self.adapters_pane.record_active(self.engine.adapter)
        return False

    def _adapter_changed(self, state: AdapterState, swapped: bool = True) -> None:
        self.adapters_pane.record_active(state)
        if swapped:
            self.swap_facts.record_swap(state)
        if self.model_info is not None:
            self.model_info = replace(self.model_info, adapter=state.path)
            self.sidebar.model.record_info(self.model_info)

    def _sync_adapter(self) -> None:
        """Show a swap that another feature made (a resumed session restores its adapter;
        loading another model drops it). Not during a reply or a compare."""
        state, shown = self.engine.adapter, self.adapters_pane.active
        if self.replying or state is None:
            return
        if shown is None or state.identity != shown.identity:
            self._adapter_changed(state, swapped=state.swap_ms > 0)  # 0: set by a load

    def on_adapters_pane_chosen(self, event: AdaptersPane.Chosen) -> None:
        self.choose_adapter(event.path, event.name)

    # -- scale --------------------------------------------------------------------------
    def on_scale_control_changed(self, event: ScaleControl.Changed) -> None:
        if self._refuse_while_replying("change the adapter's scale"):
            self.adapters_pane.record_active(self.engine.adapter)
            return
        if self._scale_timer is not None:
            self._scale_timer.stop()
        self._scale_timer = self.set_timer(SCALE_SETTLE_S,
                                           partial(self.apply_adapter_scale, event.value))

    @work(exclusive=True, group="adapter", exit_on_error=False, description="adapter scale")
    async def apply_adapter_scale(self, scale: float) -> None:
        final = await self.engine.set_adapter_scale(scale).result()
        if isinstance(final, Result) and isinstance(final.value, AdapterState):
            self._adapter_changed(final.value)
            return
        message = final.message if isinstance(final, Error) else "it did not finish"
        self.notify(message, title="Scale not changed", severity="error", timeout=10)
        self.adapters_pane.record_active(self.engine.adapter)

    def action_adapter_scale(self) -> None:
        self.sidebar.display = True
        self.adapters_pane.scale_control.focus()

    # -- details ------------------------------------------------------------------------
    def on_adapters_pane_details_wanted(self, event: AdaptersPane.DetailsWanted) -> None:
        self.show_adapter_details(event.info.path)

    @work(exclusive=True, group="adapter-details", exit_on_error=False,
          description="adapter details")
    async def show_adapter_details(self, path: str) -> None:
        final = await self.engine.check_adapter(path).result()
        if not (isinstance(final, Result) and isinstance(final.value, AdapterInfo)):
            message = final.message if isinstance(final, Error) else "it did not finish"
            self.notify(message, title="No details", severity="error")
            return
        info: AdapterInfo = final.value
        active = self.engine.adapter
        scale = active.scale if active and same_path(active.path, info.path) else None
        self.push_screen(AdapterDetailsScreen(info, scale), self._details_closed)

    def _details_closed(self, path: str | None) -> None:
        if path is not None:
            self.choose_adapter(path, Path(path).name)

    # -- what produced each reply -------------------------------------------------------
    def note_turn_adapter(self, turn: AssistantTurn, stats: TurnStats) -> None:
        """Mark a finished reply with the adapter and scale that wrote it; show the cost of
        the swap before it (if any) in the throughput pane."""
        if stats.adapter or stats.swap_ms is not None or self.adapter_infos:
            turn.border_subtitle = turn_adapter_label(stats)
        self.swap_facts.record_turn(stats)

    # -- compare ------------------------------------------------------------------------
    def adapter_choices(self) -> tuple[list[Choice], int]:
        """The choices compare offers (no adapter, each valid adapter), and the active one's
        index. The active adapter is offered at its current scale, the others as trained."""
        active = self.engine.adapter
        active_path = active.path if active else None
        choices, current = [Choice(adapter_label(None, None))], 0
        listed = False
        for info in self.adapter_infos:
            if not info.valid:
                continue
            scale = None
            if same_path(info.path, active_path) and active is not None:
                scale, current, listed = active.scale, len(choices), True
            choices.append(Choice(adapter_label(info.name, scale or 1.0), info.path, scale))
        if active is not None and active.path and not listed:
            current = len(choices)
            choices.append(Choice(adapter_label(active.name, active.scale), active.path,
                                  active.scale))
        return choices, current

    def action_compare_adapters(self) -> None:
        if self._refuse_while_replying("compare"):
            return
        if not self.model_ready:
            self.notify("The model has not loaded yet.", severity="warning")
            return
        if len(self.messages) < 2 or self.messages[-1]["role"] != "assistant":
            self.notify("Send a message first: compare answers your last message under two "
                        "choices.", severity="warning")
            return
        choices, current = self.adapter_choices()
        if len(choices) < 2:
            self.notify("No adapter to compare with: add some with --adapters DIR, "
                        "--adapter PATH or the config's adapters folder.", severity="warning")
            return
        second = 1 if current == 0 else 0
        original = choices[current]
        self.replying = True  # the regular reply actions wait until compare is closed
        screen = CompareScreen(self.engine, self.conversation()[:-1], self.params, choices,
                               current, second)
        self.push_screen(screen, partial(self._compare_closed, original))

    async def _compare_closed(self, original: Choice, kept: CompareResult | None) -> None:
        self.replying = False
        if kept is None:  # back to the choice that wrote the reply the user kept
            self.activate_adapter(original.path, original.scale, quiet=True)
            return
        self.messages[-1] = {"role": "assistant", "content": kept.text}
        turn = self.chat.last_assistant()
        if turn is not None:
            await turn.show_text(kept.text)
            turn.show_stats(kept.stats)
            self.note_turn_adapter(turn, kept.stats)
        self.sidebar.model.record_context(kept.stats.context_tokens)
        self.notify(f"Kept the reply of {kept.choice.label}: the conversation goes on under "
                    "it.", timeout=6)
        self._keep_compared(kept)

    @work(exclusive=True, group="adapter", exit_on_error=False,
          description="keep the compared reply")
    async def _keep_compared(self, kept: CompareResult) -> None:
        """Make the kept reply's choice the active one, then let the sessions feature (when
        there is one) save the conversation with that reply and that adapter."""
        await self._swap_to(kept.choice.path, kept.choice.scale, quiet=True)
        save = getattr(self, "after_turn", None)  # app_sessions.py: autosave
        if callable(save):
            save(TurnDone(kept.text, kept.stats))

    # -- keys and the command palette ---------------------------------------------------
    def action_focus_adapters(self) -> None:
        self.sidebar.display = True
        self.adapters_pane.scroll_visible(animate=False)
        self.adapters_pane.option_list.focus(scroll_visible=False)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for binding_id, (action, title) in _COMMANDS.items():
            keys = self.keymap.get(binding_id) or next(
                (b.key for b in APP_BINDINGS if b.id == binding_id), "")
            yield SystemCommand(title, f"{HELP_TEXT[binding_id]} ({keys})",
                                getattr(self, f"action_{action}"))
        yield SystemCommand(NO_ADAPTER, "Reply with the base model alone, from the next "
                            "reply on", partial(self.choose_adapter, None, NO_ADAPTER))
        for info in self.adapter_infos:
            about = facts_line(info) if info.valid else f"cannot be used: {info.reason}"
            yield SystemCommand(f"Use adapter: {info.name}", about,
                                partial(self.choose_adapter, info.path, info.name))
            yield SystemCommand(f"Adapter details: {info.name}",
                                "Everything checked, and its adapter_config.json",
                                partial(self.show_adapter_details, info.path), discover=False)
        yield SystemCommand("Adapter scale", "Set the active adapter's scale, 0 to 2 times "
                            "as trained (left/right)", self.action_adapter_scale,
                            discover=False)
        yield SystemCommand("Adapters: look again", "List and check the adapter folders "
                            "again", self.refresh_adapters, discover=False)

