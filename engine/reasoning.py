"""Reasoning models: the ``<think>...</think>`` block of a reply, told apart as it streams.

Qwen3, DeepSeek-R1 distills and the like write their reasoning between ``<think>`` and
``</think>`` before the answer (or their template opens the block in the prompt, so the
reply starts inside it). ``ReasoningSplitter`` cuts a stream of text pieces into reasoning
and answer pieces, tags removed, whatever the token boundaries: a tag that arrives in parts
is held back until it is whole (or proves not to be a tag). Plain text, no MLX.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
REASONING, ANSWER = "reasoning", "answer"
Piece = tuple[str, str]  # (REASONING | ANSWER, text)


def _partial_tail(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Feed reply text as it arrives; get ``(kind, text)`` pieces back.

    ``inside``: the reply starts inside a reasoning block (the template opened it). An
    opening tag counts only before any answer text (a reply may quote the tag later)."""

    def __init__(self, inside: bool = False) -> None:
        self.inside = inside
        self.had_reasoning = inside
        self.closed = False  # a reasoning block has ended: the rest is the answer
        self._held = ""
        self._answer_started = self._reasoning_started = False

    def feed(self, text: str) -> list[Piece]:
        pieces: list[Piece] = []
        buf, self._held = self._held + text, ""
        while buf:
            if self.inside:
                at = buf.find(CLOSE)
                if at >= 0:
                    self._emit(pieces, REASONING, buf[:at])
                    buf = buf[at + len(CLOSE):]
                    self.inside, self.closed = False, True
                    continue
                keep = _partial_tail(buf, CLOSE)
                self._emit(pieces, REASONING, buf[:len(buf) - keep])
                self._held = buf[len(buf) - keep:]
                break
            if not self._answer_started and not self.closed:
                stripped = buf.lstrip()
                if stripped.startswith(OPEN):
                    buf = stripped[len(OPEN):]
                    self.inside = self.had_reasoning = True
                    continue
                if OPEN.startswith(stripped):  # maybe the tag, still arriving
                    self._held = buf
                    break
            self._emit(pieces, ANSWER, buf)
            break
        return pieces

    def flush(self) -> list[Piece]:
        """What is held back at the end of the reply (an unfinished tag is plain text)."""
        held, self._held = self._held, ""
        pieces: list[Piece] = []
        self._emit(pieces, REASONING if self.inside else ANSWER, held)
        return pieces

    def _emit(self, pieces: list[Piece], kind: str, text: str) -> None:
        if not text:
            return
        if kind == REASONING and not self._reasoning_started:
            text = text.lstrip("\n")
            if not text:
                return
            self._reasoning_started = True
        if kind == ANSWER:
            if not self._answer_started and self.had_reasoning:
                text = text.lstrip("\n")  # the blank lines between the block and the answer
                if not text:
                    return
            self._answer_started = True
        if pieces and pieces[-1][0] == kind:
            pieces[-1] = (kind, pieces[-1][1] + text)
        else:
            pieces.append((kind, text))


def split_reasoning(text: str, inside: bool = False) -> tuple[str, str]:
    """A whole reply's ``(reasoning, answer)``."""
    splitter = ReasoningSplitter(inside)
    parts = {REASONING: "", ANSWER: ""}
    for kind, piece in [*splitter.feed(text), *splitter.flush()]:
        parts[kind] += piece
    return parts[REASONING], parts[ANSWER]


def prompt_opens_reasoning(prompt_tail: str) -> bool:
    """Whether a rendered prompt ends inside an open reasoning block (DeepSeek-R1 style)."""
    tail = prompt_tail.rstrip()
    return tail.endswith(OPEN)
