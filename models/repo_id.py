"""What a Hugging Face repo id looks like, and whether the Hub may be asked: the two facts
most callers need, without importing the download code."""

from __future__ import annotations

import os
import re

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(text: str) -> bool:
    """``owner/name``, not a path (``./x``, ``/x``, ``~/x``)."""
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: the Hub must not be asked."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
