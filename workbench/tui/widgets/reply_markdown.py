"""The Markdown widget of replies and reasoning, with every line break kept.

A model's reply is not a Markdown document written for a renderer: a haiku, an address or a
list without bullets put one item a line, and CommonMark would join those lines into one
paragraph (a single newline is a "soft break", which Textual shows as a space). A rule of
the parser turns each soft break into a hard one, so the lines stay as the reply wrote them;
blank lines still separate paragraphs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.rules_core import StateCore
    from textual.widgets import Markdown


def _keep_line_breaks(state: StateCore) -> None:
    for token in state.tokens:
        for child in token.children or ():
            if child.type == "softbreak":
                child.type = "hardbreak"


def line_break_parser() -> MarkdownIt:
    from markdown_it import MarkdownIt

    parser = MarkdownIt("gfm-like")
    parser.core.ruler.push("keep_line_breaks", _keep_line_breaks)
    return parser


def reply_markdown(classes: str) -> Markdown:
    from textual.widgets import Markdown

    return Markdown(classes=classes, parser_factory=line_break_parser)
