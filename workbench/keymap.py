"""Every key binding of the app in one place, each with an id the config can remap.

The ids are what a user writes in the ``[keys]`` table of the config (``regenerate =
"ctrl+g"``); ``App.set_keymap`` applies them. The help screen and the command palette read
the same lists, so they never disagree with what the keys do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from textual.binding import Binding

APP_BINDINGS: list[Binding] = [
    Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    Binding("escape", "cancel_reply", "Stop", id="cancel"),
    Binding("ctrl+r", "regenerate", "Regenerate", id="regenerate"),
    Binding("ctrl+l", "edit_last", "Edit last", id="edit-last"),
    Binding("ctrl+o", "copy_last", "Copy reply", id="copy-last"),
    Binding("ctrl+n", "new_chat", "New chat", id="new-chat"),
    Binding("f2", "settings", "Settings", id="settings"),
    Binding("f1", "help", "Help", id="help"),
    Binding("ctrl+b", "toggle_sidebar", "Sidebar", id="toggle-sidebar"),
    Binding("f3", "sessions", "Sessions", id="sessions"),
    Binding("f5", "models", "Models", id="models"),
    Binding("f4", "focus_adapters", "Adapters", id="adapters", show=False),
    Binding("f8", "compare_adapters", "Compare", id="compare-adapters", show=False),
    # Priority: the prompt box (a TextArea) has F6/F7 of its own (select line/all).
    Binding("f6", "train", "Train", id="train", show=False, priority=True),
    Binding("f7", "evaluate", "Eval", id="eval", show=False, priority=True),
    Binding("f9", "token_view", "Tokens", id="token-view", show=False),
    Binding("f10", "branches", "Branches", id="branches", show=False),
    Binding("ctrl+p", "command_palette", "Commands", id="command-palette", show=False),
    Binding("ctrl+t", "change_theme", "Theme", id="theme", show=False),
    Binding("f12", "screenshot", "Screenshot", id="screenshot", show=False),
]

PROMPT_BINDINGS: list[Binding] = [
    Binding("enter", "send", "Send", id="send", show=False),
    Binding("ctrl+j,shift+enter", "newline", "Newline", id="newline", show=False),
]

SETTINGS_BINDINGS: list[Binding] = [
    Binding("ctrl+s", "apply", "Apply", id="settings-apply"),
    Binding("escape", "dismiss_settings", "Cancel", id="settings-cancel"),
]

ADAPTER_LIST_BINDINGS: list[Binding] = [
    Binding("d", "details", "Details", id="adapter-details", show=False),
]

SCALE_BINDINGS: list[Binding] = [
    Binding("left", "scale_down", "Less", id="scale-down", show=False),
    Binding("right", "scale_up", "More", id="scale-up", show=False),
]

SESSIONS_BINDINGS: list[Binding] = [
    Binding("n", "new_session", "New", id="sessions-new"),
    Binding("r", "rename_session", "Rename", id="sessions-rename"),
    Binding("d,delete", "delete_session", "Delete", id="sessions-delete"),
    Binding("e", "export_session", "Export", id="sessions-export"),
    Binding("slash", "focus_filter", "Filter", id="sessions-filter"),
    Binding("escape", "close_sessions", "Close", id="sessions-close"),
]

MODELS_BINDINGS: list[Binding] = [
    Binding("4", "quantize(4)", "4-bit copy", id="models-quantize-4"),
    Binding("8", "quantize(8)", "8-bit copy", id="models-quantize-8"),
    Binding("ctrl+d", "focus_download", "Download", id="models-download"),
    Binding("ctrl+z", "cancel_job", "Cancel job", id="models-cancel"),
    Binding("slash", "focus_filter", "Filter", id="models-filter"),
    Binding("escape", "close_models", "Close", id="models-close"),
]

TRAIN_BINDINGS: list[Binding] = [
    Binding("ctrl+s", "start_training", "Start", id="train-start"),
    Binding("ctrl+z", "cancel_training", "Cancel run", id="train-cancel"),
    Binding("escape", "close_train", "Close", id="train-close"),
]

EVAL_BINDINGS: list[Binding] = [
    Binding("ctrl+s", "run_eval", "Run", id="eval-run"),
    Binding("escape", "close_eval", "Close", id="eval-close"),
]

# The chat pane's own keys, on the selected turn (Up/Down select one).
CHAT_BINDINGS: list[Binding] = [
    Binding("up", "turn_prev", "Previous turn", id="turn-prev", show=False),
    Binding("down", "turn_next", "Next turn", id="turn-next", show=False),
    Binding("left", "token_step(-1)", "Previous token", id="token-prev", show=False),
    Binding("right", "token_step(1)", "Next token", id="token-next", show=False),
    Binding("enter", "open_turn", "Open", id="turn-open", show=False),
    Binding("left_square_bracket,alt+left", "branch_step(-1)", "Previous branch",
            id="branch-prev", show=False),
    Binding("right_square_bracket,alt+right", "branch_step(1)", "Next branch",
            id="branch-next", show=False),
    Binding("e", "edit_turn", "Edit as a branch", id="edit-turn", show=False),
    Binding("r", "regenerate_turn", "Regenerate as a branch", id="regenerate-turn",
            show=False),
]

TOKEN_CHOICES_BINDINGS: list[Binding] = [
    Binding("escape", "close_choices", "Close", id="choices-close"),
]

BRANCHES_BINDINGS: list[Binding] = [
    Binding("escape", "close_branches", "Close", id="branches-close"),
]

FUSE_BINDINGS: list[Binding] = [
    Binding("escape", "close_fuse", "Close", id="fuse-close"),
]

HELP_TEXT: dict[str, str] = {
    "quit": "Quit (the engine is closed cleanly)",
    "cancel": "Stop the reply being generated (prefill or decode)",
    "regenerate": "Generate the last reply again",
    "edit-last": "Put your last message back in the prompt box to edit and resend it",
    "copy-last": "Copy the last reply to the clipboard",
    "new-chat": "Start a new conversation",
    "settings": "System prompt and sampling settings",
    "help": "This list of keys",
    "toggle-sidebar": "Show or hide the sidebar (throughput, memory, model)",
    "command-palette": "Search every command",
    "theme": "Choose a theme (remembered in the config)",
    "screenshot": "Save an SVG screenshot of the screen",
    "send": "Send the message (prompt box)",
    "newline": "Insert a new line (prompt box)",
    "settings-apply": "Apply the settings (settings screen)",
    "settings-cancel": "Close the settings without changing anything",
    "adapters": "Go to the Adapters pane (Enter or a click activates one)",
    "compare-adapters": "Answer your last message under two adapters, side by side; keep one",
    "adapter-details": "Show the highlighted adapter's details and config (Adapters pane)",
    "scale-down": "Lower the adapter's scale by 0.1 (scale control)",
    "scale-up": "Raise the adapter's scale by 0.1, up to 2 times trained (scale control)",
    "sessions": "Saved sessions: open, rename, delete, start one, export to Markdown",
    "models": "Models on this machine: switch, download, quantize to 4 or 8 bits",
    "sessions-new": "Start a new named session (sessions screen)",
    "sessions-rename": "Rename the highlighted session (sessions screen)",
    "sessions-delete": "Delete the highlighted session, after a confirmation (sessions screen)",
    "sessions-export": "Export the open session to a Markdown file (sessions screen)",
    "sessions-filter": "Filter the sessions by text (sessions screen)",
    "sessions-close": "Close the sessions screen",
    "models-quantize-4": "Write a 4-bit copy of the highlighted model (models screen)",
    "models-quantize-8": "Write an 8-bit copy of the highlighted model (models screen)",
    "models-download": "Type a repo id to download (models screen)",
    "models-cancel": "Cancel the running download or quantization (models screen)",
    "models-filter": "Filter the models by text (models screen)",
    "models-close": "Close the models screen",
    "train": "Train an adapter on the loaded model, with live loss curves (runs on while "
             "you chat)",
    "eval": "Evaluate the base model and up to four adapters on a prompt set, side by side",
    "train-start": "Start training with the form's settings (Train screen)",
    "train-cancel": "Cancel the training run; no new adapter is kept (Train screen)",
    "train-close": "Close the Train screen; the run goes on (F6 shows it again)",
    "eval-run": "Run the evaluation (Eval screen)",
    "eval-close": "Close the Eval screen (a running evaluation stops)",
    "fuse-close": "Close the Fuse screen; a fuse goes on",
    "token-view": "Token probabilities: off → shaded by probability → by entropy (replies "
                  "are asked for with logprobs only while it is on)",
    "branches": "The conversation's branches (edits, regenerations, other tokens): Enter "
                "opens one",
    "turn-prev": "Select the turn above (chat)",
    "turn-next": "Select the turn below (chat)",
    "token-prev": "Move the token cursor left (chat, probability view)",
    "token-next": "Move the token cursor right (chat, probability view)",
    "turn-open": "The token's alternatives (probability view), else open or close the "
                 "reasoning (chat)",
    "branch-prev": "Show the previous branch at the selected turn (chat)",
    "branch-next": "Show the next branch at the selected turn (chat)",
    "edit-turn": "Edit the selected message; sending it starts a new branch (chat)",
    "regenerate-turn": "Write the selected reply again as a new branch (chat)",
    "choices-close": "Close the token's alternatives",
    "branches-close": "Close the branches list",
}


@dataclass(frozen=True)
class KeyRow:
    """One line of the help screen."""

    binding_id: str
    keys: str
    description: str


def all_bindings() -> list[Binding]:
    return [*APP_BINDINGS, *PROMPT_BINDINGS, *SETTINGS_BINDINGS, *ADAPTER_LIST_BINDINGS,
            *SCALE_BINDINGS, *SESSIONS_BINDINGS, *MODELS_BINDINGS, *TRAIN_BINDINGS,
            *EVAL_BINDINGS, *FUSE_BINDINGS, *CHAT_BINDINGS, *TOKEN_CHOICES_BINDINGS,
            *BRANCHES_BINDINGS]


def known_ids() -> set[str]:
    return {b.id for b in all_bindings() if b.id}


# Where each group of bindings is active. App bindings are active everywhere; a screen's own
# bindings only on that screen (they may reuse an app key: the screen's wins there, as
# Escape does by default).
GROUPS: dict[str, list[Binding]] = {
    "app": APP_BINDINGS, "prompt": PROMPT_BINDINGS, "settings": SETTINGS_BINDINGS,
    "adapter-list": ADAPTER_LIST_BINDINGS, "scale": SCALE_BINDINGS,
    "sessions": SESSIONS_BINDINGS, "models": MODELS_BINDINGS, "train": TRAIN_BINDINGS,
    "eval": EVAL_BINDINGS, "fuse": FUSE_BINDINGS, "chat": CHAT_BINDINGS,
    "token-choices": TOKEN_CHOICES_BINDINGS, "branches": BRANCHES_BINDINGS,
}
RESERVED_KEYS: dict[str, str] = {
    "ctrl+c": "copy (the terminal's and Textual's own)",
    "tab": "moving the focus",
    "shift+tab": "moving the focus back",
}
"""Keys Textual itself needs, which no binding may take."""


def normalize_key(key: str) -> str:
    """One spelling per key: ``Ctrl+Q`` and ``ctrl+q`` are the same key; ``N`` (shift+n)
    and ``n`` are not."""
    parts = [p.strip() for p in key.strip().split("+")]
    *mods, last = parts
    if mods or len(last) > 1:
        last = last.lower()
    return "+".join([*sorted(m.lower() for m in mods), last])


def split_keys(keys: str) -> list[str]:
    return [normalize_key(k) for k in keys.split(",") if k.strip()]


def _group_of() -> dict[str, str]:
    return {b.id: g for g, bindings in GROUPS.items() for b in bindings if b.id}


def _label(binding_id: str) -> str:
    binding = next((b for b in all_bindings() if b.id == binding_id), None)
    return f"{binding.description} ({binding_id})" if binding else binding_id


def check_keymap(keymap: Mapping[str, str], source: str = ""
                 ) -> tuple[dict[str, str], list[str]]:
    """Split the config's ``[keys]`` table into usable entries and one-line problems, each
    starting with ``source`` (the config file's path), when given, as config problems do.

    An entry is refused (and its binding keeps its default keys) when its id is unknown, it
    has no keys, or a key is one Textual reserves or another binding has there: the app's
    Quit (Ctrl+Q) and any priority binding everywhere, other bindings of the same screen.
    Remaps are checked together, so two bindings can swap keys; of two entries that want
    one key, the first keeps it. Every other entry still applies.
    """
    known = known_ids()
    group = _group_of()
    defaults = {b.id: split_keys(b.key) for b in all_bindings() if b.id}
    priority = {b.id for b in all_bindings() if b.id and b.priority}
    wanted: dict[str, list[str]] = {}
    problems: list[str] = []
    for binding_id, keys in keymap.items():
        if binding_id not in known:
            problems.append(f"unknown key binding id {binding_id!r} in [keys] (ignored): F1 "
                            "lists the ids")
        elif not isinstance(keys, str) or not split_keys(keys):
            problems.append(f"[keys] {binding_id} has no keys (ignored): it keeps "
                            f"{','.join(defaults[binding_id])}")
        else:
            reserved = next((k for k in split_keys(keys) if k in RESERVED_KEYS), None)
            if reserved:
                problems.append(f"[keys] {binding_id} = {keys!r} refused: {reserved} is kept "
                                f"for {RESERVED_KEYS[reserved]}; it keeps "
                                f"{','.join(defaults[binding_id])}")
            else:
                wanted[binding_id] = split_keys(keys)

    def clash(binding_id: str, effective: dict[str, list[str]]) -> tuple[str, str] | None:
        """(key, other id) when one of ``binding_id``'s keys is another binding's there."""
        mine = group[binding_id]
        for other, keys in effective.items():
            if other == binding_id:
                continue
            same_scope = (group[other] == mine or other in priority or binding_id in priority
                          or (mine == "app" and group[other] == "prompt")
                          or (group[other] == "app" and mine == "prompt"))
            if not same_scope:
                continue
            for key in effective[binding_id]:
                if key in keys:
                    return key, other
        return None

    refused: set[str] = set()
    changed = True
    while changed:  # refusing one remap gives its binding its default keys back: check again
        changed = False
        effective = {**defaults, **{i: k for i, k in wanted.items() if i not in refused}}
        for binding_id in wanted:
            if binding_id in refused:
                continue
            found = clash(binding_id, effective)
            if found is None:
                continue
            key, other = found
            # Of two remaps that want one key, the first in the config keeps it.
            order = list(wanted)
            if other in wanted and other not in refused and \
                    order.index(other) > order.index(binding_id):
                refused.add(other)
                victim, holder = other, binding_id
            else:
                refused.add(binding_id)
                victim, holder = binding_id, other
            problems.append(f"[keys] {victim} = {keymap[victim]!r} refused: {key} is already "
                            f"the key of {_label(holder)}; {victim} keeps "
                            f"{','.join(defaults[victim])}")
            changed = True
            break
    good = {i: keymap[i] for i in wanted if i not in refused}
    return good, [f"{source}: {p}" for p in problems] if source else problems


def key_rows(keymap: Mapping[str, str], display: Iterable[tuple[str, str]] = ()) -> list[KeyRow]:
    """The help screen's rows: each binding with the keys it has after the keymap.

    ``display`` maps a raw key name to how the app shows it (e.g. ``ctrl+q`` -> ``^q``).
    """
    shown = dict(display)
    rows = []
    for binding in all_bindings():
        assert binding.id is not None
        keys = keymap.get(binding.id, binding.key)
        pretty = ", ".join(shown.get(k.strip(), k.strip()) for k in keys.split(","))
        rows.append(KeyRow(binding.id, pretty, HELP_TEXT.get(binding.id, binding.description)))
    return rows
