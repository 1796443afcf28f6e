"""LoRA/DoRA adapter folders: checks made before any model code touches them."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import AdapterError


def check_adapter_folder(path: Path) -> dict[str, object]:
    """Return the adapter's config, or raise a one-line ``AdapterError``."""
    if not path.is_dir():
        raise AdapterError(f"no adapter folder at {path}: give a folder with "
                           "adapter_config.json and adapters.safetensors")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise AdapterError(f"{path} has no adapter_config.json: it is not an mlx-lm adapter")
    if not (path / "adapters.safetensors").is_file():
        raise AdapterError(f"{path} has no adapters.safetensors: the adapter is incomplete")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{cfg_file} cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{cfg_file} is not a JSON object")
    if config.get("fine_tune_type") == "full":
        raise AdapterError(f"{path} is a full model, not an adapter: load it with --model")
    return config
