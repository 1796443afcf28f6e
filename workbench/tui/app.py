"""The full-screen app: chat with a local model, watch its throughput and memory live.

``WorkbenchApp`` is wiring. Each concern is a controller that owns its state and says what
happened with a message (``tui/messages.py``): the chat (the one ``Conversation``, replies
streamed on the frame clock by ``tui/streamer.py``), the model (loads, switches, jobs),
the sessions (autosave, resume) and the adapters. The engine thread does all model work and
tells the app of every model and adapter change (``Engine.subscribe``); the handlers below
hand each message to whoever cares. The status line is computed from one ``Status``
(``tui/state.py``). Screens other than the main one are imported when first opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import replace as with_changes
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, on
from textual.app import App, ComposeResult, CSSPathType
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.reactive import var
from textual.widgets import Header
from textual.worker import Worker, WorkerState

import engine as engine_events
from engine import EngineAPI, SamplingParams
from themes import DARK, STYLESHEET, THEMES, register_themes, variable_defaults

from .. import runtime
from ..config import Config, save_config
from ..conversation import Conversation
from ..keymap import APP_BINDINGS, check_keymap
from . import messages
from .commands import WorkbenchCommands
from .controllers.adapters import AdapterController
from .controllers.chat import ChatController
from .controllers.models import ModelController
from .controllers.sessions import SessionController
from .controllers.training import JobEvents, TrainingController
from .layout import NARROW_WIDTH, Layout
from .state import Status
from .widgets import Banner, ChatView, PromptBox, Sidebar, StatusLine
from .widgets.footer import WorkbenchFooter
from .widgets.prompt import belongs_to_prompt

if TYPE_CHECKING:
    from .screens.adapter_details import AdapterDetailsScreen
    from .widgets.adapters import AdaptersPane, ScaleControl

MEMORY_POLL_S = 2.0  # memory is read this often while the engine is idle


# F12 is a priority binding, so that it works in the dialogs too (their bindings hide the
# app's others); the rest are as the keymap says.
BINDINGS = [with_changes(b, priority=True) if b.id == "screenshot" else b for b in APP_BINDINGS]


class WorkbenchApp(App[int]):
    TITLE = "MLX Workbench"
    CSS_PATH: ClassVar[CSSPathType | None] = [STYLESHEET, "app.tcss"]
    BINDINGS = BINDINGS  # type: ignore[assignment]
    # Every screen gets -narrow/-wide and -short/-tall, for the dialogs' CSS at 80x24.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_WIDTH, "-wide")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]  # noqa: RUF012
    COMMANDS = App.COMMANDS | {WorkbenchCommands}

    status: var[Status] = var(Status, init=False)

    def __init__(self, args: argparse.Namespace, config: Config | None = None,
                 params: SamplingParams | None = None, engine: EngineAPI | None = None) -> None:
        super().__init__()
        if config is None or params is None:
            config, params = runtime.setup(args)
        self.args = args
        self.config = config
        self.engine: EngineAPI = engine or runtime.start_engine(args, config)
        system = args.system if args.system is not None else config.system_prompt
        self.models = ModelController(self, self.engine, args, config)
        self.chat = ChatController(self, self.engine,
                                   Conversation(system_prompt=system, params=params),
                                   self.models)
        folder = getattr(args, "sessions_dir", None)
        self.sessions = SessionController(
            self, self.engine, args,
            Path(folder).expanduser() if folder else config.sessions_path(),
            self.chat, self.models)
        self.adapters = AdapterController(self, self.engine, args, config, self.chat,
                                          self.models)
        self.training = TrainingController(self)  # training, eval and fuse jobs
        self.layout = Layout(self)
        self._unsubscribe: Any = None
        self.keymap, self._startup_problems = check_keymap(config.keys,
                                                           str(config.path or "config"))
        self._startup_problems[:0] = list(config.problems)
        register_themes(self)
        wanted = args.theme or config.theme or DARK
        if self.get_theme(wanted) is None:
            self._startup_problems.append(
                f"unknown theme {wanted!r}: using {DARK}; choose one with Ctrl+P → Theme "
                f"(ours: {', '.join(THEMES)})")
            wanted = DARK
        self.theme = wanted

    # -- layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield Banner(id="banner")
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield ChatView(id="chat")
                yield PromptBox(id="prompt")
                yield StatusLine(id="status")
            yield Sidebar(id="sidebar")
        yield WorkbenchFooter()

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return variable_defaults(self.current_theme)

    @property
    def chat_view(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def prompt(self) -> PromptBox:
        return self.query_one(PromptBox)

    @property
    def sidebar(self) -> Sidebar:
        return self.query_one(Sidebar)

    @property
    def status_line(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def banner(self) -> Banner:
        return self.query_one(Banner)

    def update_status(self, **changes: Any) -> None:
        """Change the fields of the status that the caller owns (see ``tui/state.py``)."""
        self.status = self.status.with_(**changes)

    def watch_status(self, status: Status) -> None:
        self.status_line.status = status

    def on_mount(self) -> None:
        for problem in self._startup_problems:
            # Plain text: "[keys]" is the place in the file, not markup to drop.
            self.notify(problem, title="Config", severity="warning", timeout=12,
                        markup=False)
        if self.keymap:
            self.set_keymap(self.keymap)
        self.layout.fit(self.size.width)
        self.prompt.focus()
        self.set_interval(MEMORY_POLL_S, self.poll_memory)
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self._unsubscribe = self.engine.subscribe(self._engine_changed)
        self.sessions.start()  # --session NAME: its model is the one to load
        self.call_after_refresh(self.adapters.mount)  # not needed for the first frame
        self.models.start()  # the welcome screen on a first run; the load

    def on_resize(self, event: events.Resize) -> None:
        self.layout.fit(event.size.width)

    async def on_event(self, event: events.Event) -> None:
        """Typing (or a paste) while the chat or the sidebar has the focus: the focus moves to
        the prompt before the key is handed on, so the keys behind it in the queue go there
        too."""
        if isinstance(event, events.Key | events.Paste) and len(self.screen_stack) == 1 and \
                belongs_to_prompt(self.focused, event):
            self.layout.back_to_prompt()
        await super().on_event(event)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if event.widget is self.prompt:
            self.layout.back_to_prompt()  # 80x24: a prompt with the focus is never hidden

    def _engine_changed(self, event: Any) -> None:
        """On the engine thread: hand the change to the app's thread (post_message is
        thread-safe) and return at once."""
        if isinstance(event, engine_events.ModelChanged):
            self.post_message(messages.ModelChanged(event.info))
        elif isinstance(event, engine_events.AdapterChanged):
            self.post_message(messages.AdapterChanged(event.state, event.swapped))

    async def on_unmount(self) -> None:
        """The one exit path: jobs stopped, the session saved and unlocked, the engine
        closed (off the event loop: it waits for the engine thread)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.models.jobs.cancel_all()
        self.sessions.close()
        await asyncio.to_thread(self.training.stop_all)  # the training and fuse children
        await asyncio.to_thread(self.engine.close)

    # -- what the controllers and the engine say -----------------------------------------
    # The engine's messages can arrive while the app is closing (the screen already gone).
    @on(messages.ModelChanged)
    def _model_changed(self, event: messages.ModelChanged) -> None:
        with contextlib.suppress(NoMatches):
            self.models.model_changed(event.info)

    @on(messages.AdapterChanged)
    def _adapter_changed(self, event: messages.AdapterChanged) -> None:
        with contextlib.suppress(NoMatches):
            self.adapters.changed(event.state, event.swapped)
            self.models.adapter_changed(event.state)

    @on(messages.LoadFinished)
    def _load_finished(self, event: messages.LoadFinished) -> None:
        if event.info is not None:
            self.adapters.refresh()  # checked against this model
        self.poll_memory()

    @on(messages.TurnFinished)
    def _turn_finished(self, event: messages.TurnFinished) -> None:
        self.adapters.note_turn(event.turn, event.done.stats)
        self.sessions.turn_finished()

    @on(messages.ConversationCleared)
    def _conversation_cleared(self, event: messages.ConversationCleared) -> None:
        self.sessions.conversation_cleared(event.old)

    @on(messages.JobFinished)
    def _job_finished(self, event: messages.JobFinished) -> None:
        self.notify(event.message, title=event.kind.capitalize(), timeout=10,
                    severity="information" if event.ok else "warning")

    @on(JobEvents)
    def _job_events(self, event: JobEvents) -> None:
        with contextlib.suppress(NoMatches):
            self.training.arrived(event)

    @on(PromptBox.Submitted)
    async def _submitted(self, event: PromptBox.Submitted) -> None:
        await self.chat.send(event.text)

    @on(PromptBox.TypedElsewhere)
    def _typed_elsewhere(self, event: PromptBox.TypedElsewhere) -> None:
        """A character typed while the sidebar or the chat had the focus: it is the
        start of a message, so it goes to the prompt (and the focus with it)."""
        self.layout.back_to_prompt()
        self.prompt.insert(event.text)

    # The adapters pane's messages, by name (its module is imported after the first frame).
    def on_adapters_pane_chosen(self, event: AdaptersPane.Chosen) -> None:
        self.adapters.choose(event.path, event.name)

    def on_adapters_pane_details_wanted(self, event: AdaptersPane.DetailsWanted) -> None:
        self.adapters.show_details(event.info.path)

    def on_adapter_details_screen_fuse_wanted(self, event: AdapterDetailsScreen.FuseWanted
                                              ) -> None:
        self.training.open_fuse(event.path, event.name)

    def on_scale_control_changed(self, event: ScaleControl.Changed) -> None:
        self.adapters.scale_moved(event.value)

    async def on_chat_view_turn_action(self, event: ChatView.TurnAction) -> None:
        await self.chat.inside.turn_action(event)  # a key on the chat's selected turn

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place where a worker's unexpected failure reaches the user."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            self.notify(f"{event.worker.description} failed: {type(error).__name__}: {error}",
                        title="Unexpected error", severity="error", timeout=15)

    # -- memory, when idle ---------------------------------------------------------------
    def poll_memory(self) -> None:
        if not self.engine.busy and not self.chat.meters_frozen:
            # The function, not a coroutine made now: one the app never starts (it is
            # closing) would be left unawaited.
            self.run_worker(self._read_memory, group="memory",  # type: ignore[arg-type]
                            exclusive=True, exit_on_error=False, description="read memory")

    async def _read_memory(self) -> None:
        try:
            reading = await self.engine.memory().result()
        except engine_events.EngineError:
            return
        self.sidebar.memory.record(reading)

    # -- actions (every binding; the palette runs the same ones) -------------------------
    async def action_quit(self) -> None:
        """Ctrl+Q: quit, after a yes when a training run or a fuse would be lost (Ctrl+Q
        again in that question is the yes)."""
        from .screens.sessions import ConfirmScreen

        if isinstance(self.screen, ConfirmScreen) and self.screen.id == "confirm-quit":
            self.screen.dismiss(True)
            return
        lost = self.training.running_work()
        if lost is None:
            self.exit()
            return

        def answered(quit_now: bool | None) -> None:
            if quit_now:
                self.exit()

        self.push_screen(ConfirmScreen(f"{lost} Quit anyway?", yes="Quit", id="confirm-quit"),
                         answered)

    def action_help_quit(self) -> None:
        """Ctrl+C (outside a text field, where it copies): Textual would say how to quit; a
        user pressing it most likely wants to stop a reply."""
        def shown(binding_id: str, default: str) -> str:
            key = self.keymap.get(binding_id, default).split(",")[0].strip()
            return self.get_key_display(Binding(key, ""))

        self.notify(f"{shown('cancel', 'escape')} stops a reply · {shown('quit', 'ctrl+q')} "
                    "quits · Ctrl+C copies the selected text", title="Stop a reply?")

    def action_cancel_reply(self) -> None:
        """Esc: stop the reply (if one is being written) and go back to the prompt."""
        self.chat.cancel()
        self.layout.back_to_prompt()

    async def action_regenerate(self) -> None:
        await self.chat.regenerate()

    async def action_edit_last(self) -> None:
        await self.chat.edit_last()

    def action_copy_last(self) -> None:
        self.chat.copy_last()

    async def action_new_chat(self) -> None:
        await self.chat.new_chat()

    def action_settings(self) -> None:
        from .screens.settings import SettingsScreen

        conversation = self.chat.conversation
        info = self.models.info
        thinking = self.chat.inside.thinking if info is not None and info.thinking_switch else None
        self.push_screen(SettingsScreen(conversation.system_prompt, conversation.params,
                                        thinking=thinking), self._apply_settings)

    def action_screenshot(self, filename: str | None = None, path: str | None = None
                          ) -> None:
        """F12: an SVG of the screen (a dialog too), in the first folder that exists of
        Downloads, the data folder and the current folder; a notification says where."""
        from .screenshot import save

        save(self, filename, path)

    def _apply_settings(self, result: Any) -> None:
        if result is None:
            return
        conversation = self.chat.conversation
        conversation.params = result.params
        conversation.system_prompt = result.system_prompt
        if result.thinking is not None and result.thinking != self.chat.inside.thinking:
            self.chat.inside.set_thinking(result.thinking)
        if result.save_as_default:
            self.save_config(with_changes(self.config, sampling=result.params,
                                     system_prompt=result.system_prompt),
                             "sampling and system prompt saved as defaults")
        else:
            self.notify("Settings applied to this conversation.")

    def action_help(self) -> None:
        from ..keymap import all_bindings, key_rows
        from .screens.help import HelpScreen

        display = {key.strip(): self.get_key_display(Binding(key.strip(), ""))
                   for b in all_bindings()
                   for key in self.keymap.get(b.id or "", b.key).split(",")}
        self.push_screen(HelpScreen(key_rows(self.keymap, display.items())))

    def action_toggle_sidebar(self) -> None:
        self.layout.toggle_sidebar()

    def action_sessions(self) -> None:
        self.sessions.open_screen()

    def action_export_session(self) -> None:
        self.sessions.export()

    def action_models(self) -> None:
        self.models.open_screen()

    def action_focus_adapters(self) -> None:
        self.adapters.focus_list()

    def action_adapter_scale(self) -> None:
        self.adapters.focus_scale()

    def action_compare_adapters(self) -> None:
        self.adapters.compare()

    def action_train(self) -> None:
        if len(self.screen_stack) == 1:  # F6 is a priority key: not over another dialog
            self.training.open_screen()

    def action_evaluate(self) -> None:
        if len(self.screen_stack) == 1:
            self.training.open_eval()

    def action_token_view(self) -> None:
        self.chat.inside.cycle_token_view()

    def action_branches(self) -> None:
        if len(self.screen_stack) == 1:
            self.chat.inside.open_branches()

    def freeze_meters(self) -> None:
        """Stop live meter updates (for screenshots that must not change between runs)."""
        self.chat.meters_frozen = True
        self.sidebar.freeze()

    # -- config --------------------------------------------------------------------------
    def _remember_theme(self, theme: Any) -> None:
        name = getattr(theme, "name", str(theme))
        if name != self.config.theme:
            self.save_config(with_changes(self.config, theme=name), f"theme {name} remembered")

    def save_config(self, config: Config, done: str) -> None:
        if self.config.problems:
            self.notify("The config file has problems (see the earlier notes), so it was not "
                        "overwritten: fix it first.", severity="warning")
            return
        try:
            save_config(config)
        except OSError as exc:
            self.notify(f"Could not save the config: {exc}", severity="error")
            return
        self.config = config
        self.notify(done.capitalize() + ".")



def run_app(args: argparse.Namespace) -> int:
    from .paste import install

    install()  # a paste holding escapes stays one paste
    app = WorkbenchApp(args)
    try:
        app.run()
    finally:
        app.engine.close()
    return app.return_code or 0
