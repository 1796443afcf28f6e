"""Modal screens of the workbench: help and settings."""

from .help import HelpScreen
from .settings import SettingsResult, SettingsScreen

__all__ = ["HelpScreen", "SettingsResult", "SettingsScreen"]
