"""The chat's turns: what the user wrote, and replies streamed as Markdown.

A reply is streamed through Textual's ``MarkdownStream`` (``Markdown.get_stream``): text is
queued as it arrives (``write``, cheap: the pieces are kept, the reply is not rebuilt per
token) and handed to the stream once per frame (``flush``, called by the paced streamer,
see ``tui/streamer.py``), so however fast the model is, the Markdown widget sees a few
appends a second, each one parsing only the last block, never the whole reply again. The
scroll container is anchored, so it follows the reply until the user scrolls up.

Markdown (and its parser) is imported when the first reply is shown, not before the first
frame: the empty chat does not need it.

A reasoning model's ``<think>`` text streams into the turn's ``ReasoningBlock``
(``widgets/reasoning.py``) above the answer; with the probability view on, the turn keeps
each ``TokenLogprob`` and shows the shaded ``TokenView`` (``widgets/tokens.py``) in place of
the Markdown. Each turn knows its message's index in the conversation and which branch it
is (``‹k/n›`` in its title). The list of turns is ``ChatView`` (``widgets/chat_view.py``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ...formatting import turn_summary
from .reasoning import ReasoningBlock, reasoning_title
from .tokens import OFF, TokenView
from .visible import visible

if TYPE_CHECKING:
    from textual.widgets import Markdown
    from textual.widgets.markdown import MarkdownStream

    from engine import TokenLogprob, TurnStats


class UserTurn(Static):
    """What the user wrote, shown as typed (no markup, no Markdown)."""

    def __init__(self, text: str) -> None:
        super().__init__(visible(text), markup=False, classes="turn user-turn")
        self.text = text
        self.title = "you"
        self.index = -1  # the message's index in the conversation (-1: not known)
        self.branch = (1, 1)  # (k, n): branch k of n at this message
        self.border_title = self.title

    def set_branch(self, k: int, n: int) -> None:
        self.branch = (k, n)
        self.border_title = branch_title(self.title, k, n)


def branch_title(title: str, k: int, n: int) -> str:
    """A turn's title with ``‹2/3›`` where it has siblings (other branches)."""
    return f"{title}  ‹{k}/{n}›" if n > 1 else title


class AssistantTurn(Vertical):
    """One reply: the reasoning (if any) in a collapsible block, a Markdown body that grows
    while streaming (or, with the probability view on, its shaded tokens), a stats line."""

    def __init__(self, title: str) -> None:
        super().__init__(classes="turn assistant-turn")
        self.title = title
        self.border_title = title
        self.index = -1  # the reply's index in the conversation (-1: not known)
        self.branch = (1, 1)
        self._pieces: list[str] = []  # the answer so far, as it arrived (joined when read)
        self._thoughts: list[str] = []  # the reasoning so far
        self.done = False
        self.cancelled = False
        self.stats: TurnStats | None = None
        self.first_text_at = 0.0  # perf_counter when the first text arrived
        self.displayed_at = 0.0  # perf_counter when the whole reply was on screen
        self._pending: list[str] = []
        self._pending_thoughts: list[str] = []
        self._stream: MarkdownStream | None = None
        self.reasoning_tokens = 0  # live, while the reasoning streams
        self._thinking_since = 0.0
        self._thinking_s = 0.0
        self._answer_began = False
        self.tokens: list[TokenLogprob] = []  # with the probability view: every token
        self.token_mode = OFF
        self._tokens_changed = False

    def compose(self) -> ComposeResult:
        from .reply_markdown import reply_markdown

        yield reply_markdown("reply")
        view = TokenView(self.tokens)
        view.display = False
        yield view
        yield Static("", classes="turn-stats", markup=False)

    @property
    def markdown(self) -> Markdown:
        from textual.widgets import Markdown

        return self.query_one(".reply", Markdown)

    @property
    def token_view(self) -> TokenView:
        return self.query_one(TokenView)

    @property
    def reasoning_block(self) -> ReasoningBlock | None:
        found = self.query(ReasoningBlock)
        return found.first() if found else None

    @property
    def text(self) -> str:
        """The answer so far (the pieces are joined once per read, not once per token)."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def reasoning(self) -> str:
        """The reasoning so far (a ``<think>`` block's text, without the tags)."""
        if len(self._thoughts) > 1:
            self._thoughts[:] = ["".join(self._thoughts)]
        return self._thoughts[0] if self._thoughts else ""

    def set_branch(self, k: int, n: int) -> None:
        self.branch = (k, n)
        self.border_title = branch_title(self.title, k, n)

    def note(self, text: str) -> None:
        """Show ``text`` in the stats line (waiting for the model, prefill progress...)."""
        self.query_one(".turn-stats", Static).update(text)

    def write(self, text: str) -> None:
        """Queue answer text; it reaches the screen with the next flush (cheap, no await)."""
        if not text:
            return
        if not self.first_text_at:
            self.first_text_at = time.perf_counter()
        self._pieces.append(text)
        self._pending.append(text)

    def think(self, text: str, generated: int) -> None:
        """Queue reasoning text (``generated``: the reply's tokens so far, for the count)."""
        if not text:
            return
        now = time.perf_counter()
        if not self.first_text_at:
            self.first_text_at = now
        if not self._thinking_since:
            self._thinking_since = now
        self._thinking_s = now - self._thinking_since
        self.reasoning_tokens = max(self.reasoning_tokens, generated)
        self._thoughts.append(text)
        self._pending_thoughts.append(text)

    def record_token(self, token: TokenLogprob) -> None:
        """One token's logprob and alternatives (the probability view was on); the
        end-of-sequence token that ended the reply is not part of its text."""
        if token.eos:
            return
        self.tokens.append(token)
        self._tokens_changed = True

    async def flush(self) -> None:
        """Hand the text queued since the last flush to the Markdown streams."""
        if self._pending_thoughts:
            block = self.reasoning_block
            if block is None:
                block = ReasoningBlock(collapsed=bool(self._pieces))
                await self.mount(block, before=self.markdown)
            text = visible("".join(self._pending_thoughts))
            self._pending_thoughts.clear()
            await block.append(text)
            block.title = reasoning_title(self.reasoning_tokens, self._thinking_s,
                                          live=not self._pieces)
        if self._tokens_changed and self.token_mode != OFF:
            self._tokens_changed = False
            self._show_mode()
        if not self._pending:
            return
        if not self._answer_began:
            self._answer_began = True
            block = self.reasoning_block
            if block is not None:  # the thinking is over: fold it away
                block.collapsed = True
                block.title = reasoning_title(self.reasoning_tokens, self._thinking_s)
        if self._stream is None:
            from textual.widgets import Markdown

            self._stream = Markdown.get_stream(self.markdown)
        text = visible("".join(self._pending))
        self._pending.clear()
        await self._stream.write(text)

    async def finish(self, stats: TurnStats | None = None, error: str | None = None) -> None:
        """Put the rest of the reply on screen, then the stats (or the error) under it."""
        await self.flush()
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        block = self.reasoning_block
        if block is not None:
            await block.stop()
        self.displayed_at = time.perf_counter()
        self.done = True
        if self.token_mode != OFF:
            self._show_mode()
        if error is not None:
            self.add_class("-error")
            self.note(error)
        elif stats is not None:
            self.show_stats(stats)

    def show_stats(self, stats: TurnStats) -> None:
        self.stats = stats
        self.cancelled = stats.finish_reason == "cancelled"
        self.set_class(self.cancelled, "-cancelled")
        if stats.reasoning_tokens:  # the answer's numbers; the reasoning's are on its block
            answer = replace(stats, generated_tokens=max(
                0, stats.generated_tokens - stats.reasoning_tokens))
            self.note(turn_summary(answer).replace(" tokens", " answer tokens", 1))
        else:
            self.note(turn_summary(stats))
        block = self.reasoning_block
        if block is not None and (stats.reasoning_tokens or stats.reasoning_s):
            block.title = reasoning_title(stats.reasoning_tokens, stats.reasoning_s)

    async def show_text(self, text: str, stats: TurnStats | None = None) -> None:
        """Show a whole reply at once (a restored conversation, a kept comparison): a
        reasoning block in it (``<think>`` or another model's markers) goes to its own block,
        folded."""
        from engine.reasoning import ends_a_block, split_reasoning

        thoughts, answer = split_reasoning(text, inside=ends_a_block(text))
        self._pieces[:] = [answer]
        self._thoughts[:] = [thoughts] if thoughts else []
        self.tokens.clear()  # a whole text: its tokens, if known, are given after
        self._pending.clear()
        self._pending_thoughts.clear()
        block = self.reasoning_block
        if thoughts:
            if block is None:
                block = ReasoningBlock(collapsed=True)
                await self.mount(block, before=self.markdown)
            await block.show(visible(thoughts))
            block.title = reasoning_title(stats.reasoning_tokens if stats else 0,
                                          stats.reasoning_s if stats else None)
        elif block is not None:
            await block.remove()
        await self.markdown.update(visible(answer))
        if stats is not None:
            self.show_stats(stats)

    def toggle_reasoning(self) -> bool:
        """Open or close the reasoning block; False when there is none."""
        block = self.reasoning_block
        if block is None:
            return False
        block.collapsed = not block.collapsed
        return True

    # -- the probability view -------------------------------------------------------------
    def set_token_mode(self, mode: str) -> None:
        """Show the shaded tokens (``probability`` / ``entropy``) or the Markdown (``off``)."""
        self.token_mode = mode
        self._show_mode()

    def _show_mode(self) -> None:
        view = self.token_view
        shaded = self.token_mode != OFF and bool(self.tokens)
        view.mode = self.token_mode
        view.display = shaded
        self.markdown.display = not shaded
        if shaded:
            view.refresh(layout=True)
