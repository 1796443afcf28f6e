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
from typing import TYPE_CHECKING, Any, cast

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
    "train": "Train an adapter (live loss curves)",
    "eval": "Evaluate adapters on a prompt set",
    "token-view": "Token probabilities: off / probability / entropy",
    "branches": "Branches: list and switch",
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
        if info.valid:
            found.append(Command(f"Fuse adapter: {info.name}", "Fuse it into the loaded "
                                 "model: a new model folder, in the models list after",
                                 partial(app.training.open_fuse, info.path, info.name),
                                 discover=False))
    found.append(Command("Adapter scale", "Set the active adapter's scale, 0 to 2 times as "
                         "trained (left/right)", adapters.focus_scale, discover=False))
    for title, about, run in app.training.commands():
        found.append(Command(title, about, run))
    found += inside_commands(app)
    from .decoding_commands import decoding_commands  # issue 12: lookup, KV bits, draft

    for title, about, run in decoding_commands(app):
        found.append(Command(title, about, run, discover=False))
    found.append(Command("Adapters: look again", "List and check the adapter folders again",
                         adapters.refresh, discover=False))
    return found


def inside_commands(app: WorkbenchApp) -> list[Command]:
    """Issue 13's: the thinking switch (a model whose template has one), each branch step
    and edit of the conversation shown."""
    chat, inside, found = app.chat, app.chat.inside, []
    info = app.models.info
    if info is not None and info.thinking_switch:
        on = inside.thinking
        found.append(Command(f"Thinking: {'off' if on else 'on'}",
                             f"The template's enable_thinking is {'on' if on else 'off'}: "
                             f"turn it {'off' if on else 'on'} from the next reply on",
                             inside.toggle_thinking))
    for mode in ("probability", "entropy", "off"):
        if mode != chat.token_mode:
            found.append(Command(f"Token view: {mode}", "Shade each token of the replies by "
                                 f"its {mode}" if mode != "off" else "Show the replies as "
                                 "Markdown again; no token probabilities are asked for",
                                 partial(inside.cycle_token_view, mode), discover=False))
    for index, message in enumerate(chat.conversation.messages):
        if message.role == "user":
            preview = " ".join(message.content.split())[:50]
            found.append(Command(f"Edit message {index + 1}", f"{preview!r}: sending it "
                                 "again starts a new branch", partial(inside.edit, index),
                                 discover=False))
        k, n = chat.conversation.siblings(index)
        if n > 1:
            for step, word in ((-1, "previous"), (1, "next")):
                found.append(Command(f"Message {index + 1}: {word} branch ({k}/{n})",
                                     "Show the sibling branch at this message",
                                     partial(inside.branch_step, index, step),
                                     discover=False))
    return found


class WorkbenchCommands(Provider):
    def _commands(self) -> list[Command]:
        # Registered by WorkbenchApp alone (its COMMANDS): self.app is always that app.
        return commands(cast("WorkbenchApp", self.app))

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
