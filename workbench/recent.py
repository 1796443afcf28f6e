"""What the workbench remembers about models between runs: the ones used lately, and the
folders the user asked it to look in for models.

The models screen lists recently used models first and scans the remembered folders; a
quantized copy's folder is remembered so it shows up in the picker. Kept as a small JSON file
in the data folder (``models.json``), written atomically. A damaged file never stops
anything: it reads as empty, says so in ``problems``, and the next write replaces it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_write
from common.repo_id import looks_like_repo_id
from models.resolve import location_key

from . import paths

SCHEMA = 1
MAX_RECENT = 20


@dataclass(frozen=True)
class RecentModel:
    spec: str  # repo id or absolute folder path: what to give Engine.load
    name: str
    last_used: float


@dataclass(frozen=True)
class ModelMemory:
    recent: tuple[RecentModel, ...] = ()
    folders: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)


def store_file() -> Path:
    return paths.data_dir() / "models.json"


normalize_spec = location_key  # repo ids stay as they are; folders become absolute paths


def load() -> ModelMemory:
    path = store_file()
    if not path.exists():
        return ModelMemory()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return ModelMemory(problems=(f"{path}: cannot be read ({exc}); starting a new list",))
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return ModelMemory(problems=(f"{path}: not a schema {SCHEMA} model list; starting a "
                                     "new one",))
    recent: list[RecentModel] = []
    for item in data.get("recent", []):
        try:
            recent.append(RecentModel(str(item["spec"]), str(item.get("name", item["spec"])),
                                      float(item.get("last_used", 0.0))))
        except (KeyError, TypeError, ValueError):
            continue
    folders = tuple(str(f) for f in data.get("folders", []) if isinstance(f, str))
    recent.sort(key=lambda r: r.last_used, reverse=True)
    return ModelMemory(tuple(recent), folders)


def save(memory: ModelMemory) -> None:
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "recent": [asdict(r) for r in memory.recent[:MAX_RECENT]],
        "folders": list(memory.folders),
    }
    atomic_write(store_file(), (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def recent_models() -> list[RecentModel]:
    """Most recently used first."""
    return list(load().recent)


def recent_specs() -> list[str]:
    """For ``models.catalog.scan_models(recent=...)``."""
    return [r.spec for r in load().recent]


def remember_model(spec: str, name: str | None = None, when: float | None = None) -> None:
    """Put a model at the top of the recent list (call it after a successful load)."""
    spec = normalize_spec(spec)
    memory = load()
    entry = RecentModel(spec, name or (spec if looks_like_repo_id(spec) else Path(spec).name),
                        time.time() if when is None else when)
    rest = tuple(r for r in memory.recent if r.spec != spec)
    save(ModelMemory((entry, *rest)[:MAX_RECENT], memory.folders))


def forget_model(spec: str) -> None:
    spec = normalize_spec(spec)
    memory = load()
    save(ModelMemory(tuple(r for r in memory.recent if r.spec != spec), memory.folders))


def model_folders() -> list[Path]:
    """Folders to scan for models: the data folder's ``models`` plus the remembered ones."""
    default = paths.data_dir() / "models"
    out = [default]
    out.extend(Path(f) for f in load().folders if Path(f) != default)
    return out


def add_model_folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser().resolve()
    memory = load()
    if str(path) not in memory.folders:
        save(ModelMemory(memory.recent, (*memory.folders, str(path))))
    return path


def remove_model_folder(folder: str | Path) -> bool:
    """Stop scanning ``folder``; False if it was not in the list."""
    path = str(Path(folder).expanduser().resolve())
    memory = load()
    if path not in memory.folders:
        return False
    save(ModelMemory(memory.recent, tuple(f for f in memory.folders if f != path)))
    return True
