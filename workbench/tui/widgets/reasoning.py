"""A reasoning model's thinking, in a block of its own above the answer.

Qwen3, DeepSeek-R1 distills and the like write a ``<think>`` block before they answer; the
engine tells its text apart (``TokenText.kind == "reasoning"``, tags removed). The block is
a ``Collapsible``: open while the model thinks, so the thinking can be watched, and closed
once the answer begins (Enter on its title, or on the selected reply, opens it again). Its
title counts the thinking's tokens and time, live while it streams and from the turn's
``TurnStats`` (``reasoning_tokens``, ``reasoning_s``) once the reply is done. The text goes
through a Markdown stream, as the answer's does: a few appends a second, never a rebuild.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.widgets import Collapsible

from ...formatting import seconds

if TYPE_CHECKING:
    from textual.widgets import Markdown
    from textual.widgets.markdown import MarkdownStream


def reasoning_title(tokens: int, elapsed: float | None, *, live: bool = False) -> str:
    """``Thinking… · 120 tokens · 2.1 s`` while it streams, ``Reasoning · 120 tokens · 2.1 s``
    after (no count or time when they are not known: a reply loaded without its stats)."""
    parts = ["Thinking…" if live else "Reasoning"]
    if tokens:
        parts.append(f"{tokens} token{'s' if tokens != 1 else ''}")
    if elapsed:
        parts.append(seconds(elapsed))
    return " · ".join(parts)


class ReasoningBlock(Collapsible):
    """The collapsible thinking of one reply."""

    DEFAULT_CSS = """
    ReasoningBlock {
        height: auto;
        padding: 0 0 0 1;
        margin: 0;
        border-top: none;
        background: transparent;
    }
    ReasoningBlock Contents {
        padding: 0 0 0 2;
        color: $text-muted;
    }
    ReasoningBlock Markdown {
        margin: 0;
        padding: 0;
        background: transparent;
        color: $text-muted;
    }
    """

    def __init__(self, *, collapsed: bool) -> None:
        from .reply_markdown import reply_markdown

        super().__init__(reply_markdown("reasoning-text"),
                         title=reasoning_title(0, None, live=not collapsed),
                         collapsed=collapsed, classes="reasoning")
        self._stream: MarkdownStream | None = None

    @property
    def markdown(self) -> Markdown:
        from textual.widgets import Markdown

        return self.query_one(Markdown)

    async def append(self, text: str) -> None:
        """Stream ``text`` into the block (once per frame, from the turn's flush)."""
        if self._stream is None:
            from textual.widgets import Markdown

            self._stream = Markdown.get_stream(self.markdown)
        await self._stream.write(text)

    async def stop(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None

    async def show(self, text: str) -> None:
        """The whole thinking at once (a reply loaded from a session)."""
        await self.markdown.update(text)
