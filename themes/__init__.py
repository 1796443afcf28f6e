"""The workbench's own colour themes.

A theme here is only a palette: Textual ``Theme`` objects registered with the app, plus the
few workbench-specific colour variables (``wb-*``) that ``workbench.tcss`` uses for the chat
turns, the gauges and the sparkline. Every other theme (Textual's built-in ones) gets those
variables derived from its own colours, so any theme in the command palette works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from textual.theme import Theme

STYLESHEET = Path(__file__).with_name("workbench.tcss")
"""Styles shared by every theme: they name colours only through theme variables."""

DARK = "workbench-dark"
LIGHT = "workbench-light"

WORKBENCH_DARK = Theme(
    name=DARK,
    primary="#7AA2F7",
    secondary="#BB9AF7",
    accent="#FF9E64",
    warning="#E0AF68",
    error="#F7768E",
    success="#9ECE6A",
    foreground="#C0CAF5",
    background="#15161E",
    surface="#1A1B26",
    panel="#232433",
    dark=True,
    variables={
        "wb-user": "#BB9AF7",
        "wb-assistant": "#7AA2F7",
        "wb-gauge-fill": "#7DCFFF",
        "wb-gauge-empty": "#2E3148",
        "wb-spark-low": "#3D59A1",
        "wb-spark-high": "#7DCFFF",
        "footer-key-foreground": "#FF9E64",
        "block-cursor-background": "#7AA2F7",
        "input-selection-background": "#7AA2F7 35%",
    },
)

WORKBENCH_LIGHT = Theme(
    name=LIGHT,
    primary="#2E5CB8",
    secondary="#8243B5",
    accent="#B35900",
    warning="#8F5E00",
    error="#C0263F",
    success="#2F7D32",
    foreground="#1F2335",
    background="#F3F3F6",
    surface="#FFFFFF",
    panel="#E3E5EE",
    dark=False,
    variables={
        "wb-user": "#8243B5",
        "wb-assistant": "#2E5CB8",
        "wb-gauge-fill": "#2E7FB8",
        "wb-gauge-empty": "#D5D8E3",
        "wb-spark-low": "#9DB5E0",
        "wb-spark-high": "#2E5CB8",
        "footer-key-foreground": "#B35900",
        "input-selection-background": "#2E5CB8 25%",
    },
)

THEMES: dict[str, Theme] = {theme.name: theme for theme in (WORKBENCH_DARK, WORKBENCH_LIGHT)}


class _ThemeRegistry(Protocol):
    def register_theme(self, theme: Theme) -> None: ...


def register_themes(app: _ThemeRegistry) -> None:
    """Make the workbench themes available to ``app`` (and so in its command palette)."""
    for theme in THEMES.values():
        app.register_theme(theme)


def variable_defaults(theme: Theme) -> dict[str, str]:
    """The ``wb-*`` variables for a theme that does not set them, from its own colours."""
    colors = theme.to_color_system().generate()
    return {
        "wb-user": colors["secondary"],
        "wb-assistant": colors["primary"],
        "wb-gauge-fill": colors["primary"],
        "wb-gauge-empty": colors["panel-lighten-1"],
        "wb-spark-low": colors["primary-darken-2"],
        "wb-spark-high": colors["accent"],
    }
