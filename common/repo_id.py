"""What a Hugging Face repo id looks like, the repo id of a snapshot folder in the Hub's
cache, and whether the Hub may be asked: the facts most callers need, without importing
the download code."""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(text: str) -> bool:
    """``owner/name``, not a path (``./x``, ``/x``, ``~/x``)."""
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: the Hub must not be asked."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _repo_id_from_folder(name: str) -> str | None:
    """``models--owner--name`` (the cache's folder name) to ``owner/name``."""
    if not name.startswith("models--"):
        return None
    parts = name[len("models--"):].split("--")
    return "/".join(parts) if len(parts) >= 2 else None


def repo_id_of(path: Path) -> str | None:
    """The repo id when ``path`` is a snapshot folder in a Hugging Face cache, else None."""
    path = Path(path)
    if path.parent.name == "snapshots":
        return _repo_id_from_folder(path.parent.parent.name)
    return None
