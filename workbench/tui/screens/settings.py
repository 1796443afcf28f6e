"""The settings screen: the system prompt and the sampling parameters, with presets.

Each field is checked as it is typed with the engine's own rules (``engine.sampling``): a
bad value shows what is allowed under the field, and Apply refuses to close until every
field is good, so a bad value never changes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch, TextArea

from common.errors import BadSetting
from engine.sampling import PRESETS, SamplingParams, parse_value

from ...keymap import SETTINGS_BINDINGS

HINTS = {
    "temperature": "0 to 5; 0 always picks the likeliest token",
    "top_p": "above 0, at most 1; 1 = off",
    "min_p": "0 to 1; 0 = off",
    "top_k": "whole number; 0 = off",
    "repetition_penalty": "1 (off) to 3",
    "max_tokens": "longest reply, 1 to 1000000",
    "seed": "whole number, or none",
}
FIELD_NAMES = [f.name for f in fields(SamplingParams)]


@dataclass(frozen=True)
class SettingsResult:
    system_prompt: str
    params: SamplingParams
    save_as_default: bool = False
    thinking: bool | None = None  # the template's enable_thinking (None: no such switch)


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


class SettingsScreen(ModalScreen[SettingsResult | None]):
    BINDINGS = SETTINGS_BINDINGS  # type: ignore[assignment]

    def __init__(self, system_prompt: str, params: SamplingParams, *,
                 thinking: bool | None = None) -> None:
        super().__init__()
        self.system_prompt = system_prompt
        self.params = params
        self.thinking = thinking  # None: the model's template has no thinking switch

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="settings-dialog", classes="dialog"):
            yield Label("Settings", classes="dialog-title")
            yield Label("System prompt", classes="section")
            yield TextArea(self.system_prompt, id="system-prompt", soft_wrap=True,
                           tab_behavior="focus")
            if self.thinking is not None:
                with Horizontal(id="thinking-row"):
                    yield Label("Thinking", classes="section")
                    yield Switch(self.thinking, id="thinking")
                    yield Static("the template's enable_thinking: a <think> block before "
                                 "each answer", classes="hint", markup=False)
            with Horizontal(id="preset-row"):
                yield Label("Sampling", classes="section")
                yield Select([(name, name) for name in PRESETS], prompt="preset…",
                             id="preset", compact=True)
            with Grid(id="sampling-grid"):
                for name in FIELD_NAMES:
                    yield Label(name.replace("_", " "), classes="field-name")
                    yield Input(_shown(getattr(self.params, name)), id=f"field-{name}",
                                compact=True)
                    yield Static(HINTS[name], id=f"hint-{name}", classes="hint",
                                 markup=False)
            yield Static("", id="settings-error", markup=False)
            with Horizontal(id="settings-buttons"):
                yield Button("Apply", id="apply", variant="primary", compact=True)
                yield Button("Save as default", id="save-default", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#system-prompt", TextArea).focus()

    # -- validation ----------------------------------------------------------------------
    def _check(self, name: str) -> tuple[Any, str | None]:
        """(value, None) for a good field; (None, the one-line problem) for a bad one."""
        text = self.query_one(f"#field-{name}", Input).value
        try:
            value = parse_value(name, text)
            SamplingParams().with_values(**{name: value})
        except BadSetting as exc:
            return None, str(exc)
        return value, None

    def _show_check(self, name: str) -> str | None:
        _value, problem = self._check(name)
        hint = self.query_one(f"#hint-{name}", Static)
        hint.update(problem or HINTS[name])
        hint.set_class(problem is not None, "-error")
        return problem

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        if event.input.id and event.input.id.startswith("field-"):
            self._show_check(event.input.id.removeprefix("field-"))
            if not any(self._check(n)[1] for n in FIELD_NAMES):
                self.query_one("#settings-error", Static).update("")

    @on(Select.Changed, "#preset")
    def _preset_chosen(self, event: Select.Changed) -> None:
        if not isinstance(event.value, str):
            return
        chosen = PRESETS[event.value]
        for name in FIELD_NAMES:
            if name in ("max_tokens", "seed"):
                continue  # a preset is about how to sample, not how long or repeatable
            self.query_one(f"#field-{name}", Input).value = _shown(getattr(chosen, name))

    def result(self, save: bool = False) -> SettingsResult | None:
        """The new settings, or None (with the problems shown) if any field is bad."""
        problems = [p for p in (self._show_check(n) for n in FIELD_NAMES) if p]
        if problems:
            message = problems[0] + ("" if len(problems) == 1
                                     else f" (and {len(problems) - 1} more)")
            self.query_one("#settings-error", Static).update(
                f"Not applied: {message}")
            self.notify(problems[0], title="Setting refused", severity="error")
            return None
        values = {name: self._check(name)[0] for name in FIELD_NAMES}
        thinking = self.query_one("#thinking", Switch).value if self.thinking is not None \
            else None
        return SettingsResult(self.query_one("#system-prompt", TextArea).text,
                              self.params.with_values(**values), save, thinking)

    # -- actions -------------------------------------------------------------------------
    @on(Button.Pressed, "#apply")
    def action_apply(self) -> None:
        result = self.result()
        if result is not None:
            self.dismiss(result)

    @on(Button.Pressed, "#save-default")
    def _save_default(self) -> None:
        result = self.result(save=True)
        if result is not None:
            self.dismiss(result)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_settings(self) -> None:
        self.dismiss(None)
