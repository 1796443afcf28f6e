"""Find a model (local folder or Hugging Face repo id), download it with progress, load it.

``resolve_model`` never imports mlx-lm; ``load_model`` does, and runs on the engine thread.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DownloadError, ModelNotFound, NotAModel, OfflineError
from .events import LoadProgress, ModelInfo

Emit = Callable[[Any], None]

# What mlx-lm itself downloads for a model (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS), minus
# *.py: the workbench never runs a model's own code.
ALLOW_PATTERNS = [
    "*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "tiktoken.model",
    "*.txt", "*.jsonl", "*.jinja",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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


def _progress_class(emit: Emit, repo_id: str) -> type:
    """A tqdm stand-in that turns huggingface_hub's byte counts into LoadProgress events."""
    from tqdm.auto import tqdm as base

    class _Progress(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the bar
            super().__init__(*args, **kwargs)
            self._last = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            now = time.monotonic()
            if self.unit == "B" and (now - self._last > 0.1 or self.n >= (self.total or 0)):
                self._last = now
                emit(LoadProgress("download", f"downloading {repo_id}", int(self.n),
                                  int(self.total or 0)))
            return out

        def close(self) -> None:
            super().close()
            self.fp.close()

    return _Progress


def download(repo_id: str, emit: Emit) -> Path:
    """Fetch ``repo_id`` into the standard Hugging Face cache (or find it there)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        # Look in the cache first: a cached model opens offline and without a round trip.
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    except HFValidationError:
        raise ModelNotFound(f"{repo_id!r} is neither a folder nor a valid Hugging Face repo "
                            "id (owner/name)") from None
    if offline():
        raise OfflineError(f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                           "is set: unset it to download, or give a local model folder")
    emit(LoadProgress("download", f"downloading {repo_id}"))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, etag_timeout=10,
                                      tqdm_class=_progress_class(emit, repo_id)))
    except GatedRepoError:
        raise DownloadError(f"{repo_id} is gated: accept its licence on huggingface.co and log "
                            "in with `hf auth login`, then try again") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id} was not found on the Hugging Face Hub: check the "
                            "spelling (owner/name), or log in if it is private") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo_id} has no such revision") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        raise OfflineError(f"could not download {repo_id}: the Hugging Face Hub cannot be "
                           f"reached ({type(exc).__name__}): check the network, or give a "
                           "local model folder") from None


def resolve_model(spec: str, emit: Emit) -> Path:
    """A local folder for ``spec`` (a path, or a repo id downloaded if needed)."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFound("no model given: pass --model with a folder or a repo id")
    path = Path(spec).expanduser()
    if path.exists() or not looks_like_repo_id(spec):
        check_model_folder(path)
        return path.resolve()
    local = download(spec, emit)
    check_model_folder(local)
    return local


def model_info(name: str, path: Path, model: Any, config: dict[str, Any], weight_bytes: int,
               load_time_s: float, adapter: str | None) -> ModelInfo:
    from mlx_lm.utils import compute_bits_per_weight, get_total_parameters

    from .demo import is_demo_model

    text = config.get("text_config")
    cfg = text if isinstance(text, dict) else config
    context = cfg.get("max_position_embeddings") or config.get("max_position_embeddings") or 0
    return ModelInfo(
        name=name,
        path=str(path),
        architecture=str(config.get("model_type", "?")),
        num_parameters=int(get_total_parameters(model)),
        bits_per_weight=round(float(compute_bits_per_weight(model)), 2),
        weight_bytes=weight_bytes,
        context_length=int(context),
        load_time_s=round(load_time_s, 3),
        is_demo=is_demo_model(path),
        adapter=adapter,
    )


def display_name(spec: str, path: Path) -> str:
    return spec if looks_like_repo_id(spec) and not Path(spec).exists() else path.name
