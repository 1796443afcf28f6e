"""A reply's text labelled as it streams: reasoning, answer and tool-call segments.

mlx-lm 0.32.2 knows each tokenizer's own markers (``think_start``/``think_end``, including
``<longcat_think>`` and ``<|think:start|>``; ``tool_call_start``/``tool_call_end`` and the
``tool_parser`` inferred from the chat template) and splits streamed text with
``make_text_state_machine(tokenizer)``, the way its server labels ``reasoning_content`` and
``tool_calls``. This module drives that machine instead of a hand-written ``<think>``
splitter, so every model mlx-lm knows gets its reasoning and tool calls told apart.

Only the labelling is ours: the token ids and ``TurnDone.text`` (the reply as written,
markers kept) are untouched, so exactness against mlx-lm is not at stake. Two choices on
top of mlx-lm's labels: the newlines that open a segment after a marker are trimmed (the
blank lines between ``</think>`` and the answer), and text still held back when the reply
ends is given out (mlx-lm's server drops it on ``finish_reason == "stop"``; a reply must not
lose text). Text in states other than normal, reasoning and tool (a response format's
header) is not shown, as in mlx-lm's server. Engine thread; no UI imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .events import ToolCall
from .reasoning import ANSWER, REASONING, Piece, add_piece

TOOL = "tool"
KINDS = {"normal": ANSWER, "reasoning": REASONING, "tool": TOOL}  # mlx-lm's states, ours


def initial_state(tokenizer: Any, prompt: Sequence[int]) -> str:
    """The state a reply starts in, chosen as mlx-lm's server does: inside reasoning when the
    prompt's last think-start comes after its last think-end (the template opened the block),
    else normal; a response format's own initial state wins."""
    state = "normal"
    if tokenizer.has_thinking:
        prompt = list(prompt)
        if tokenizer.rfind_think_start(prompt) > tokenizer.rfind_think_end(prompt):
            state = "reasoning"
    return tokenizer.response_initial_state or state


class TextSegments:
    """Feed reply text as it arrives; get ``(kind, text)`` pieces back, markers removed.

    ``machine`` is an mlx-lm ``TextStateMachine``; ``state`` the current state's name
    ("normal", "reasoning", "tool"...); ``tool_texts`` the text of each finished tool call."""

    def __init__(self, machine: Any, initial: str = "normal") -> None:
        self._machine = machine.make_state(initial)
        self.state: str | None = initial
        self.tool_texts: list[str] = []
        self._tool = ""
        self._fresh = initial != "normal"  # a segment starts: trim its opening newlines

    @classmethod
    def for_turn(cls, tokenizer: Any, prompt: Sequence[int]) -> TextSegments:
        """Segments for a reply to ``prompt`` (the rendered prompt, before any forced start)."""
        from mlx_lm.generate import make_text_state_machine

        return cls(make_text_state_machine(tokenizer), initial_state(tokenizer, prompt))

    def feed(self, text: str) -> list[Piece]:
        from mlx_lm.generate import TextStateMachine

        self._machine, segments = TextStateMachine.split(self._machine, text)
        return self._label(segments)

    def flush(self) -> list[Piece]:
        """What is held back at the end of the reply (an unfinished marker is plain text)."""
        from mlx_lm.generate import TextStateMachine

        self._machine, held, state = TextStateMachine.flush(self._machine)
        pieces = self._label([(state, held)])
        if self.state == "tool":
            self._close_tool()
        return pieces

    def _label(self, segments: list[tuple[str | None, str]]) -> list[Piece]:
        pieces: list[Piece] = []
        last = len(segments) - 1
        for i, (state, text) in enumerate(segments):
            self.state = state
            self._emit(pieces, state, text)
            if i < last:  # a marker ends this segment
                if state == "tool":
                    self._close_tool()
                self._fresh = True
        return pieces

    def _emit(self, pieces: list[Piece], state: str | None, text: str) -> None:
        kind = KINDS.get(state or "")
        if kind is None or not text:
            return
        if state == "tool":
            self._tool += text
        if self._fresh:
            text = text.lstrip("\n")
            if not text:
                return
            self._fresh = False
        add_piece(pieces, kind, text)

    def _close_tool(self) -> None:
        self.tool_texts.append(self._tool)
        self._tool = ""


def parse_tool_calls(tokenizer: Any, texts: Sequence[str],
                     tools: Sequence[Any] | None = None) -> tuple[ToolCall, ...]:
    """The calls in each tool-call text, read by the tokenizer's own ``tool_parser``. A text
    the parser cannot read (a reply cut off mid-call) stays as a call without a name."""
    parser = getattr(tokenizer, "tool_parser", None)
    calls: list[ToolCall] = []
    for text in texts:
        parsed = _parse(parser, text, tools)
        if not parsed:
            calls.append(ToolCall(name="", arguments=None, text=text))
        for call in parsed:
            calls.append(ToolCall(name=str(call.get("name", "")),
                                  arguments=call.get("arguments"), text=text))
    return tuple(calls)


def _parse(parser: Any, text: str, tools: Sequence[Any] | None) -> list[dict[str, Any]]:
    if parser is None:
        return []
    try:
        parsed = parser(text, tools)
    except Exception:  # noqa: BLE001 - any parser's failure is "not a readable call"
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [item for item in items if isinstance(item, dict)]
