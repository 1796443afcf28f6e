"""The events of a fuse, and the JSON line each one travels as from the child to ``FuseJob``.

Its own module because it is the protocol between two processes: the child
(``fuse_child.py``) writes these lines and ``FuseJob`` (``fuse.py``) reads them back, and the
faces match on the same classes. Nothing here imports MLX, textual, rich or prompt_toolkit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class FuseProgress:
    """``stage``: start, load, fuse, dequantize, save, gguf. While fusing, ``done``/``total``
    count the adapted layers."""

    stage: str
    message: str
    done: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class FuseFinished:
    """The fused model folder is in place (and the GGUF file, if asked for)."""

    save_path: str
    seconds: float
    gguf_path: str | None = None


@dataclass(frozen=True, slots=True)
class FuseFailed:
    """Nothing was written. ``kind``: "cancelled", "adapter", "model", "memory", "gguf",
    "exists", "crashed"."""

    message: str
    kind: str


FuseEvent = FuseProgress | FuseFinished | FuseFailed
_KINDS: dict[str, type] = {c.__name__: c for c in (FuseProgress, FuseFinished, FuseFailed)}


def to_json(event: FuseEvent) -> str:
    return json.dumps({"event": type(event).__name__, **asdict(event)})


def from_json(line: str) -> FuseEvent | None:
    """The event on one line of the child's output, or None for a line that is not one."""
    try:
        data: dict[str, Any] = json.loads(line)
        cls = _KINDS[data.pop("event")]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})  # type: ignore[no-any-return]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
