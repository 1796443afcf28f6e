"""Text from a model or a paste made safe to show: control characters become their
Unicode pictures, so nothing can send escape sequences to the terminal."""

from __future__ import annotations

# C0 control characters (except tab and newline) and DEL, shown as their Unicode control
# pictures: a model (or a paste) must not be able to send escape sequences to the terminal.
_CONTROLS = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)} | {0x7F: 0x2421}


def visible(text: str) -> str:
    """``text`` with control characters made harmless and visible."""
    return text.translate(_CONTROLS)
