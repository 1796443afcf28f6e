"""A bracketed paste that holds terminal escapes arrives as one paste, never as keys.

Textual's input parser (``textual._xterm_parser.XTermParser``) reads an ESC inside a
bracketed paste as the start of a key sequence: it then gives up after 32 characters and
reissues them as key presses, so the text behind an escape (``\\e[31m`` copied from a
coloured log) arrives as typed keys, its line breaks as Enter, and the message is sent at
once, scrambled. ``PasteSafeParser`` hides the ESC characters inside a paste from that parser
(each becomes ``_HIDDEN_ESC``, a Unicode noncharacter that no text holds) and drops the
escape sequences from the ``Paste`` it then gets; ``install`` makes the terminal drivers use
it. The prompt box cleans a paste again (``widgets.prompt.clean_paste``), so what is left
of a control character is shown, never run.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import events
from textual._xterm_parser import XTermParser
from textual.message import Message

from .widgets.prompt import drop_escapes

PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"
_HIDDEN_ESC = "\ufdd0"


class PasteSafeParser(XTermParser):
    """An ``XTermParser`` that keeps a bracketed paste whole, escapes and all."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__(debug)
        self._in_paste = False
        self._seen = ""  # the last characters passed on outside a paste (a split start)
        self._held = ""  # inside a paste: the start of what may be its end marker

    def feed(self, data: str) -> Iterable[Message]:
        if data:
            data = self._hide_escapes(data)
            if not data:
                return  # all of it held back: the rest of the end marker comes next
        for event in super().feed(data):
            if isinstance(event, events.Paste):
                event = events.Paste(drop_escapes(event.text.replace(_HIDDEN_ESC, "\x1b")))
            yield event

    def _hide_escapes(self, data: str) -> str:
        """``data`` with every ESC inside a paste (but its end marker's) hidden."""
        out: list[str] = []
        text = self._held + data
        self._held = ""
        while text:
            if not self._in_paste:
                seen = self._seen + text
                at = seen.find(PASTE_START)
                if at < 0:
                    out.append(text)
                    self._seen = seen[-(len(PASTE_START) - 1):]
                    break
                cut = at + len(PASTE_START) - len(self._seen)
                out.append(text[:cut])
                text, self._seen, self._in_paste = text[cut:], "", True
                continue
            at = text.find(PASTE_END)
            if at < 0:
                body, self._held = _split_partial_end(text)
                out.append(body.replace("\x1b", _HIDDEN_ESC))
                break
            out.append(text[:at].replace("\x1b", _HIDDEN_ESC) + PASTE_END)
            text, self._in_paste = text[at + len(PASTE_END):], False
        return "".join(out)


def _split_partial_end(text: str) -> tuple[str, str]:
    """``text`` split before a tail that may be the start of the end marker."""
    for size in range(min(len(PASTE_END) - 1, len(text)), 0, -1):
        if PASTE_END.startswith(text[-size:]):
            return text[:-size], text[-size:]
    return text, ""


def install() -> None:
    """Make the terminal drivers read their input with ``PasteSafeParser``."""
    from textual.drivers import linux_driver, linux_inline_driver

    for module in (linux_driver, linux_inline_driver):
        module.XTermParser = PasteSafeParser  # type: ignore[attr-defined]
