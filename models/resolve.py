"""Find a model (local folder or Hugging Face repo id), download it with progress, load it.

``resolve_model`` never imports mlx-lm; ``load_model`` does, and runs on the engine thread.
The transfer itself (progress, cancel, resume) lives in ``models.hub`` and
``models.hub_transfer``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import ModelNotFound, NotAModel, OfflineError
from common.progress import LoadProgress
from common.repo_id import looks_like_repo_id, offline

Emit = Callable[[Any], None]

__all__ = [
    "check_model_folder", "display_name", "download", "location_key", "looks_like_repo_id",
    "offline", "resolve_model", "same_location", "short_model",
]


def check_model_folder(path: Path) -> None:
    """Raise a one-line error unless ``path`` looks like a folder mlx-lm can load."""
    if not path.exists():
        raise ModelNotFound(
            f"no such folder: {path}: give a model folder or a Hugging Face repo id "
            "such as mlx-community/Qwen3-0.6B-4bit"
        )
    if not path.is_dir():
        raise NotAModel(f"{path} is a file, not a model folder: give the folder that holds "
                        "config.json and the *.safetensors weights")
    if not (path / "config.json").is_file():
        raise NotAModel(f"{path} is not a model folder (no config.json): give the folder that "
                        "holds config.json and the *.safetensors weights")
    if not any(path.glob("*.safetensors")):
        raise NotAModel(f"{path} has no *.safetensors weights: it is not an MLX model folder "
                        "(convert it with `python -m mlx_lm convert`)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise NotAModel(f"{path}/config.json cannot be read ({exc}): the folder is damaged; "
                        "download or copy the model again") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise NotAModel(f"{path}/config.json has no model_type: this is not a model mlx-lm "
                        "can load")


def download(repo_id: str, emit: Emit, cancel: threading.Event | None = None) -> Path:
    """The cached snapshot of ``repo_id``, downloaded first (with LoadProgress events) if needed.

    A cached model opens offline and without a round trip to the Hub.
    """
    from .hub import DownloadProgress, cached_snapshot, fetch_model

    cached = cached_snapshot(repo_id)
    if cached is not None:
        return cached
    if offline():
        raise OfflineError(f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                           "is set: unset it to download, or give a local model folder")

    def progress(p: DownloadProgress) -> None:
        rate = p.rate()
        message = f"downloading {repo_id}" + (f" ({rate})" if rate else "")
        emit(LoadProgress("download", message, p.done, p.total))

    return fetch_model(repo_id, progress=progress, cancel=cancel)


def resolve_model(spec: str, emit: Emit, cancel: threading.Event | None = None) -> Path:
    """A local folder for ``spec`` (a path, or a repo id downloaded if needed).

    ``cancel`` stops a download in progress (``DownloadCancelled``; what arrived is kept).
    """
    spec = spec.strip()
    if not spec:
        raise ModelNotFound("no model given: pass --model with a folder or a repo id")
    path = Path(spec).expanduser()
    if path.exists() or not looks_like_repo_id(spec):
        check_model_folder(path)
        return path.resolve()
    local = download(spec, emit, cancel)
    check_model_folder(local)
    return local


def display_name(spec: str, path: Path) -> str:
    """The repo id for a Hub model (also when given its cache folder), else the folder name."""
    if looks_like_repo_id(spec) and not Path(spec).exists():
        return spec
    from common.repo_id import repo_id_of

    return repo_id_of(path) or path.name


def short_model(spec: str) -> str:
    """A model as lists name it: a repo id as it is, a folder by its last part ("" for none).

    Needs no file: works on what a session recorded even when the folder is gone.
    """
    spec = spec.strip() if spec else ""
    if not spec:
        return ""
    if spec.startswith(("/", "~", ".")):
        return Path(spec.rstrip("/")).name or spec
    return spec


def location_key(spec: str | Path) -> str:
    """One spelling per place: a repo id stays as it is; a folder becomes absolute, with
    ``~`` and links resolved (so two spellings of one folder compare equal)."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    if looks_like_repo_id(text) and not path.exists():
        return text
    try:
        return str(path.resolve())
    except OSError:
        return str(path.absolute())


def same_location(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether ``a`` and ``b`` name the same repo id or folder (None only equals None)."""
    if a is None or b is None:
        return a is b
    return location_key(a) == location_key(b)

