"""The command palette's one provider for every command of the workbench.

Each key binding with a title below is offered with its help text and its keys (as the
config remapped them), plus what only the palette offers: each adapter to use or look at,
the adapter scale, listing the adapters again, exporting the session. Textual's own system
commands (theme, quit, screenshot...) stay with Textual's provider. Model:
darrenburns/posting ``src/posting/commands.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from ..keymap import APP_BINDINGS, HELP_TEXT

if TYPE_CHECKING:
    from .app import WorkbenchApp

# Binding id -> the palette's title (the binding's action is what runs).
TITLES = {
    "cancel": "Stop the reply",
    "regenerate": "Regenerate the last reply",
    "edit-last": "Edit and resend the last message",
    "copy-last": "Copy the last reply",
    "new-chat": "New conversation",
    "settings": "Settings: system prompt and sampling",
    "help": "Help: keys",
    "toggle-sidebar": "Toggle the sidebar",
    "sessions": "Sessions: open, rename, delete, new, export",
    "models": "Models: switch, download, quantize",
    "adapters": "Adapters: go to the list",
    "compare-adapters": "Compare adapters on the last message",
}


@dataclass(frozen=True)
class Command:
    title: str
    help: str
    run: Callable[[], Any]
    discover: bool = True  # listed before anything is typed


def commands(app: WorkbenchApp) -> list[Command]:
    """Every command the palette offers now (the adapters are the ones listed now)."""
    from .widgets.adapters import NO_ADAPTER, facts_line

    found: list[Command] = []
    for binding in APP_BINDINGS:
        if binding.id not in TITLES:
            continue
        keys = app.keymap.get(binding.id, binding.key)
        found.append(Command(TITLES[binding.id], f"{HELP_TEXT[binding.id]} ({keys})",
                             partial(app.run_action, binding.action)))
    found.append(Command("Export the session to Markdown",
                         "Write the open conversation to NAME.md in the sessions folder (the "
                         "sessions screen's e picks another place)", app.sessions.export))
    adapters = app.adapters
    found.append(Command(NO_ADAPTER, "Reply with the base model alone, from the next reply "
                         "on", partial(adapters.choose, None, NO_ADAPTER)))
    for info in adapters.infos:
        about = facts_line(info) if info.valid else f"cannot be used: {info.reason}"
        found.append(Command(f"Use adapter: {info.name}", about,
                             partial(adapters.choose, info.path, info.name)))
        found.append(Command(f"Adapter details: {info.name}",
                             "Everything checked, and its adapter_config.json",
                             partial(adapters.show_details, info.path), discover=False))
    found.append(Command("Adapter scale", "Set the active adapter's scale, 0 to 2 times as "
                         "trained (left/right)", adapters.focus_scale, discover=False))
    found.append(Command("Adapters: look again", "List and check the adapter folders again",
                         adapters.refresh, discover=False))
    return found


class WorkbenchCommands(Provider):
    def _commands(self) -> list[Command]:
        from .app import WorkbenchApp

        app = self.app
        return commands(app) if isinstance(app, WorkbenchApp) else []

    async def discover(self) -> Hits:
        for command in sorted(self._commands(), key=lambda c: c.title):
            if command.discover:
                yield DiscoveryHit(command.title, command.run, help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._commands():
            if (score := matcher.match(command.title)) > 0:
                yield Hit(score, matcher.highlight(command.title), command.run,
                          help=command.help)
