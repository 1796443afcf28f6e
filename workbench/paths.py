"""Every path the workbench uses, in one place (platform user folders, with overrides).

Environment overrides (handy for tests and portable installs):
``WORKBENCH_CONFIG_DIR``, ``WORKBENCH_DATA_DIR``, ``WORKBENCH_CACHE_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_config_dir, user_data_dir

APP = "mlx-workbench"


def _dir(env: str, default: str) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser() if value else Path(default)


def config_dir() -> Path:
    return _dir("WORKBENCH_CONFIG_DIR", user_config_dir(APP))


def data_dir() -> Path:
    return _dir("WORKBENCH_DATA_DIR", user_data_dir(APP))


def cache_dir() -> Path:
    return _dir("WORKBENCH_CACHE_DIR", user_cache_dir(APP))


def config_file() -> Path:
    return config_dir() / "config.toml"


def sessions_dir() -> Path:
    return data_dir() / "sessions"


def adapters_dir() -> Path:
    return data_dir() / "adapters"


def history_file() -> Path:
    return data_dir() / "chat_history"


def demo_dir() -> Path:
    """Where the demo model kit is built once, on first use."""
    return cache_dir() / "demo"
