"""The events of a fuse, and the JSON line each one travels as from the child to ``FuseJob``.

Its own module because it is the protocol between two processes: the child
(``fuse_child.py``) writes these lines and ``FuseJob`` (``fuse.py``) reads them back, and the
faces match on the same classes. The lines are ``channel.Codec``'s: versioned, and one it
cannot read raises. Nothing here imports MLX, textual, rich or prompt_toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .channel import Codec


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
CODEC = Codec("fuse", 1, FuseProgress, FuseFinished, FuseFailed)


def to_json(event: FuseEvent) -> str:
    return CODEC.encode(event)


def from_json(line: str) -> FuseEvent:
    """The event on one line of the child's output; ``ProtocolError`` if it is not one."""
    return CODEC.decode(line)  # type: ignore[no-any-return]
