"""Line mode's terminal side: where answers go (rich text or JSON lines) and where lines come
from (prompt-toolkit on a terminal, one message per line from a pipe)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from engine import TurnStats

from . import paths
from .formatting import format_stats


class Output:
    """Where answers go: rich text for people, one JSON object per line for programs."""

    def __init__(self, jsonl: bool) -> None:
        self.jsonl = jsonl
        if not jsonl:
            from rich.console import Console

            # Into a pipe or a file, a line stays one line (rich would wrap it at 80 columns).
            self.console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
            self.err = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())

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

    def reply_piece(self, text: str, kind: str = "answer") -> None:
        if not self.jsonl:
            self.console.print(text, end="", markup=False, soft_wrap=True,
                               style="dim italic" if kind == "reasoning" else None)

    def reply_done(self, text: str, stats: TurnStats, extra: dict[str, Any]) -> None:
        if self.jsonl:
            self.emit({"role": "assistant", "content": text,
                       "finish_reason": stats.finish_reason, "stats": stats.to_dict(), **extra})
        else:
            self.console.print()
            self.console.print(format_stats(stats), style="dim", markup=False)


def interactive_lines() -> Iterator[str]:
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


def piped_lines() -> Iterator[str]:
    for line in sys.stdin:
        yield line.rstrip("\n")
