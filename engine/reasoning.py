"""A reply's reasoning block told apart from its answer by text alone, without a tokenizer.

While the engine streams a reply it labels the text with mlx-lm's own state machine and
the tokenizer's markers (engine/text_state.py). What has no tokenizer at hand reads text
here: the faces, for replies saved in sessions (``split_reasoning``), and the test engine
that never imports MLX (``ReasoningSplitter``). Both know the reasoning markers mlx-lm knows
(``MARKERS``, the pairs of its ``_infer_thinking``), so a session from any reasoning model
shows its thinking apart. A marker that arrives in parts is held back until it is whole (or
proves not to be one). Plain text, no MLX.
"""

from __future__ import annotations

# mlx-lm 0.32.2's reasoning markers (tokenizer_utils._infer_thinking), most common first.
MARKERS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
    ("<|channel>thought", "<channel|>"),
    ("<|open|>think<|sep|>", "<|close|>think<|sep|>"),
)
OPEN, CLOSE = MARKERS[0]
REASONING, ANSWER = "reasoning", "answer"
Piece = tuple[str, str]  # (REASONING | ANSWER, text)


def markers_in(text: str) -> tuple[str, str]:
    """The reasoning markers ``text`` was written with (``<think>`` when it has none)."""
    for start, end in MARKERS:
        if start in text or end in text:
            return start, end
    return OPEN, CLOSE


def ends_a_block(text: str) -> bool:
    """Whether ``text`` closes a reasoning block it never opened (the template opened it)."""
    start, end = markers_in(text)
    return end in text and start not in text


def _partial_tail(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Feed reply text as it arrives; get ``(kind, text)`` pieces back.

    ``inside``: the reply starts inside a reasoning block (the template opened it). An
    opening marker counts only before any answer text (a reply may quote it later).
    ``markers``: the block's (start, end), ``<think>`` and ``</think>`` unless told."""

    def __init__(self, inside: bool = False, markers: tuple[str, str] = (OPEN, CLOSE)) -> None:
        self.open, self.close = markers
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
                at = buf.find(self.close)
                if at >= 0:
                    self._emit(pieces, REASONING, buf[:at])
                    buf = buf[at + len(self.close):]
                    self.inside, self.closed = False, True
                    continue
                keep = _partial_tail(buf, self.close)
                self._emit(pieces, REASONING, buf[:len(buf) - keep])
                self._held = buf[len(buf) - keep:]
                break
            if not self._answer_started and not self.closed:
                stripped = buf.lstrip()
                if stripped.startswith(self.open):
                    buf = stripped[len(self.open):]
                    self.inside = self.had_reasoning = True
                    continue
                if self.open.startswith(stripped):  # maybe the marker, still arriving
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
        add_piece(pieces, kind, text)


def add_piece(pieces: list[Piece], kind: str, text: str) -> None:
    """Append ``(kind, text)``, joined to the last piece when it is of the same kind."""
    if pieces and pieces[-1][0] == kind:
        pieces[-1] = (kind, pieces[-1][1] + text)
    else:
        pieces.append((kind, text))


def split_reasoning(text: str, inside: bool = False) -> tuple[str, str]:
    """A whole reply's ``(reasoning, answer)``, on the markers it was written with."""
    splitter = ReasoningSplitter(inside, markers_in(text))
    parts = {REASONING: "", ANSWER: ""}
    for kind, piece in [*splitter.feed(text), *splitter.flush()]:
        parts[kind] += piece
    return parts[REASONING], parts[ANSWER]
