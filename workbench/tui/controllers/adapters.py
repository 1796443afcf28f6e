"""LoRA adapters in the app: the Adapters pane, swaps, scale, details and compare.

``AdapterController`` owns the adapters found for the loaded model (``infos``), the pane
that lists them and the swap facts under the throughput pane. Every swap happens on the
engine thread (``Engine.use_adapter`` / ``set_adapter_scale``), awaited by a worker: the UI
never waits on MLX. Whoever changes the adapter (this pane, a resumed session, a load with
``--adapter``, compare), the engine says so with ``AdapterChanged`` and the pane follows:
nothing polls. A refused adapter is one notification; the engine keeps the previous one
active and the conversation is not touched.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from engine import EngineError, Notice, TurnDone, follow
from models.resolve import same_location

from ... import runtime
from ..labels import NO_ADAPTER, adapter_label, turn_adapter_label
from ..messages import TurnFinished

if TYPE_CHECKING:
    from textual.timer import Timer

    from engine import AdapterInfo, AdapterState, EngineAPI, TurnStats

    from ...config import Config
    from ..app import WorkbenchApp
    from ..screens.compare import Choice, CompareResult
    from ..widgets import AssistantTurn
    from ..widgets.adapters import AdaptersPane, SwapFacts
    from .chat import ChatController
    from .models import ModelController

SCALE_SETTLE_S = 0.25  # the scale is applied once the keys stop moving it


class AdapterController:
    def __init__(self, app: WorkbenchApp, engine: EngineAPI, args: argparse.Namespace,
                 config: Config, chat: ChatController, models: ModelController) -> None:
        self.app = app
        self.engine = engine
        self.args = args
        self.config = config
        self.chat = chat
        self.models = models
        self.infos: list[AdapterInfo] = []
        self.added: list[str] = []  # adapter folders made in this app (trained): listed too
        self._pane: AdaptersPane | None = None
        self._swap_facts: SwapFacts | None = None
        self._scale_timer: Timer | None = None

    @property
    def pane(self) -> AdaptersPane:
        if self._pane is None:
            from ..widgets.adapters import AdaptersPane

            self._pane = AdaptersPane()
        return self._pane

    @property
    def swap_facts(self) -> SwapFacts:
        if self._swap_facts is None:
            from ..widgets.adapters import SwapFacts

            self._swap_facts = SwapFacts()
        return self._swap_facts

    async def mount(self) -> None:
        """Put the pane in the sidebar (after the first frame: it is not needed for it).
        Nothing to do when the app is already closing (quit right after it started)."""
        from textual.widget import MountError

        sidebar = self.app.sidebar
        try:
            await sidebar.add_pane(self.pane)
            await sidebar.throughput.mount(self.swap_facts)
        except MountError:  # the app is closing: the sidebar is being taken down
            return

    # -- the list ------------------------------------------------------------------------
    def sources(self) -> tuple[list[str], list[str]]:
        """(folders of adapter folders, single adapter folders) to look in.

        ``--adapters DIR`` and the config's adapters folder; the default folder is skipped
        while it does not exist (a fresh install has none), one set in the config is not.
        ``--adapter PATH`` folders are always listed.
        """
        dirs = [self.args.adapters] if getattr(self.args, "adapters", None) else []
        config_dir = self.config.adapters_path()
        if self.config.adapters_dir or config_dir.is_dir():
            dirs.append(str(config_dir))
        demo = runtime.demo_adapters(self.models.info)  # while the demo model is loaded
        if demo:
            dirs.append(demo)
        # ``--adapter NAME`` in demo mode names a demo adapter: it is listed from its folder.
        paths = [str(p) for p in getattr(self.args, "adapter", None) or []
                 if not demo or Path(p).expanduser().exists()]
        paths += [p for p in self.added if p not in paths]
        return dirs, paths

    def add_folder(self, path: str) -> None:
        """A new adapter folder (a training run's): list it from now on, and look again."""
        if path not in self.added:
            self.added.append(path)
        self.refresh()

    def refresh(self) -> None:
        self.app.run_worker(self._refresh(), group="adapters", exclusive=True,
                            exit_on_error=False, description="list adapters")

    async def _refresh(self) -> None:
        """Find and check the adapters against the loaded model; show them in the pane."""
        dirs, paths = self.sources()
        self.pane.record(self.infos, "looking for adapters…")

        def notice(event: Notice) -> None:
            self.app.notify(event.message, title="Adapters", severity="warning", timeout=10)

        try:
            found = await follow(self.engine.list_adapters(dirs, paths), {Notice: notice})
            self.infos = list(found)
            self.pane.record(self.infos)
        except EngineError as exc:
            self.pane.record(self.infos, f"could not list them: {exc}")
        self.pane.record_active(self.engine.adapter)

    def changed(self, state: AdapterState, swapped: bool) -> None:
        """The engine's ``AdapterChanged``: show the adapter active now (compare's own
        swaps are not shown: it puts the chosen adapter back when it closes)."""
        if self.chat.held:
            return
        self.pane.record_active(state)
        if swapped:
            self.swap_facts.record_swap(state)

    # -- choosing ------------------------------------------------------------------------
    def choose(self, path: str | None, name: str = "") -> None:
        """Make ``path`` (None: no adapter) the adapter of the next replies."""
        if self.chat.refuse_while_replying("change the adapter"):
            return
        if not self.models.ready:
            self.app.notify("The model has not loaded yet: choose an adapter once it has.",
                            severity="warning")
            return
        active = self.engine.adapter
        if same_location(path, active.path if active else None):
            self.app.notify(f"{name or NO_ADAPTER} is already in use.")
            self.app.prompt.focus()
            return
        self.activate(path, None, focus_prompt=True)

    def activate(self, path: str | None, scale: float | None = None, *,
                 focus_prompt: bool = False, quiet: bool = False) -> None:
        self.app.run_worker(self.swap_to(path, scale, focus_prompt=focus_prompt, quiet=quiet),
                            group="adapter", exclusive=True, exit_on_error=False,
                            description="switch adapter")

    async def swap_to(self, path: str | None, scale: float | None, *,
                      focus_prompt: bool = False, quiet: bool = False) -> bool:
        """Ask the engine for the swap and say how it went; False if it was refused."""
        try:
            state = await self.engine.use_adapter(path, scale).result()
        except EngineError as exc:
            self.app.notify(str(exc), title="Adapter not changed", severity="error",
                            timeout=12)
            self.pane.record_active(self.engine.adapter)
            return False
        if not quiet:
            from ..widgets.adapters import milliseconds

            what = (f"Adapter {adapter_label(state.name, state.scale)}" if state.name
                    else "No adapter")
            self.app.notify(f"{what} from the next reply on (swap {milliseconds(state.swap_ms)}).",
                            timeout=4)
        if focus_prompt:
            self.app.prompt.focus()
        return True

    # -- scale ---------------------------------------------------------------------------
    def scale_moved(self, value: float) -> None:
        if self.chat.refuse_while_replying("change the adapter's scale"):
            self.pane.record_active(self.engine.adapter)
            return
        if self._scale_timer is not None:
            self._scale_timer.stop()
        self._scale_timer = self.app.set_timer(SCALE_SETTLE_S, partial(self._apply_scale, value))

    def _apply_scale(self, scale: float) -> None:
        self.app.run_worker(self._set_scale(scale), group="adapter", exclusive=True,
                            exit_on_error=False, description="adapter scale")

    async def _set_scale(self, scale: float) -> None:
        try:
            await self.engine.set_adapter_scale(scale).result()
        except EngineError as exc:
            self.app.notify(str(exc), title="Scale not changed", severity="error", timeout=10)
            self.pane.record_active(self.engine.adapter)

    def focus_scale(self) -> None:
        self.app.layout.show_sidebar()
        self.pane.scale_control.focus()

    def focus_list(self) -> None:
        self.app.layout.show_sidebar()
        self.pane.scroll_visible(animate=False)
        self.pane.option_list.focus(scroll_visible=False)

    # -- details -------------------------------------------------------------------------
    def show_details(self, path: str) -> None:
        self.app.run_worker(self._details(path), group="adapter-details", exclusive=True,
                            exit_on_error=False, description="adapter details")

    async def _details(self, path: str) -> None:
        from ..screens.adapter_details import AdapterDetailsScreen

        try:
            info = await self.engine.check_adapter(path).result()
        except EngineError as exc:
            self.app.notify(str(exc), title="No details", severity="error")
            return
        active = self.engine.adapter
        scale = active.scale if active and same_location(active.path, info.path) else None
        self.app.push_screen(AdapterDetailsScreen(info, scale, active if scale is not None
                                                  else None), self._details_closed)

    def _details_closed(self, path: str | None) -> None:
        if path is not None:
            self.choose(path, Path(path).name)

    # -- what produced each reply --------------------------------------------------------
    def note_turn(self, turn: AssistantTurn | None, stats: TurnStats) -> None:
        """Mark a finished reply with the adapter and scale that wrote it; show the cost of
        the swap before it (if any) in the throughput pane."""
        if turn is not None and self.labels_reply(stats):
            turn.border_subtitle = turn_adapter_label(stats)
        self.swap_facts.record_turn(stats)

    def labels_reply(self, stats: TurnStats) -> bool:
        """Whether a reply's border names its adapter: when one wrote it, it followed a
        swap, or there are adapters to choose from (drawn again after a branch switch too)."""
        return bool(stats.adapter or stats.swap_ms is not None or self.infos)

    # -- compare -------------------------------------------------------------------------
    def choices(self) -> tuple[list[Choice], int]:
        """The choices compare offers (no adapter, each valid adapter), and the active one's
        index. The active adapter is offered at its current scale, the others as trained."""
        from ..screens.compare import Choice

        active = self.engine.adapter
        active_path = active.path if active else None
        choices, current = [Choice(adapter_label(None, None))], 0
        listed = False
        for info in self.infos:
            if not info.valid:
                continue
            scale = None
            if same_location(info.path, active_path) and active is not None:
                scale, current, listed = active.scale, len(choices), True
            label_scale = 1.0 if scale is None else scale
            choices.append(Choice(adapter_label(info.name, label_scale), info.path, scale))
        if active is not None and active.path and not listed:
            current = len(choices)
            choices.append(Choice(adapter_label(active.name, active.scale), active.path,
                                  active.scale))
        return choices, current

    def compare(self) -> None:
        from ..screens.compare import CompareScreen

        if self.chat.refuse_while_replying("compare"):
            return
        if not self.models.ready:
            self.app.notify("The model has not loaded yet.", severity="warning")
            return
        conversation = self.chat.conversation
        if len(conversation.messages) < 2 or not conversation.ends_with_reply():
            self.app.notify("Send a message first: compare answers your last message under "
                            "two choices.", severity="warning")
            return
        choices, current = self.choices()
        if len(choices) < 2:
            self.app.notify("No adapter to compare with: add some with --adapters DIR, "
                            "--adapter PATH or the config's adapters folder.",
                            severity="warning")
            return
        second = 1 if current == 0 else 0
        self.chat.hold("compare")  # the chat's actions wait until compare is closed
        screen = CompareScreen(self.engine, conversation.engine_messages()[:-1],
                               conversation.params, choices, current, second,
                               self.chat.streamer)
        self.app.push_screen(screen, partial(self._compare_closed, choices[current]))

    async def _compare_closed(self, original: Choice, kept: CompareResult | None) -> None:
        self.chat.release()
        if kept is None:  # back to the choice that wrote the reply the user kept
            self.activate(original.path, original.scale, quiet=True)
            return
        done = TurnDone(kept.text, kept.stats)
        turn = await self.chat.keep_reply(done)
        self.app.notify(f"Kept the reply of {kept.choice.label}: the conversation goes on "
                        "under it.", timeout=6)
        self.app.run_worker(self._keep(kept, done, turn), group="adapter", exclusive=True,
                            exit_on_error=False, description="keep the compared reply")

    async def _keep(self, kept: CompareResult, done: TurnDone,
                    turn: AssistantTurn | None) -> None:
        """Make the kept reply's choice the active one, then say the turn is finished (the
        session is saved with that reply and that adapter)."""
        await self.swap_to(kept.choice.path, kept.choice.scale, quiet=True)
        self.app.post_message(TurnFinished(done, turn))
