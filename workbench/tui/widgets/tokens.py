"""A reply shown token by token, each shaded by how sure the model was of it.

With the probability view on (F9: off → probability → entropy), replies are asked for with
their tokens' logprobs (``TokenLogprob``: the chosen token's logprob, the entropy of the
distribution it was drawn from, the top alternatives) and the reply's Markdown gives way to
this view: plain text, one span per token, its background from the theme (``$*-muted``,
component classes below), and a legend under it. A token cursor (left/right on the selected
reply) picks one; Enter shows its alternatives (``screens/token_choices.py``). Painting is a
rebuild of one ``Text`` per frame: fine for a view that is about reading, not speed (with
the view off nothing here runs and nothing is asked of the engine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from engine.reasoning import CLOSE

if TYPE_CHECKING:
    from engine import TokenLogprob

OFF, PROBABILITY, ENTROPY = "off", "probability", "entropy"
MODES = (OFF, PROBABILITY, ENTROPY)
LOGPROBS_K = 5  # alternatives asked for per token while the view is on

# Lower bounds of the shades 0..3 (0: no shade). Probability: the chosen token's; entropy:
# of the distribution, in nats (0 = certain; ln 5 ≈ 1.6 is "five equal choices").
PROBABILITY_LEVELS = (0.9, 0.6, 0.3)
ENTROPY_LEVELS = (0.5, 1.5, 3.0)
LEGENDS = {
    PROBABILITY: ("probability", ("≥90%", "60–90%", "30–60%", "<30%")),
    ENTROPY: ("entropy (nats)", ("<0.5", "0.5–1.5", "1.5–3", "≥3")),
}


def next_mode(mode: str) -> str:
    return MODES[(MODES.index(mode) + 1) % len(MODES)] if mode in MODES else PROBABILITY


def level(token: TokenLogprob, mode: str) -> int:
    """The token's shade: 0 (sure) to 3 (unsure)."""
    if mode == ENTROPY:
        return sum(token.entropy >= bound for bound in ENTROPY_LEVELS)
    p = math.exp(token.logprob)
    return sum(p < bound for bound in PROBABILITY_LEVELS)


def answer_start(tokens: Sequence[TokenLogprob]) -> int:
    """Where the answer's tokens begin: after the one that closes a ``<think>`` block (0
    when there is none; the reasoning is shown in its own block)."""
    text = ""
    for i, token in enumerate(tokens):
        text += token.text
        if CLOSE in text:
            return i + 1
    return 0 if "<think>" not in text else len(tokens)


def percent(logprob: float) -> str:
    p = 100 * math.exp(logprob)
    return f"{p:.0f}%" if p >= 1 else "<1%"


class TokenView(Widget):
    """One reply's answer tokens, shaded, with a cursor and the legend."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "tokens--1", "tokens--2", "tokens--3", "tokens--cursor", "tokens--legend",
    }
    DEFAULT_CSS = """
    TokenView { height: auto; }
    TokenView > .tokens--1 { background: $primary-muted; }
    TokenView > .tokens--2 { background: $warning-muted; }
    TokenView > .tokens--3 { background: $error-muted; }
    TokenView > .tokens--cursor { text-style: reverse bold; }
    TokenView > .tokens--legend { color: $text-muted; }
    """

    def __init__(self, tokens: list[TokenLogprob]) -> None:
        super().__init__(classes="tokens")
        self.tokens = tokens  # the turn's list: it grows while the reply streams
        self.mode = PROBABILITY
        self.cursor: int | None = None  # a position in ``tokens`` (None: no cursor)

    @property
    def start(self) -> int:
        return answer_start(self.tokens)

    def positions(self) -> list[int]:
        """The positions the cursor may stop at: the answer's tokens with something visible."""
        return [i for i in range(self.start, len(self.tokens)) if self.tokens[i].text.strip()]

    def move(self, step: int) -> int | None:
        """Move the cursor ``step`` visible tokens (when there is none yet: to the first
        token going right, the last going left)."""
        stops = self.positions()
        if not stops:
            self.cursor = None
        elif self.cursor not in stops:
            self.cursor = stops[0] if step > 0 else stops[-1]
        else:
            at = stops.index(self.cursor) + step
            self.cursor = stops[min(max(at, 0), len(stops) - 1)]
        self.refresh(layout=True)
        return self.cursor

    def shade_style(self, shade: int) -> Style:
        return self.get_component_rich_style(f"tokens--{shade}") if shade else Style()

    def render(self) -> Text:
        from .visible import visible

        text = Text(end="")
        cursor = self.get_component_rich_style("tokens--cursor")
        for i in range(self.start, len(self.tokens)):
            token = self.tokens[i]
            style = self.shade_style(level(token, self.mode))
            if i == self.cursor:
                style += cursor
            text.append(visible(token.text), style)
        text.rstrip()
        text.append("\n\n")
        text.append_text(self.legend())
        return text

    def legend(self) -> Text:
        name, labels = LEGENDS.get(self.mode, LEGENDS[PROBABILITY])
        muted = self.get_component_rich_style("tokens--legend")
        legend = Text(f"{name}: ", style=muted, no_wrap=True, overflow="ellipsis")
        for shade, label in enumerate(labels):
            legend.append(f" {label} ", self.shade_style(shade) if shade else muted)
            legend.append(" ")
        for hint in ("· ←/→, Enter: alternatives", "· ←/→, Enter"):
            if not self.size.width or legend.cell_len + len(hint) <= self.size.width:
                legend.append(hint, style=muted)
                break
        return legend
