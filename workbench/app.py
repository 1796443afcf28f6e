"""The full-screen app: chat with a local model, watch its throughput and memory live.

The app never waits on MLX. The engine thread does all model work; each request's events
are consumed here by an async worker, a batch at a time (a burst of tokens is one update).
Reply text goes to the turn's Markdown stream, meter values are recorded and repainted by
the panes' own 10 Hz timers. The conversation (a list of role/content dicts) is owned
here; the engine renders it and reuses its cached prefix by itself.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult, CSSPathType, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerState

from engine import (
    Engine,
    Error,
    LoadProgress,
    Memory,
    MemoryReading,
    ModelInfo,
    ModelLoaded,
    Notice,
    PrefillProgress,
    Result,
    SamplingParams,
    TokenText,
    TurnDone,
)
from engine.stream import EventStream
from themes import DARK, STYLESHEET, THEMES, register_themes, variable_defaults

from . import runtime
from .app_adapters import AdapterActions
from .app_models import ModelActions
from .app_sessions import SessionActions
from .config import Config, save_config
from .keymap import APP_BINDINGS, HELP_TEXT, all_bindings, check_keymap, key_rows
from .screens import HelpScreen, SettingsResult, SettingsScreen
from .widgets import AssistantTurn, Banner, ChatView, PromptBox, Sidebar, StatusLine
from .widgets.pacer import FramePacer

MEMORY_POLL_S = 2.0
# Actions the command palette already offers through Textual's own system commands.
_BUILTIN_COMMANDS = {"quit", "command_palette", "change_theme", "screenshot"}
_COMMAND_TITLES = {
    "cancel": "Stop the reply",
    "regenerate": "Regenerate the last reply",
    "edit-last": "Edit and resend the last message",
    "copy-last": "Copy the last reply",
    "new-chat": "New conversation",
    "settings": "Settings: system prompt and sampling",
    "help": "Help: keys",
    "toggle-sidebar": "Toggle the sidebar",
}


class WorkbenchApp(AdapterActions, SessionActions, ModelActions, App[int]):
    TITLE = "MLX Workbench"
    CSS_PATH: ClassVar[CSSPathType | None] = [STYLESHEET, "app.tcss"]
    BINDINGS = APP_BINDINGS  # type: ignore[assignment]

    def __init__(self, args: argparse.Namespace, config: Config | None = None,
                 params: SamplingParams | None = None, engine: Engine | None = None) -> None:
        super().__init__()
        if config is None or params is None:
            config, params = runtime.setup(args)
        self.args = args
        self.config = config
        self.params = params
        self.system_prompt: str = args.system if args.system is not None else config.system_prompt
        self.messages: list[dict[str, str]] = []
        self.model_info: ModelInfo | None = None
        self.replying = False
        self.ignore_eos = False  # benchmarks: keep a reply going to max_tokens
        self.meters_frozen = False
        self.pacer = FramePacer()
        self._load_finished = asyncio.Event()  # set when the load ends, loaded or not
        self._stop_requested = False
        self.engine = engine or runtime.start_engine(args, config)
        self.keymap, self._startup_problems = check_keymap(config.keys)
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
        yield Footer()

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return variable_defaults(self.current_theme)

    @property
    def chat(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def prompt(self) -> PromptBox:
        return self.query_one(PromptBox)

    @property
    def sidebar(self) -> Sidebar:
        return self.query_one(Sidebar)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    def on_mount(self) -> None:
        for problem in self._startup_problems:
            self.notify(problem, title="Config", severity="warning", timeout=12)
        if self.keymap:
            self.set_keymap(self.keymap)
        self.prompt.focus()
        self.set_interval(MEMORY_POLL_S, self.poll_memory)
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.open_start_session()  # --session NAME (app_sessions.py)
        self.show_welcome_if_first_run()  # no model yet (app_models.py)
        # After the first frame: the engine thread's imports (mlx-lm) would delay it.
        self.call_after_refresh(self.load_model)

    async def on_unmount(self) -> None:
        await asyncio.to_thread(self.engine.close)

    # -- loading -------------------------------------------------------------------------
    @work(exclusive=True, group="load", exit_on_error=False, description="load the model")
    async def load_model(self) -> None:
        """Pick the model (building the demo kit on the engine thread if needed), load it."""
        args, config = self.args, self.config
        self.status.state = "finding the model…"
        self.status.show_progress()

        def choose(_core: Any, emit: Any, _cancel: Any) -> runtime.ModelChoice:
            return runtime.choose_model(args, config,
                                        lambda msg: emit(LoadProgress("build", msg)))

        try:
            final = await self._follow_load(self.engine.submit(choose))
            if isinstance(final, Result) and isinstance(final.value, runtime.ModelChoice):
                choice = final.value
                final = await self._follow_load(self.engine.load(choice.spec, choice.adapter))
            if isinstance(final, ModelLoaded):
                self._model_loaded(final.info)
            else:
                message = final.message if isinstance(final, Error) else "it did not finish"
                self._load_failed(message)
        finally:
            self._load_finished.set()

    async def _follow_load(self, stream: EventStream) -> Any:
        final = None
        async for batch in stream.batches():
            for event in batch:
                if isinstance(event, LoadProgress):
                    self._load_progress(event)
            final = batch[-1]
        return final

    def _load_progress(self, event: LoadProgress) -> None:
        self.status.state = event.line()
        if event.stage == "download" and event.total:
            self.status.show_progress(event.done, event.total)
        else:
            self.status.show_progress()
        self.sidebar.model.record_info(None, event.message)

    def _model_loaded(self, info: ModelInfo) -> None:
        self.model_info = info
        self.sub_title = info.name
        self.status.hide_progress()
        self.status.state = f"ready · {info.name}"
        banner = self.query_one(Banner)
        banner.remove_class("-error")
        banner.show(runtime.demo_label(info) if info.is_demo else "")
        self.sidebar.model.record_info(info)
        self.refresh_adapters()  # checked against this model (app_adapters.py)
        self.after_model_loaded(info)  # remembered as recently used (app_models.py)
        self.poll_memory()

    def _load_failed(self, message: str) -> None:
        self.status.hide_progress()
        self.status.state = "no model loaded"
        banner = self.query_one(Banner)
        banner.add_class("-error")
        banner.show(f"The model could not be loaded: {message}")
        self.sidebar.model.record_info(None, "not loaded")

    @property
    def model_ready(self) -> bool:
        return self.model_info is not None

    @property
    def load_finished(self) -> bool:
        """The load has ended, with a model or with an error."""
        return self._load_finished.is_set()

    # -- memory, when idle ---------------------------------------------------------------
    def poll_memory(self) -> None:
        if not self.engine.busy and not self.meters_frozen:
            self._read_memory()

    @work(exclusive=True, group="memory", exit_on_error=False, description="read memory")
    async def _read_memory(self) -> None:
        final = await self.engine.memory().result()
        if isinstance(final, Result) and isinstance(final.value, MemoryReading):
            self.sidebar.memory.record(final.value)

    # -- sending and streaming -----------------------------------------------------------
    def conversation(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.messages

    @on(PromptBox.Submitted)
    async def _submitted(self, event: PromptBox.Submitted) -> None:
        if self.replying:
            self.notify("A reply is still being written: press Esc to stop it first.",
                        severity="warning")
            return
        event.prompt_box.remember(event.text)
        event.prompt_box.clear()
        self.messages.append({"role": "user", "content": event.text})
        await self.chat.add_user(event.text)
        await self._start_reply()

    async def _start_reply(self) -> None:
        title = self.model_info.name if self.model_info else "assistant"
        turn = await self.chat.add_assistant(title)
        turn.note("reading the prompt…" if self.model_ready
                  else "waiting for the model to finish loading…")
        self.replying = True
        self._stop_requested = False
        self.status.state = "reading the prompt…" if self.model_ready else self.status.state
        self.stream_reply(turn)

    @work(exclusive=True, group="reply", exit_on_error=False, description="stream the reply")
    async def stream_reply(self, turn: AssistantTurn) -> None:
        """Send the conversation (once the model has loaded) and stream the reply."""
        await self._load_finished.wait()
        if self._stop_requested:
            await self._finish_reply(turn, None)
            return
        stream = self.engine.chat(self.conversation(), self.params, ignore_eos=self.ignore_eos)
        throughput, memory = self.sidebar.throughput, self.sidebar.memory
        throughput.record_start()
        frames = asyncio.create_task(self._paint_frames(turn))
        final: TurnDone | Error | None = None
        try:
            async for batch in stream.batches():
                # Only record here (cheap): the screen changes in _paint_frames.
                token = prefill = None
                for event in batch:
                    if isinstance(event, TokenText):
                        turn.write(event.text)
                        token = event
                    elif isinstance(event, PrefillProgress):
                        prefill = event
                    elif isinstance(event, Memory) and not self.meters_frozen:
                        memory.record(event.reading)
                    elif isinstance(event, Notice):
                        self.notify(event.message, severity="warning", timeout=8)
                    elif isinstance(event, TurnDone | Error):
                        final = event
                if prefill is not None:
                    throughput.record_prefill(prefill.done, prefill.total)
                    if not token and not turn.text:
                        turn.note(f"reading the prompt: {prefill.done}/{prefill.total} tokens")
                        self.status.state = "reading the prompt…"
                if token is not None:
                    if throughput.generated == 0:  # the first text of the reply
                        turn.note("")
                        self.status.state = "writing…"
                    throughput.record_tokens(token.generated, token.decode_tps)
        finally:
            frames.cancel()
            if final is None:  # the worker was cancelled (the app is closing)
                stream.cancel_flag.set()
        await self._finish_reply(turn, final)

    async def _paint_frames(self, turn: AssistantTurn) -> None:
        """Put what arrived on screen, as often as the pacer allows (see widgets/pacer.py)."""
        self.sidebar.paced = True
        self.prompt.cursor_blink = False  # no blinking frames while the model writes
        self.pacer.start()
        try:
            while True:
                await asyncio.sleep(self.pacer.interval)
                await turn.flush()
                self.sidebar.tick()
                self.pacer.measure(self.sidebar.throughput.decode_tps)
        finally:
            self.sidebar.paced = False
            self.prompt.cursor_blink = True

    async def _finish_reply(self, turn: AssistantTurn, final: TurnDone | Error | None) -> None:
        self.sidebar.throughput.streaming = False
        self.replying = False
        ready = f"ready · {self.model_info.name}" if self.model_info else "no model loaded"
        if isinstance(final, TurnDone) and (final.text or final.stats.generated_tokens):
            self.messages.append({"role": "assistant", "content": final.text})
            self.sidebar.throughput.record_done(final.stats)
            self.sidebar.model.record_context(final.stats.context_tokens)
            await turn.finish(final.stats)
            self.note_turn_adapter(turn, final.stats)  # app_adapters.py
            self.status.state = ready
            self.after_turn(final)  # autosave (app_sessions.py)
            return
        # Nothing came back: take the message out of the conversation, give its text back.
        if isinstance(final, Error):
            why = f"Not sent: {final.message}"
            self.notify(final.message, title="Not sent", severity="error", timeout=12)
        else:
            why = "Stopped before the reply began."
        await turn.finish(error=why)
        text = self.messages.pop()["content"] if self.messages else ""
        await self.chat.remove_turns(2)
        self._give_back(text)
        self.status.state = f"{why} Your message is back in the prompt box."

    def _give_back(self, text: str) -> None:
        """Put ``text`` in the prompt box without losing what is already typed there."""
        if not text:
            return
        if self.prompt.text.strip():
            self.prompt.remember(self.prompt.text)
        self.prompt.set_text(text)
        self.prompt.focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place where a worker's unexpected failure reaches the user."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            self.notify(f"{event.worker.description} failed: {type(error).__name__}: {error}",
                        title="Unexpected error", severity="error", timeout=15)

    # -- actions -------------------------------------------------------------------------
    def _refuse_while_replying(self, what: str) -> bool:
        if self.replying:
            self.notify(f"Stop the reply first (Esc) to {what}.", severity="warning")
        return self.replying

    def action_cancel_reply(self) -> None:
        if self.replying:
            self._stop_requested = True
            self.engine.cancel()
            self.status.state = "stopping…"

    async def action_regenerate(self) -> None:
        if self._refuse_while_replying("regenerate"):
            return
        if not self.messages or self.messages[-1]["role"] != "assistant":
            self.notify("There is no reply to regenerate yet.", severity="warning")
            return
        self.messages.pop()
        await self.chat.remove_turns(1)
        await self._start_reply()

    async def action_edit_last(self) -> None:
        if self._refuse_while_replying("edit the last message"):
            return
        if len(self.messages) < 2 or self.messages[-2]["role"] != "user":
            self.notify("There is no message to edit yet.", severity="warning")
            return
        self.messages.pop()
        text = self.messages.pop()["content"]
        await self.chat.remove_turns(2)
        self._give_back(text)
        self.status.state = "editing your last message: Enter sends it again"

    def action_copy_last(self) -> None:
        replies = [m["content"] for m in self.messages if m["role"] == "assistant"]
        if not replies:
            self.notify("There is no reply to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(replies[-1])
        self.notify(f"Copied the last reply ({len(replies[-1])} characters).")

    async def action_new_chat(self) -> None:
        if self._refuse_while_replying("start a new conversation"):
            return
        self.leave_session()  # the next reply starts a new session (app_sessions.py)
        self.messages.clear()
        await self.chat.clear()
        self.engine.reset()
        self.sidebar.model.record_context(0)
        self.prompt.focus()
        self.status.state = "new conversation"

    def action_settings(self) -> None:
        self.push_screen(SettingsScreen(self.system_prompt, self.params), self._apply_settings)

    def _apply_settings(self, result: SettingsResult | None) -> None:
        if result is None:
            return
        self.params = result.params
        self.system_prompt = result.system_prompt
        if result.save_as_default:
            self._save_config(replace(self.config, sampling=result.params,
                                      system_prompt=result.system_prompt),
                              "sampling and system prompt saved as defaults")
        else:
            self.notify("Settings applied to this conversation.")

    def action_help(self) -> None:
        display = {key.strip(): self.get_key_display(Binding(key.strip(), ""))
                   for b in all_bindings()
                   for key in self.keymap.get(b.id or "", b.key).split(",")}
        self.push_screen(HelpScreen(key_rows(self.keymap, display.items())))

    def action_toggle_sidebar(self) -> None:
        self.sidebar.display = not self.sidebar.display

    def freeze_meters(self) -> None:
        """Stop live meter updates (for screenshots that must not change between runs)."""
        self.meters_frozen = True
        self.sidebar.freeze()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for binding in APP_BINDINGS:
            if binding.action in _BUILTIN_COMMANDS or binding.id not in _COMMAND_TITLES:
                continue
            keys = self.keymap.get(binding.id, binding.key)
            yield SystemCommand(_COMMAND_TITLES[binding.id],
                                f"{HELP_TEXT[binding.id]} ({keys})",
                                getattr(self, f"action_{binding.action}"))

    # -- config --------------------------------------------------------------------------
    def _remember_theme(self, theme: Any) -> None:
        name = getattr(theme, "name", str(theme))
        if name != self.config.theme:
            self._save_config(replace(self.config, theme=name), f"theme {name} remembered")

    def _save_config(self, config: Config, done: str) -> None:
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


def make_args(argv: list[str] | None = None, **overrides: Any) -> argparse.Namespace:
    """The app's arguments as the ``workbench`` command would parse them, plus overrides."""
    from .cli import build_parser

    args = build_parser().parse_args(argv or [])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def run_app(args: argparse.Namespace) -> int:
    app = WorkbenchApp(args)
    try:
        app.run()
    finally:
        app.engine.close()
    return app.return_code or 0
