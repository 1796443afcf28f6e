"""Session names are file names: check them, or turn any text into a safe one.

A name never contains a path separator, never is or contains ``..``, never starts with a
dot (hidden files and the store's own temporary and lock files start with one) and holds
no control characters, so ``folder / f"{name}.toml"`` always stays inside the folder.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import BadSessionName

MAX_NAME = 80
_ALLOWED_PUNCTUATION = set(" -_.,+@()[]#")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}


def _problem(name: str) -> str | None:
    if not isinstance(name, str) or not name:
        return "it is empty"
    if name != name.strip():
        return "it starts or ends with a space"
    if len(name) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    if "/" in name or "\\" in name or ":" in name:
        return "it contains a path separator"
    if ".." in name:
        return "it contains '..'"
    if name.startswith("."):
        return "it starts with a dot"
    for ch in name:
        if not (ch.isalnum() or ch in _ALLOWED_PUNCTUATION):
            return f"it contains {ch!r}"
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        return "it is a reserved device name"
    if name.lower().endswith((".toml", ".safetensors", ".stale", ".lock")):
        return "it ends with a file extension the store uses"
    return None


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe session name, else raise ``BadSessionName``."""
    problem = _problem(name)
    if problem is not None:
        suggestion = sanitize_name(name if isinstance(name, str) else "")
        raise BadSessionName(f"session name {name!r} is not allowed ({problem}): "
                             f"use letters, digits, spaces and -_.,+@()[]#, e.g. {suggestion!r}")
    return name


def sanitize_name(text: str, default: str = "session") -> str:
    """A safe session name made from any text (a title, a user's input)."""
    text = unicodedata.normalize("NFC", text)
    out = []
    for ch in text:
        out.append(ch if ch.isalnum() or ch in _ALLOWED_PUNCTUATION else "-")
    name = "".join(out)
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"-{2,}", "-", name)
    name = name.strip(" .-")[:MAX_NAME].strip(" .-")
    for ext in (".toml", ".safetensors", ".stale", ".lock"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)].strip(" .-")
    if not name or _problem(name) is not None:
        name = default
    return name
