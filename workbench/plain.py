"""``workbench chat --plain``: a line-mode chat for terminals and pipes.

On a terminal it reads with prompt-toolkit (history file, Alt+Enter for a new line, Ctrl+C
cancels the reply and not the program) and prints with rich. When stdin is not a terminal
it reads one message per line. With ``--jsonl`` every stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine import (
    Engine,
    Error,
    Notice,
    PrefillProgress,
    Result,
    SamplingParams,
    TokenText,
    TurnDone,
    TurnStats,
)
from engine.errors import BadSetting, WorkbenchError
from engine.sampling import parse_value, preset

from . import paths
from .generate import format_stats
from .runtime import choose_model, demo_label, load_blocking, setup, start_engine


@dataclass
class Command:
    name: str
    usage: str
    help: str
    run: Callable[[str], tuple[bool, str]]  # argument text -> (ok, message)


class Output:
    """Where answers go: rich text for people, one JSON object per line for programs."""

    def __init__(self, jsonl: bool) -> None:
        self.jsonl = jsonl
        if not jsonl:
            from rich.console import Console

            self.console = Console(highlight=False)
            self.err = Console(stderr=True, highlight=False)

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def command(self, name: str, ok: bool, message: str) -> None:
        if self.jsonl:
            self.emit({"command": name, "ok": ok, "message": message})
        else:
            self.console.print(message, style="cyan" if ok else "bold red", markup=False)

    def notice(self, message: str) -> None:
        if self.jsonl:
            self.emit({"notice": message})
        else:
            self.err.print(f"note: {message}", style="yellow", markup=False)

    def error(self, message: str, kind: str = "error") -> None:
        if self.jsonl:
            self.emit({"error": message, "kind": kind})
        else:
            self.err.print(f"error: {message}", style="bold red", markup=False)

    def reply_piece(self, text: str) -> None:
        if not self.jsonl:
            self.console.print(text, end="", markup=False, soft_wrap=True)

    def reply_done(self, text: str, stats: TurnStats, extra: dict[str, Any]) -> None:
        if self.jsonl:
            self.emit({"role": "assistant", "content": text,
                       "finish_reason": stats.finish_reason, "stats": stats.to_dict(), **extra})
        else:
            self.console.print()
            mark = " (cancelled)" if stats.finish_reason == "cancelled" else ""
            self.console.print(format_stats(stats) + mark, style="dim", markup=False)


class PlainChat:
    """The conversation, the settings and the slash commands; no terminal code here."""

    def __init__(self, engine: Engine, out: Output, params: SamplingParams,
                 system: str | None) -> None:
        self.engine = engine
        self.out = out
        self.params = params
        self.system = system or ""
        self.messages: list[dict[str, str]] = []
        self.last_stats: TurnStats | None = None
        self.running = True
        self.commands: dict[str, Command] = {}
        self.reply_extra: Callable[[], dict[str, Any]] = dict
        for cmd in (
            Command("system", "/system TEXT", "set the system prompt (empty clears it)",
                    self._cmd_system),
            Command("reset", "/reset", "start a new conversation", self._cmd_reset),
            Command("stats", "/stats", "statistics of the last reply", self._cmd_stats),
            Command("set", "/set NAME VALUE", "change a sampling value (temperature, top_p, "
                    "min_p, top_k, repetition_penalty, max_tokens, seed)", self._cmd_set),
            Command("preset", "/preset NAME", "precise, balanced, creative or code",
                    self._cmd_preset),
            Command("help", "/help", "this list", self._cmd_help),
            Command("quit", "/quit", "leave (Ctrl+D too)", self._cmd_quit),
        ):
            self.add_command(cmd)

    def add_command(self, command: Command) -> None:
        self.commands[command.name] = command

    # -- commands ------------------------------------------------------------------------
    def _cmd_system(self, arg: str) -> tuple[bool, str]:
        self.system = arg
        return True, "system prompt cleared" if not arg else "system prompt set"

    def _cmd_reset(self, _arg: str) -> tuple[bool, str]:
        self.messages.clear()
        self.engine.reset().wait()
        return True, "new conversation"

    def _cmd_stats(self, _arg: str) -> tuple[bool, str]:
        if self.last_stats is None:
            return False, "no reply yet"
        return True, format_stats(self.last_stats)

    def _cmd_set(self, arg: str) -> tuple[bool, str]:
        name, _, value = arg.partition(" ")
        if not name or not value.strip():
            return False, "usage: /set NAME VALUE, e.g. /set temperature 0.7"
        try:
            self.params = self.params.with_values(**{name: parse_value(name, value)})
        except BadSetting as exc:
            return False, str(exc)
        return True, f"{name} = {getattr(self.params, name)}"

    def _cmd_preset(self, arg: str) -> tuple[bool, str]:
        try:
            self.params = preset(arg.strip(), max_tokens=self.params.max_tokens)
        except BadSetting as exc:
            return False, str(exc)
        return True, f"preset {arg.strip()}: " + ", ".join(
            f"{k}={v}" for k, v in self.params.to_dict().items())

    def _cmd_help(self, _arg: str) -> tuple[bool, str]:
        width = max(len(c.usage) for c in self.commands.values())
        lines = [f"{c.usage:<{width}}  {c.help}" for c in self.commands.values()]
        return True, "\n".join(lines)

    def _cmd_quit(self, _arg: str) -> tuple[bool, str]:
        self.running = False
        return True, "bye"

    # -- input ---------------------------------------------------------------------------
    def handle_line(self, line: str) -> None:
        text = line.rstrip("\n")
        if not text.strip():
            return
        if text.startswith("/") and not text.startswith("//"):
            name, _, arg = text[1:].partition(" ")
            command = self.commands.get(name.strip().lower())
            if command is None:
                self.out.command(name, False, f"unknown command /{name}: /help lists them")
                return
            try:
                ok, message = command.run(arg.strip())
            except WorkbenchError as exc:
                ok, message = False, str(exc)
            self.out.command(command.name, ok, message)
            return
        if text.startswith("//"):
            text = text[1:]  # "//x" sends "/x"
        self.send(text)

    def conversation(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def send(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        stream = self.engine.chat(self.conversation(), self.params)
        final: Any = None
        events: Iterator[Any] = iter(stream)
        while final is None:
            try:
                for event in events:
                    if isinstance(event, TokenText):
                        self.out.reply_piece(event.text)
                    elif isinstance(event, Notice):
                        self.out.notice(event.message)
                    elif isinstance(event, TurnDone | Error):
                        final = event
                    elif isinstance(event, PrefillProgress | Result):
                        pass
            except KeyboardInterrupt:  # Ctrl+C: stop the reply, keep the program
                self.engine.cancel()
                events = iter(stream)
        if isinstance(final, Error):
            self.messages.pop()  # the turn did not happen; the text is in the history
            self.out.error(final.message, final.kind)
            return
        self.last_stats = final.stats
        self.messages.append({"role": "assistant", "content": final.text})
        self.out.reply_done(final.text, final.stats, self.reply_extra())


def _interactive_lines(out: Output) -> Iterator[str]:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    history = paths.history_file()
    history.parent.mkdir(parents=True, exist_ok=True)
    keys = KeyBindings()

    @keys.add("escape", "enter")  # Alt+Enter (or Esc then Enter): a new line
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    session: PromptSession[str] = PromptSession(history=FileHistory(str(history)),
                                                key_bindings=keys, multiline=False)
    while True:
        try:
            yield session.prompt("you> ", prompt_continuation="...  ")
        except KeyboardInterrupt:  # Ctrl+C at the prompt clears the line
            continue
        except EOFError:  # Ctrl+D
            return


def _piped_lines() -> Iterator[str]:
    for line in sys.stdin:
        yield line.rstrip("\n")


def run_plain(args: argparse.Namespace) -> int:
    config, params = setup(args)
    out = Output(args.jsonl)
    choice = choose_model(args, config, lambda msg: print(msg, file=sys.stderr))
    system = args.system if args.system is not None else (config.system_prompt or None)
    with start_engine(args, config) as engine:
        loaded = load_blocking(engine, choice, quiet=args.jsonl)
        if isinstance(loaded, Error):
            out.error(loaded.message, loaded.kind)
            return 1
        if loaded.is_demo:
            out.notice(demo_label(loaded))
        chat = PlainChat(engine, out, params, system)
        interactive = sys.stdin.isatty() and not args.jsonl
        if interactive:
            out.command("help", True, f"{loaded.name} loaded. /help lists commands; Alt+Enter "
                        "adds a line; Ctrl+C stops a reply; Ctrl+D leaves.")
        lines = _interactive_lines(out) if interactive else _piped_lines()
        for line in lines:
            chat.handle_line(line)
            if not chat.running:
                break
    return 0
