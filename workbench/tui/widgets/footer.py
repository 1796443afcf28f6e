"""The footer: Textual's, keeping to one line at any width.

Every key with a footer label needs about 150 columns; on a narrower terminal Textual's
footer cut the last ones in half under the command palette's key. This one drops the least
used keys first (``DROP_ORDER``) until the rest fit, and does it again when the terminal is
resized. Every key is still in F1 and every action in the command palette (Ctrl+P, always
shown).
"""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

# The actions whose keys go first when the footer is too narrow, least used first.
# At 80 columns Settings (F2, also in Ctrl+P) gives way to Sessions: the seven keys the
# footer would like take 81 columns.
DROP_ORDER = ("copy_last", "edit_last", "new_chat", "regenerate", "help", "settings",
              "sessions", "models", "toggle_sidebar", "cancel_reply")


def key_width(key: FooterKey) -> int:
    """The columns a key takes with this footer's paddings (below): `` ^q Quit ``, and the
    command palette's at the right edge, ``▏^p Commands`` (the bar takes the first one)."""
    return len(key.key_display) + len(key.description) + 3


class WorkbenchFooter(Footer):
    DEFAULT_CSS = """
    WorkbenchFooter FooterKey .footer-key--key {
        padding: 0 0 0 1;
    }
    WorkbenchFooter FooterKey .footer-key--description {
        padding: 0 1;
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self.fitted_width = 0  # the width the keys were chosen for
        self.dropped: list[str] = []  # the actions left out at that width

    def compose(self) -> ComposeResult:
        widgets = list(super().compose())
        keys = [w for w in widgets if isinstance(w, FooterKey)]
        width = self.app.size.width
        used = sum(key_width(k) for k in keys)
        self.fitted_width, self.dropped = width, []
        for action in DROP_ORDER:
            if used <= width:
                break
            for key in [k for k in keys if k.action == action
                        and "-command-palette" not in k.classes]:
                keys.remove(key)
                used -= key_width(key)
                self.dropped.append(action)
        yield from (w for w in widgets if not isinstance(w, FooterKey) or w in keys)

    def on_resize(self, event: events.Resize) -> None:
        if self.app.size.width != self.fitted_width:
            self.refresh(recompose=True)
